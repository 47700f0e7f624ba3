"""CoCa (contrastive captioner) as a transformers model with a cached `generate()`.

Einstein notation: `b` batch, `n` text length, `m` image tokens, `q` pooler queries, `d` features.

    pixel_values (b, 3, H, W) --vision_model--> image tokens (b, m, d_img)       [or image_embeds given]
        --attn_pool + pooler_norm--> (b, q, d_pool): query 0 -> image_embeds, queries 1.. -> decoder context
    input_ids (b, n) [+ CLS] --text_model (causal)--> token states (b, n, d), CLS -> text_embeds
    token states --decoder (causal self-attn + cross-attn to the context)--> logits (b, n, vocab)
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ...layers.contrastive import at_least_fp32
from ...layers.generation import cap_candidates_to_max_length
from ...layers import (
    AttentionalPooler,
    CrossAttentionCacheMixin,
    LayerNorm,
    Linear,
    LogitScale,
    RotaryEmbedding,
    TransformerBlock,
    VisionTransformer,
    contrastive_logits,
    contrastive_loss,
    init_shared_layer,
    on_rows,
    row_indices,
    rows_needed,
    self_attention_mask,
)
from ...layers.validation import (
    check_attention_mask, check_embeddings, check_index_tensor, check_output_options, check_positive_int,
    check_texts_per_image, check_token_ids,
)
from ...modeling_utils import HfMmPreTrainedModel
from .configuration_coca import CocaConfig


@dataclass
class CocaOutput(ModelOutput):
    """Outputs of `CocaModel.forward`.

    loss: `caption_loss_weight * caption_loss + contrastive_loss_weight * contrastive_loss` (when asked).
    logits: caption logits `(b, n, vocab)`; position i predicts token i + 1.
    logits_per_image / logits_per_text: scaled similarities `(b_img, b_txt)` / `(b_txt, b_img)`.
    image_embeds / text_embeds: normalised contrastive embeddings `(b, projection_dim)`.
    image_hidden_states: image tokens entering the pooler `(b, m, image_embed_dim)` (reused by generate()).
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    image_hidden_states: torch.FloatTensor | None = None


def text_block(
    config: CocaConfig, layer_idx: int | None, cross_attention: bool = False, decoder: bool = False
) -> TransformerBlock:
    """A block in the text style of `config.text_config` (unimodal layers and both decoder halves)."""
    t, mm = config.text_config, config.multimodal_config
    heads, head_dim = t.num_attention_heads, t.head_dim
    if decoder and mm.num_attention_heads:
        heads, head_dim = mm.num_attention_heads, t.hidden_size // mm.num_attention_heads
    context_dim = (config.attn_pooler_dim if config.attn_pooler_queries else config.image_embed_dim)
    kv_heads = t.num_key_value_heads
    if cross_attention and mm.cross_attention_num_key_value_heads:
        kv_heads = mm.cross_attention_num_key_value_heads
    return TransformerBlock(
        config, t.hidden_size, heads, head_dim, t.intermediate_size,
        num_kv_heads=heads if kv_heads == t.num_attention_heads else kv_heads,
        cross_attention=cross_attention,
        context_dim=context_dim if cross_attention else None,
        norm_context=mm.norm_context,
        causal=not cross_attention,
        parallel=mm.parallel_cross_attention if cross_attention else t.parallel_blocks,
        norm_bias=t.norm_bias, norm_eps=t.layer_norm_eps,
        qkv_bias=t.attention_bias, out_bias=t.attention_out_bias, mlp_bias=t.mlp_bias,
        mlp_act=t.hidden_act, gated_mlp=t.gated_mlp, layer_scale_init=t.layer_scale_init,
        layer_idx=layer_idx,
    )


class CocaTextModel(nn.Module):
    """Unimodal causal text tower with a CLS token appended at the end for the contrastive embedding.

    `forward(input_ids (b, n), ...) -> token states (b, n, d), normalised-by-LayerNorm CLS (b, d) | None`.
    """

    def __init__(self, config: CocaConfig):
        super().__init__()
        t = config.text_config
        self.config = config
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.cls_embedding = nn.Parameter(torch.zeros(t.hidden_size))
        self.position_embedding = (
            nn.Parameter(torch.zeros(t.max_position_embeddings + 1, t.hidden_size))
            if t.position_embedding_type == "learned" else None
        )
        self.layers = nn.ModuleList(text_block(config, i) for i in range(t.num_hidden_layers))
        self.cls_norm = LayerNorm(t.hidden_size, eps=t.layer_norm_eps, bias=t.norm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        rotary: RotaryEmbedding | None,
        past_key_values: Cache | None = None,
        append_cls: bool = True,
        needed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`needed (b, n)` bool: token states used later (the CLS always is); the per-token layers skip rows
        that none of them reads, whose states are then not meaningful. Padded positions (`attention_mask` 0) are
        embedded as `pad_token_id` whatever id the tokenizer padded with: open_clip's CLS sees the first pad.

        `text_config.cls_position="end_of_context"` (converted open_clip checkpoints): the CLS takes the position
        table's last row, as open_clip's does after its tokenizer padded every text to the context, and a text
        without padding gets one pad (the one open_clip's shifted CLS mask lets the CLS see), so the CLS embedding
        does not depend on how far the batch was padded."""
        b, n = input_ids.shape
        pad_id = self.config.text_config.pad_token_id
        if attention_mask is not None and pad_id is not None:
            input_ids = input_ids.masked_fill(attention_mask[:, -n:] == 0, pad_id)
        cls_position = position_ids[:, -1:] + 1
        if append_cls and self.config.text_config.cls_position == "end_of_context":
            limit = self.config.text_config.max_position_embeddings
            real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            if n < limit and bool(real[:, -1].any()):
                input_ids = F.pad(input_ids, (0, 1), value=pad_id or 0)
                attention_mask = F.pad(real, (0, 1)).long()
                position_ids = torch.cat((position_ids, position_ids[:, -1:] + 1), dim=1)
                needed = F.pad(needed, (0, 1)) if needed is not None else None
            cls_position = torch.full_like(cls_position, limit)
        x = self.embed_tokens(input_ids)
        positions = position_ids
        if append_cls:
            x = torch.cat((x, self.cls_embedding.to(x.dtype).expand(b, 1, -1)), dim=1)
            positions = torch.cat((position_ids, cls_position), dim=1)
        if self.position_embedding is not None:
            x = x + self.position_embedding[positions].to(x.dtype)
        angles = rotary(positions) if rotary is not None else None
        mask = self.build_mask(attention_mask, x.shape[1], append_cls)
        rows = None
        if needed is not None:
            needed = torch.cat((needed, needed.new_ones(b, 1)), 1) if append_cls else needed
            rows = row_indices(rows_needed(needed, mask, causal=True))
        for layer in self.layers:
            x = layer(x, attention_mask=mask, rotary_angles=angles, past_key_values=past_key_values, rows=rows)
        if not append_cls:
            return x, None
        return x[:, :n], self.cls_norm(x[:, -1])

    def build_mask(self, attention_mask: torch.Tensor | None, query_len: int, append_cls: bool):
        """Boolean mask `(b, 1, query_len, keys)` or None for plain causal attention.

        Real tokens attend to earlier real tokens. Padded rows and the CLS row see what the reference named by
        `padding_mask_style` lets them see, so converted checkpoints match at every position.
        """
        if attention_mask is None or bool(attention_mask.all()):
            return None
        real = attention_mask.bool()
        ones = real.new_ones(real.shape[0], 1)
        style = self.config.text_config.padding_mask_style
        # open_clip_legacy: key j is visible iff token j - 1 is real (key 0 always): its shifted CLS mask
        cls_keys = torch.cat((ones, real), 1) if style == "open_clip_legacy" else torch.cat((real, ones), 1)
        pad_keys = torch.ones_like(cls_keys) if style == "coca_pytorch" else cls_keys
        if not append_cls:
            return self_attention_mask(real, query_len, causal=True, pad_query_key_mask=pad_keys[:, :-1])
        mask = self_attention_mask(torch.cat((real, ones), 1), query_len, causal=True, pad_query_key_mask=pad_keys)
        mask = mask.clone()
        mask[:, 0, -1] = cls_keys
        return mask


class CocaDecoderLayer(nn.Module):
    """Causal self-attention block then cross-attention block over the image context."""

    def __init__(self, config: CocaConfig, layer_idx: int):
        super().__init__()
        self.self_block = text_block(config, layer_idx, decoder=True)
        self.cross_block = text_block(config, layer_idx, cross_attention=True, decoder=True)

    def forward(self, x, attention_mask, context, rotary_angles, past_key_values, rows=None):
        x = self.self_block(x, attention_mask=attention_mask, rotary_angles=rotary_angles,
                            past_key_values=past_key_values, rows=rows)
        # context positionally: reentrant checkpointing tracks gradients through positional tensors only
        return self.cross_block(x, None, context, past_key_values=past_key_values, rows=rows)


class CocaPreTrainedModel(HfMmPreTrainedModel):
    config: CocaConfig
    base_model_prefix = "coca"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock", "CocaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _keep_in_fp32_modules = ["logit_scale"]
    accepts_loss_kwargs = False  # caption + contrastive: not a token sum Trainer could rescale

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        init_shared_layer(module, std)
        from transformers import initialization as init

        if isinstance(module, CocaTextModel):
            init.normal_(module.cls_embedding, std=0.01)
            if module.position_embedding is not None:
                init.normal_(module.position_embedding, std=0.01)


class CocaModel(CrossAttentionCacheMixin, CocaPreTrainedModel, GenerationMixin):
    """CoCa: contrastive image/text embeddings and an image-conditioned caption decoder in one model.

    Serves zero-shot classification (`logits_per_image`), retrieval (`get_*_features`) and captioning
    (`generate(pixel_values=...)`; the image is encoded once, self-attention K/V of the text tower and the
    decoder are cached, cross-attention K/V over the image tokens are projected once).
    """

    _tied_weights_keys = {"lm_head.weight": "text_model.embed_tokens.weight"}
    _per_image_generation_inputs = ("pixel_values", "image_embeds")  # encoded once per image, not per beam

    def __init__(self, config: CocaConfig):
        config.validate_architecture()
        super().__init__(config)
        self.config._attn_implementation = self.config._attn_implementation  # reach the sub-configs too
        t = config.text_config
        self.vision_model = VisionTransformer(config.vision_config) if config.vision_config is not None else None
        if config.attn_pooler_queries:
            self.attn_pool = AttentionalPooler(
                config, config.attn_pooler_dim, config.image_embed_dim, config.attn_pooler_queries,
                config.attn_pooler_heads, config.attn_pooler_head_dim,
                num_kv_heads=config.attn_pooler_num_key_value_heads, norm_bias=t.norm_bias,
                norm_eps=t.layer_norm_eps, bias=config.attn_pooler_bias,
            )
            self.pooler_norm = LayerNorm(config.attn_pooler_dim, eps=t.layer_norm_eps, bias=t.norm_bias)
            pooled_dim = config.attn_pooler_dim
        else:
            self.attn_pool, self.pooler_norm = None, None
            pooled_dim = config.image_embed_dim
        self.visual_projection = nn.Linear(pooled_dim, config.projection_dim, bias=False)
        self.text_model = CocaTextModel(config)
        self.text_projection = nn.Linear(t.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = LogitScale(config.logit_scale_init_value, config.logit_scale_max)
        self.rotary_emb = (
            RotaryEmbedding(t.head_dim, base=t.rope_theta) if t.position_embedding_type == "rotary" else None
        )
        n_text = t.num_hidden_layers
        self.decoder_layers = nn.ModuleList(
            CocaDecoderLayer(config, n_text + i) for i in range(config.multimodal_config.num_hidden_layers)
        )
        self.decoder_norm = LayerNorm(t.hidden_size, eps=t.layer_norm_eps, bias=t.norm_bias)
        self.lm_head = Linear(t.hidden_size, t.vocab_size, bias=False)
        self.post_init()

    # -- embeddings API -------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.text_model.embed_tokens

    def set_input_embeddings(self, value):
        self.text_model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    # -- input checks ---------------------------------------------------------------------------------
    def _check_text(self, input_ids: torch.Tensor, past_length: int = 0) -> None:
        t = self.config.text_config
        check_token_ids(
            input_ids, vocab_size=t.vocab_size, vocab_field="text_config.vocab_size", past_length=past_length,
            max_length=t.max_position_embeddings if t.position_embedding_type == "learned" else None,
            length_field="text_config.max_position_embeddings",
        )

    def _check_attention_mask(self, attention_mask, input_ids, past_length):
        expected = (input_ids.shape[0], past_length + input_ids.shape[1])
        check_attention_mask(attention_mask, expected, layout="(batch, past + new tokens)")

    def _padding_mask(self, input_ids, attention_mask, past_length: int = 0):
        """`attention_mask`, or without one (and no cache) `(input_ids != text_config.pad_token_id) (b, n)` as both
        references and generate() derive it; None when nothing is padded. With a cache, pass the mask. Not derived
        when the pad id is also the BOS or EOS id (as generate() does for EOS): real tokens would be masked."""
        text = self.config.text_config
        pad = text.pad_token_id
        if attention_mask is not None or pad is None or past_length or pad in (text.bos_token_id, text.eos_token_id):
            return attention_mask
        real = input_ids != pad
        return None if bool(real.all()) else real.long()

    # -- image side -----------------------------------------------------------------------------------
    def encode_image_tokens(self, pixel_values=None, image_embeds=None) -> torch.Tensor:
        """`pixel_values (b, 3, H, W)` or `image_embeds (b, m, image_embed_dim)` -> image tokens `(b, m, d_img)`."""
        self.check_image_inputs(pixel_values, image_embeds)
        if pixel_values is not None:
            return self.vision_model(pixel_values)
        return image_embeds.to(self.visual_projection.weight.dtype)

    def check_image_inputs(self, pixel_values=None, image_embeds=None) -> None:
        """Exactly one image input, of the shape this model takes (ValueError naming the argument otherwise)."""
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("pass exactly one of pixel_values (images) or image_embeds (precomputed image tokens)")
        if pixel_values is not None:
            if self.vision_model is None:
                raise ValueError("this CoCa has no vision tower (vision_config=None): pass image_embeds instead of pixel_values")
            self.vision_model.check_pixel_values(pixel_values)
        else:
            check_embeddings(image_embeds, "image_embeds", layout=("batch", "num_image_tokens"),
                             width=self.config.image_embed_dim, width_field="image_embed_dim")

    def pool_image(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(b, m, d_img) -> pooled (b, d_pool), decoder context (b, q - 1 or m - 1, d_pool)`."""
        if self.attn_pool is not None:
            image_tokens = self.pooler_norm(self.attn_pool(image_tokens))
        return image_tokens[:, 0], image_tokens[:, 1:]

    def get_image_features(self, pixel_values=None, image_embeds=None) -> torch.Tensor:
        """Normalised contrastive image embeddings `(b, projection_dim)`."""
        pooled, _ = self.pool_image(self.encode_image_tokens(pixel_values, image_embeds))
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        """Normalised contrastive text embeddings `(b, projection_dim)`."""
        self._check_text(input_ids)
        self._check_attention_mask(attention_mask, input_ids, 0)
        attention_mask = self._padding_mask(input_ids, attention_mask)
        position_ids = self._position_ids(input_ids, position_ids, 0)
        _, cls = self.text_model(input_ids, attention_mask, position_ids, self.rotary_emb, append_cls=True)
        return F.normalize(self.text_projection(cls), dim=-1)

    # -- forward --------------------------------------------------------------------------------------
    def _position_ids(self, input_ids, position_ids, past_length):
        if position_ids is not None:
            t = self.config.text_config
            learned = t.position_embedding_type == "learned"
            check_index_tensor(position_ids, "position_ids", input_ids.shape, broadcast_batch=True,
                               high=t.max_position_embeddings if learned else None,
                               high_field="text_config.max_position_embeddings")
            return position_ids
        n = input_ids.shape[1]
        return torch.arange(past_length, past_length + n, device=input_ids.device).expand(input_ids.shape[0], n)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        sequences_per_image: int = 1,
        **kwargs,
    ) -> CocaOutput:
        """Contrastive + captioning forward.

        Without a cache (training, evaluation, zero-shot): the text gets its CLS token, both contrastive
        embeddings and the similarity logits are returned; the decoder runs when image and text batches match.
        With a cache (`use_cache=True` / `past_key_values`, as generate() does) only the caption logits are
        computed, and after the first step the image is not needed again.
        Without `attention_mask`, padding is `input_ids != text_config.pad_token_id` (as in both references and
        generate()); once a cache holds tokens, pass the mask of the past and new tokens if any is padding.
        Training with the caption loss (`return_loss`, train mode, `config.skip_unused_positions`): positions that
        neither a loss target nor the CLS reads (padding) skip the per-token layers, and their logits are 0.
        `sequences_per_image=g` (set by generate() for beams / `num_return_sequences`): the captions come in
        groups of `g` consecutive rows per image, so `input_ids (b * g, n)` go with images of batch `b`.
        """
        if input_ids is None:
            raise ValueError("input_ids is required (use get_image_features for images alone)")
        check_output_options(type(self).__name__, kwargs)
        use_cache = bool(use_cache) or past_key_values is not None
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        self._check_text(input_ids, past_length)
        self._check_attention_mask(attention_mask, input_ids, past_length)
        attention_mask = self._padding_mask(input_ids, attention_mask, past_length)
        if return_loss is None:
            return_loss = labels is not None
        if return_loss and use_cache:
            raise ValueError("return_loss / labels cannot be combined with use_cache=True (the loss needs the CLS token)")
        check_positive_int(sequences_per_image, "sequences_per_image")
        if return_loss and logits_to_keep:
            raise ValueError("return_loss / labels need the logits of every position (logits_to_keep=0)")
        if return_loss and sequences_per_image != 1:
            raise ValueError("return_loss / labels need one caption per image (sequences_per_image=1)")
        context_cached = isinstance(past_key_values, EncoderDecoderCache) and bool(past_key_values.is_updated)

        image_tokens = pooled = context = None
        if not context_cached or pixel_values is not None or image_embeds is not None:
            image_tokens = self.encode_image_tokens(pixel_values, image_embeds)
            if return_loss or use_cache or sequences_per_image != 1:  # captioning / losses pair images and texts
                image_name = "pixel_values" if pixel_values is not None else "image_embeds"
                check_texts_per_image(("input_ids", input_ids), (image_name, image_tokens), sequences_per_image)
            pooled, context = self.pool_image(image_tokens)

        position_ids = self._position_ids(input_ids, position_ids, past_length)
        decoder_mask = self._decoder_mask(attention_mask, input_ids.shape[1])
        targets = decoder_rows = logit_rows = text_needed = None
        if return_loss:  # the caption loss reads the logits at its targets only: skip the rows nothing reads
            targets = self._caption_targets(input_ids if labels is None else labels, input_ids, attention_mask)
            if self.training and self.config.skip_unused_positions and decoder_mask is not None:
                text_needed = rows_needed(targets != -100, decoder_mask, causal=True)
                decoder_rows, logit_rows = row_indices(text_needed), row_indices(targets != -100)
        tokens, cls = self.text_model(
            input_ids, attention_mask, position_ids, self.rotary_emb, past_key_values, append_cls=not use_cache,
            needed=text_needed,
        )

        text_embeds = image_embeds = logits_per_image = logits_per_text = logits = None
        if cls is not None:
            text_embeds = F.normalize(self.text_projection(cls), dim=-1)
            image_embeds = F.normalize(self.visual_projection(pooled), dim=-1)
            logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, self.logit_scale())

        if context is None or context.shape[0] * sequences_per_image == input_ids.shape[0] or context_cached:
            logits = self._decode(tokens, decoder_mask, position_ids, context, past_key_values, logits_to_keep,
                                  decoder_rows, logit_rows)

        loss = caption_loss = contrastive = None
        if return_loss:
            caption_loss = self._caption_loss(logits, targets)
            contrastive = contrastive_loss(image_embeds, text_embeds, self.logit_scale())
            loss = self.config.caption_loss_weight * caption_loss + self.config.contrastive_loss_weight * contrastive
        # built once, so the fields (and return_dict=False's tuple) come in the declared order: the loss first
        return CocaOutput(
            loss=loss, contrastive_loss=contrastive, caption_loss=caption_loss, logits=logits,
            logits_per_image=logits_per_image, logits_per_text=logits_per_text, image_embeds=image_embeds,
            text_embeds=text_embeds, past_key_values=past_key_values if use_cache else None,
            image_hidden_states=image_tokens,
        )

    @staticmethod
    def _decoder_mask(attention_mask, n: int):
        """`(b, 1, n, past + n)` or None: causal, padding keys hidden; decoder rows of padded tokens see every
        earlier key, as in both references."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return self_attention_mask(attention_mask, n, causal=True,
                                   pad_query_key_mask=torch.ones_like(attention_mask, dtype=torch.bool))

    def _decode(self, tokens, mask, position_ids, context, past_key_values, logits_to_keep, rows=None,
                logit_rows=None):
        """Token states `(b, n, d)` -> caption logits `(b, n or logits_to_keep, vocab)`; with `rows` /
        `logit_rows` (flat indices) the decoder / head compute those rows only, the other logits are 0."""
        angles = self.rotary_emb(position_ids) if self.rotary_emb is not None else None
        x = tokens
        for layer in self.decoder_layers:
            x = layer(x, mask, context, angles, past_key_values, rows=rows)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return on_rows(lambda h: self.lm_head(self.decoder_norm(h)), x, logit_rows)

    def _caption_targets(self, labels, input_ids, attention_mask):
        """`labels (b, n)` -> next-token targets `(b, n)`: -100 at the last position, padding and ignored labels."""
        check_index_tensor(labels, "labels", input_ids.shape, high=self.config.text_config.vocab_size,
                           high_field="text_config.vocab_size", ignore_index=-100)
        # position i predicts token i + 1 and the last position nothing: shifting the labels (not slicing the
        # logits) keeps the logits a view, saving a copy of the (b, n - 1, vocab) slice
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if attention_mask is not None:
            targets = targets.masked_fill(F.pad(attention_mask[:, 1:], (0, 1)) == 0, -100)
        return targets

    @staticmethod
    def _caption_loss(logits, targets):
        """Next-token cross-entropy over `_caption_targets` (-100 ignored)."""
        return F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), targets.flatten(), ignore_index=-100)

    # -- generation hooks -----------------------------------------------------------------------------
    def generate(self, inputs=None, *args, **kwargs):
        """`GenerationMixin.generate`; the prompt `input_ids` are first made a caption prefix (`caption_prompt`).
        An empty prompt (`(b, 0)`, what `processor(text="")` gives with a tokenizer that adds no BOS) is no prompt:
        the caption starts from `bos_token_id`. `guidance_scale` (classifier-free guidance) is refused: CoCa has no
        image-free branch."""
        input_ids = kwargs.pop("input_ids", inputs)
        generation_config = kwargs.get("generation_config") or self.generation_config
        guidance_scale = kwargs.get("guidance_scale", generation_config.guidance_scale)
        if guidance_scale is not None and guidance_scale != 1:
            raise ValueError(
                f"guidance_scale={guidance_scale}: classifier-free guidance needs an unconditional (image-free) "
                "caption, which CoCa has no branch for (its decoder always cross-attends to an image); leave "
                "guidance_scale unset (or 1)"
            )
        if getattr(generation_config, "is_assistant", False):
            # an assistant's call in assisted generation: input_ids are the running sequence, already a caption (a
            # generated pad id in it is a real token, not padding to move), and its attention_mask is exact
            return super().generate(input_ids, *args, **kwargs)
        if torch.is_tensor(input_ids) and not input_ids.is_floating_point():
            bos = kwargs.get("bos_token_id", generation_config.bos_token_id)
            if input_ids.ndim == 2 and input_ids.shape[0] and not input_ids.shape[1]:
                mask = kwargs.pop("attention_mask", None)
                if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
                    raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                     f"got {tuple(mask.shape)}")
                input_ids = torch.full((input_ids.shape[0], 1), self._prompt_bos(bos, input_ids),
                                       dtype=input_ids.dtype, device=input_ids.device)
            else:
                input_ids, kwargs["attention_mask"] = self.caption_prompt(input_ids, kwargs.get("attention_mask"),
                                                                          bos_token_id=bos)
        return super().generate(input_ids, *args, **kwargs)

    def _prompt_bos(self, bos_token_id, input_ids, row: int | None = None) -> int:
        """The BOS an empty prompt starts from, or a ValueError naming `bos_token_id`."""
        if bos_token_id is None:
            bos_token_id = self.config.text_config.bos_token_id
        if bos_token_id is None:
            which = (f"input_ids row {row} has no unpadded token" if row is not None
                     else f"input_ids has shape {tuple(input_ids.shape)}")
            raise ValueError(
                f"empty prompt ({which}): a caption without a prompt starts from bos_token_id, which is not set; "
                "set generation_config.bos_token_id (or pass bos_token_id=...) or give every row a prompt"
            )
        return int(bos_token_id)

    def caption_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       bos_token_id: int | None = None):
        """`(b, n)` prompt -> `(b, n)` ids and attention mask a caption continues: a trailing EOS is dropped
        (open_clip's tokenizer ends every text with `<end_of_text>`, after which nothing was trained) and the rows
        are padded on the left, so each continues its own last token (a processor pads on the right). A row with
        no unpadded token (an empty prompt of a tokenizer that adds no BOS) becomes `[bos_token_id]` (default:
        the generation config's)."""
        eos = self.generation_config.eos_token_id
        eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        if bos_token_id is None:
            bos_token_id = self.generation_config.bos_token_id
        pad = self.config.text_config.pad_token_id or 0
        real = self._padding_mask(input_ids, attention_mask)
        real = torch.ones_like(input_ids, dtype=torch.bool) if real is None else real.bool()
        ids, mask = torch.full_like(input_ids, pad), torch.zeros_like(input_ids)
        for row in range(input_ids.shape[0]):
            tokens = input_ids[row][real[row]]
            if len(tokens) > 1 and int(tokens[-1]) in eos:
                tokens = tokens[:-1]
            if not len(tokens) and input_ids.shape[1]:
                tokens = input_ids.new_tensor([self._prompt_bos(bos_token_id, input_ids, row)])
            if len(tokens):
                ids[row, -len(tokens):], mask[row, -len(tokens):] = tokens, 1
        if attention_mask is None and bool(mask.all()):
            return input_ids, None
        return ids, mask

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        """A learned position table bounds the sequence: an explicit longer `max_new_tokens` / `max_length` is an
        error up front (it used to fail after the tokens that fit); the default `max_length` is capped to it."""
        t = self.config.text_config
        if t.position_embedding_type == "learned" and generation_config.max_length > t.max_position_embeddings:
            if has_default_max_length and generation_config.max_new_tokens is None:
                generation_config.max_length = t.max_position_embeddings
            else:
                raise ValueError(
                    f"max_new_tokens / max_length: the prompt ({input_ids_length} tokens) and the new tokens reach "
                    f"{generation_config.max_length} tokens, more than the context length {t.max_position_embeddings} "
                    "(text_config.max_position_embeddings)"
                )
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)

    def _get_candidate_generator(self, generation_config, *args, **kwargs):
        """transformers' candidate generator, proposing no token past `max_length - 1`: prompt-lookup candidates
        could run past `max_length`, and a learned position table (`text_config.max_position_embeddings`, the cap of
        `max_length`) made the forward over them fail with a position error."""
        generator = super()._get_candidate_generator(generation_config, *args, **kwargs)
        return cap_candidates_to_max_length(generator, generation_config.max_length)

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None,
                                      **model_kwargs):
        # the image inputs are checked first, so a malformed one is named as such (not as a batch mismatch)
        self.check_image_inputs(model_kwargs.get("pixel_values"), model_kwargs.get("image_embeds"))
        return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, pixel_values=None, image_embeds=None,
                                      **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        ids = inputs.get("input_ids")
        if inputs.get("attention_mask") is None and not past_length and ids is not None:
            # generate() drops an all-ones mask (no padding): every token, generated or prompt, is real. Without a
            # cache (use_cache=False) or on the prefill, forward would otherwise take `input_ids == pad_token_id` as
            # padding (`_padding_mask`), so a generated pad id (open_clip's "!") would change every later step
            # there and nowhere else. Once a cache holds tokens, no padding is derived and None stays all-ones.
            inputs["attention_mask"] = torch.ones_like(ids, dtype=torch.long)
        context_cached = isinstance(past_key_values, EncoderDecoderCache) and bool(past_key_values.is_updated)
        if not context_cached:  # first step, or use_cache=False: the image (encoded once, see below) is needed
            if image_embeds is not None:
                inputs["image_embeds"] = image_embeds
            else:
                inputs["pixel_values"] = pixel_values
        inputs.pop("return_loss", None)
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if outputs.image_hidden_states is not None:  # keep the encoded image; never run the tower twice
            model_kwargs["image_embeds"] = outputs.image_hidden_states
            model_kwargs.pop("pixel_values", None)
        return model_kwargs
