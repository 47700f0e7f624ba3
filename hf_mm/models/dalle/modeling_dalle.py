"""DALL-E (dalle-pytorch) as a transformers model: a decoder-only transformer over `[bos, text | image codes]`.

Einstein notation: `b` batch, `n` new positions, `m` keys (cached + new), `d` hidden size, `V` unified
vocabulary `[text (num_text_tokens) | per-position pads (text_seq_len) | image codes (num_image_tokens)]`.

Cache layout (a lazily grown `DynamicCache`): layer `i` keeps its attention K/V at index `i`; with
`shift_tokens`, the normalised inputs of its attention / feed-forward branches (the token-shift history) are
kept at `L + 2i` / `L + 2i + 1`. Everything per-sequence lives in the cache, so beam reordering and batch
expansion stay correct.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import ModelOutput
from transformers.utils.generic import can_return_tuple

from hf_mm.layers import LayerNorm, Linear, TransformerBlock, init_shared_layer
from hf_mm.layers.validation import check_output_options, check_same_batch, check_token_ids
from hf_mm.modeling_utils import HfMmPreTrainedModel, reset_non_persistent_buffers

from .attention_patterns import attention_pattern_mask
from .configuration_dalle import DalleConfig, layer_scale_init
from .generation_dalle import DalleGenerationMixin
from .modeling_vae import DiscreteVAEModel
from .positions_dalle import DalleRotaryEmbedding, shift_tokens


@dataclass
class DalleOutput(ModelOutput):
    """
    loss: `(CE_text + loss_img_weight * CE_image) / (loss_img_weight + 1)` (dalle-pytorch), when asked.
    logits: `(b, n, V)` next-token logits; text positions cannot predict image codes and vice versa.
    past_key_values: the cache (attention K/V and token-shift history).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None


class AxialPositionalEmbedding(nn.Module):
    """Learned image positions `row_emb[r] + col_emb[c]` (lucidrains' summed AxialPositionalEmbedding).

    `forward(index (n,)) -> (n, d)` for image indices in raster order.
    """

    def __init__(self, dim: int, fmap: int):
        super().__init__()
        self.fmap = fmap
        self.row_emb = nn.Parameter(torch.zeros(fmap, dim))
        self.col_emb = nn.Parameter(torch.zeros(fmap, dim))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.row_emb[index // self.fmap] + self.col_emb[index % self.fmap]


class DalleBlock(TransformerBlock):
    """Pre-norm block with DALL-E's options: token shift on the normalised branch inputs, sandwich norm
    (`post_norm` of the shared block) and output dropout, over the shared attention (boolean pattern mask).

    `forward(hidden_states (b, n, d), attention_mask (1, 1, n, m), rotary_angles (1, n, r), positions (n,),
    past_key_values) -> (b, n, d)`.
    """

    def __init__(self, config: DalleConfig, layer_idx: int):
        super().__init__(
            config, config.hidden_size, config.num_attention_heads, config.head_dim,
            config.hidden_size * config.ff_mult, causal=True, norm_eps=config.layer_norm_eps, qkv_bias=False,
            mlp_act="gelu", gated_mlp=True, layer_scale_init=layer_scale_init(layer_idx + 1), layer_idx=layer_idx,
            rotary_interleaved=True, rotate_values=True, post_norm=config.sandwich_norm,
        )
        self.config, self.layer_idx = config, layer_idx
        self.layer_type = config.layer_attn_types[layer_idx]
        self.mlp.dropout.p = config.ff_dropout
        self.attn_dropout = nn.Dropout(config.attention_dropout)

    def _shift(self, normed, positions, past_key_values, slot):
        """Token shift of `normed (b, n, d)`; the unshifted inputs are appended to the cache at `slot`."""
        if not self.config.shift_tokens:
            return normed
        history = None
        if past_key_values is not None:
            if len(past_key_values.layers) > slot and past_key_values.get_seq_length(slot) > 0:
                history = past_key_values.layers[slot].keys[:, 0]
            past_key_values.update(normed[:, None], normed.new_zeros(*normed.shape[:2], 0)[:, None], slot)
        return shift_tokens(normed, positions, history, self.config)

    def attention_branch(self, hidden_states, attention_mask, rotary_angles, positions, past_key_values):
        """Residual update of the attention branch: `ls1(post_norm(attn(shift(norm1(x)))))`, `(b, n, d)`."""
        slot = self.config.num_hidden_layers + 2 * self.layer_idx
        normed = self._shift(self.norm1(hidden_states), positions, past_key_values, slot)
        attn_out = self.attn(normed, attention_mask, rotary_angles=rotary_angles, past_key_values=past_key_values)
        return self.ls1(self.post_norm_branch(self.attn_dropout(attn_out), 1))

    def mlp_branch(self, hidden_states, positions, past_key_values):
        """Residual update of the feed-forward branch: `ls2(post_norm(mlp(shift(norm2(x)))))`, `(b, n, d)`."""
        slot = self.config.num_hidden_layers + 2 * self.layer_idx + 1
        normed = self._shift(self.norm2(hidden_states), positions, past_key_values, slot)
        return self.ls2(self.post_norm_branch(self.mlp(normed), 2))

    def forward(self, hidden_states, attention_mask=None, rotary_angles=None, positions=None,
                past_key_values=None, **kwargs):
        """Serial residual block, or with `config.reversible` the RevNet coupling of dalle-pytorch on
        `hidden_states = [x1 | x2]` `(b, n, 2d)`: `y1 = x1 + attn(x2)`, `y2 = x2 + mlp(y1)`."""
        if self.config.reversible:
            x1, x2 = hidden_states.chunk(2, dim=-1)
            y1 = x1 + self.attention_branch(x2, attention_mask, rotary_angles, positions, past_key_values)
            y2 = x2 + self.mlp_branch(y1, positions, past_key_values)
            return torch.cat((y1, y2), dim=-1)
        hidden_states = hidden_states + self.attention_branch(
            hidden_states, attention_mask, rotary_angles, positions, past_key_values)
        return hidden_states + self.mlp_branch(hidden_states, positions, past_key_values)


class DallePreTrainedModel(HfMmPreTrainedModel):
    config: DalleConfig
    base_model_prefix = "dalle"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    output_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DalleBlock", "ResBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = False

    def _init_weights(self, module):  # replaces transformers' defaults (does not chain to them)
        reset_non_persistent_buffers(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, AxialPositionalEmbedding):
            init.normal_(module.row_emb, std=1.0)
            init.normal_(module.col_emb, std=1.0)
        init_shared_layer(module, std)  # LayerScale: its per-layer init value


class DalleForImageGeneration(DalleGenerationMixin, DallePreTrainedModel, GenerationMixin):
    """Text-to-image transformer with its dVAE (`self.vae`) and cached `generate()` of image codes.

    `forward(input_ids (b, n), image_ids (b, k) | pixel_values (b, c, H, W) | None, return_loss)`:
    on the first call (empty cache) `input_ids` starts with the `text_seq_len` text ids (0 = padding) and may
    continue with image tokens in unified ids (`text_vocab_size + code`); `<bos>` is prepended internally.
    """

    def __init__(self, config: DalleConfig):
        super().__init__(config)
        self.config._attn_implementation = self.config._attn_implementation  # propagate to vae_config
        dim = config.hidden_size
        self.vae = DiscreteVAEModel(config.vae_config)
        self.vae.requires_grad_(False)  # frozen, as in dalle-pytorch
        self.lm_head = Linear(dim, config.vocab_size)
        if config.share_input_output_emb:  # one table over the unified vocabulary, tied to lm_head.weight
            self.embed_tokens = nn.Embedding(config.vocab_size, dim)
        else:
            self.embed_text = nn.Embedding(config.text_vocab_size, dim)
            self.embed_image = nn.Embedding(config.vae_config.num_tokens, dim)
        if config.rotary_emb:
            self.rotary_emb = DalleRotaryEmbedding(config)
        else:
            self.text_pos_emb = nn.Embedding(config.text_len, dim)
            self.image_pos_emb = AxialPositionalEmbedding(dim, config.image_fmap_size)
        self.layers = nn.ModuleList(DalleBlock(config, i) for i in range(config.num_hidden_layers))
        self._share_layers()
        self._tied_weights_keys = self.aliased_weights()  # read by save_pretrained to drop the aliases
        self.norm = LayerNorm(dim, eps=config.layer_norm_eps)
        self.post_init()
        self.apply_generation_defaults()

    def _share_layers(self):
        """`shared_attn_ids` / `shared_ff_ids`: later layers reuse the first owner's projections / MLP.
        Each layer keeps its own attention module (own cache slot), norms and layer scales."""
        attn_owner, ff_owner = {}, {}
        for layer, attn_id, ff_id in zip(self.layers, self.config.attn_layer_ids, self.config.ff_layer_ids):
            owner = attn_owner.setdefault(attn_id, layer)
            if owner is not layer:
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    setattr(layer.attn, name, getattr(owner.attn, name))
            owner = ff_owner.setdefault(ff_id, layer)
            if owner is not layer:
                layer.mlp = owner.mlp

    def shared_layer_weights(self) -> dict[str, str]:
        """`{layer j's parameter: owner layer's parameter}` for weights shared through `shared_*_ids`."""
        shared = {}
        for j, layer in enumerate(self.layers):
            for i, owner in enumerate(self.layers[:j]):
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    if getattr(layer.attn, name) is getattr(owner.attn, name) and f"layers.{j}.attn.{name}.weight" not in shared:
                        for param, _ in getattr(layer.attn, name).named_parameters():
                            shared[f"layers.{j}.attn.{name}.{param}"] = f"layers.{i}.attn.{name}.{param}"
                if layer.mlp is owner.mlp and f"layers.{j}.mlp.fc1.weight" not in shared:
                    for param, _ in layer.mlp.named_parameters():
                        shared[f"layers.{j}.mlp.{param}"] = f"layers.{i}.mlp.{param}"
        return shared

    def aliased_weights(self) -> dict[str, str]:
        """`{alias: owner}`: the shared layers' weights and, with `share_input_output_emb`, the input embedding
        table (`embed_tokens.weight` is `lm_head.weight`)."""
        aliases = self.shared_layer_weights()
        if self.config.share_input_output_emb:
            aliases["embed_tokens.weight"] = "lm_head.weight"
        return aliases

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """Layer and embedding sharing are declared as weight tying, so safetensors saving and loading handle the
        aliases (independently of `tie_word_embeddings`, which DALL-E does not use)."""
        tied = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        tied.update(self.aliased_weights())
        return tied

    def get_input_embeddings(self) -> nn.Embedding:
        """The module that embeds the text: `embed_text` (text and pad ids), or with `share_input_output_emb` the
        unified table `embed_tokens` (tied to `lm_head.weight`)."""
        return self.embed_tokens if self.config.share_input_output_emb else self.embed_text

    def set_input_embeddings(self, value: nn.Module):
        if self.config.share_input_output_emb:
            self.embed_tokens = value
        else:
            self.embed_text = value

    def get_output_embeddings(self):
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Module:
        """Unsupported: DALL-E's vocabulary is `[text | per-position pads | image codes]`, so new text tokens would
        shift the pad and image ids (and the `lm_head` rows) behind them. With no size, returns the input
        embeddings (as transformers does)."""
        if new_num_tokens is None and pad_to_multiple_of is None:
            return self.get_input_embeddings()
        raise ValueError(
            f"resize_token_embeddings is not supported by {type(self).__name__}: its unified vocabulary "
            "[text | per-position pads | image codes] puts the text_seq_len pad ids and the image codes after the "
            f"num_text_tokens={self.config.num_text_tokens} text ids, so adding text tokens shifts every id behind "
            "them; build a DalleConfig with a larger num_text_tokens and copy the weights over instead"
        )

    # -- inputs -------------------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Unified ids `tokens (b, n)` at `positions (n,)` (text ids already mapped to pads) -> `(b, n, d)`."""
        config = self.config
        is_image = positions >= config.text_len
        if config.share_input_output_emb:  # the unified table: text and image ids alike
            embeds = self.embed_tokens(tokens)
        else:
            text_ids = torch.where(is_image, 0, tokens)
            image_ids = torch.where(is_image, tokens - config.text_vocab_size, 0)
            embeds = torch.where(is_image[:, None], self.embed_image(image_ids), self.embed_text(text_ids))
        if not config.rotary_emb:
            text_pos = self.text_pos_emb(positions.clamp(max=config.text_len - 1))
            image_pos = self.image_pos_emb((positions - config.text_len).clamp(min=0))
            embeds = embeds + torch.where(is_image[:, None], image_pos, text_pos)
        return embeds

    def unified_tokens(self, input_ids, image_ids, pixel_values, past_length: int):
        """Validate the inputs and return unified ids `(b, n)` for positions `past_length..` (with `<bos>` and
        per-position pad ids on the first call). May run one past the last input position (the final code)."""
        config = self.config
        if input_ids is not None:
            check_token_ids(input_ids)
        if past_length == 0:
            if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] < config.text_seq_len:
                raise ValueError(
                    f"input_ids must have shape (batch, text_seq_len={config.text_seq_len}) (pad with 0), "
                    f"got {None if input_ids is None else tuple(input_ids.shape)}"
                )
            text, rest = input_ids[:, : config.text_seq_len], input_ids[:, config.text_seq_len :]
            if text.min() < 0 or text.max() >= config.num_text_tokens:
                raise ValueError(f"input_ids text tokens must lie in [0, num_text_tokens={config.num_text_tokens})")
            if rest.numel() and rest.min() < config.text_vocab_size:
                raise ValueError(
                    f"text is longer than text_seq_len={config.text_seq_len}: input_ids beyond it must be image "
                    f"tokens in [{config.text_vocab_size}, {config.vocab_size})"
                )
            pads = torch.arange(config.text_seq_len, device=text.device) + config.num_text_tokens
            text = torch.where(text == 0, pads, text)
            bos = text.new_zeros(text.shape[0], 1)
            pieces = [bos, text, rest]
        else:
            if input_ids.numel() and (input_ids.min() < config.text_vocab_size or input_ids.max() >= config.vocab_size):
                raise ValueError(f"after the prompt, input_ids must be image tokens in [{config.text_vocab_size}, "
                                 f"{config.vocab_size})")
            pieces = [input_ids]
        image_source = "image_ids"
        if pixel_values is not None:
            if image_ids is not None:
                raise ValueError("pass either image_ids or pixel_values, not both")
            image_ids, image_source = self.vae.get_codebook_indices(pixel_values), "pixel_values"
        if image_ids is not None:
            check_token_ids(image_ids, image_source, vocab_size=config.vae_config.num_tokens,
                            vocab_field="vae_config.num_tokens")
            check_same_batch(("input_ids", input_ids), (image_source, image_ids))
            pieces.append(image_ids + config.text_vocab_size)
        tokens = torch.cat(pieces, dim=1)
        if past_length + tokens.shape[1] > config.max_seq_len + 1:  # + 1: <bos>
            raise ValueError(
                f"input_ids and image_ids hold {past_length + tokens.shape[1] - 1 - config.text_seq_len} image tokens "
                f"(cached ones included), more than image_seq_len={config.image_seq_len}"
            )
        return tokens

    # -- forward ------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        image_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        return_loss: bool = False,
        cond_scale: float | None = None,
        null_cond_prob: float = 0.0,
        **kwargs,
    ) -> DalleOutput:
        """Logits `(b, n, V)` for the new positions; `loss` when `return_loss` (needs the whole image).

        `cond_scale` (classifier-free guidance): the batch is run twice, with and without the text (the
        null-text rows live in the same cache, after the conditional ones), and the logits are
        `null + (cond - null) * cond_scale`. `null_cond_prob` (training for guidance) replaces the text of each
        row by padding with that probability (a copy: the caller's `input_ids` are never modified).
        """
        check_output_options(type(self).__name__, kwargs)
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("attention_mask must be all ones or None: DALL-E pads text with per-position pad "
                             "tokens (text id 0), which are attended")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length(0) if past_key_values is not None and len(past_key_values.layers) else 0
        full_tokens = self.unified_tokens(input_ids, image_ids, pixel_values, past_length)
        tokens = full_tokens[:, : self.config.max_seq_len - past_length]  # the very last code is never an input
        if not 0 <= null_cond_prob <= 1:
            raise ValueError(f"null_cond_prob must be in [0, 1], got {null_cond_prob}")
        if torch.is_tensor(cond_scale) and cond_scale.numel() == 1:
            cond_scale = cond_scale.item()
        if cond_scale is not None and (isinstance(cond_scale, bool) or not isinstance(cond_scale, (int, float))):
            raise TypeError(f"cond_scale must be a float (1 or None: no guidance), got {cond_scale!r}")
        if cond_scale is not None and not math.isfinite(cond_scale):
            raise ValueError(f"cond_scale must be a finite float (1 or None: no guidance), got {cond_scale!r}")
        if null_cond_prob > 0:
            dropped = torch.rand(tokens.shape[0], device=tokens.device) < null_cond_prob
            tokens = torch.where(dropped[:, None], self.null_text(tokens, past_length), tokens)
            full_tokens = torch.cat((tokens, full_tokens[:, tokens.shape[1]:]), dim=1)
        guided = cond_scale is not None and cond_scale != 1
        if guided:
            tokens = torch.cat((tokens, self.null_text(tokens, past_length)), dim=0)
        logits = self.transformer_logits(tokens, past_length, past_key_values)
        if guided:
            cond, null = logits.chunk(2, dim=0)
            logits = null + (cond - null) * cond_scale
        loss = self.loss(logits, full_tokens) if return_loss and past_length == 0 and not guided else None
        if return_loss and loss is None:
            raise ValueError("return_loss=True needs a call without cache history and without cond_scale")
        return DalleOutput(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)

    def null_text(self, tokens: torch.Tensor, past_length: int) -> torch.Tensor:
        """The unconditional copy of `tokens (b, n)`: every text position holds its pad token."""
        config = self.config
        positions = torch.arange(past_length, past_length + tokens.shape[1], device=tokens.device)
        is_text = (positions >= 1) & (positions < config.text_len)
        return torch.where(is_text, positions - 1 + config.num_text_tokens, tokens)

    def transformer_logits(self, tokens: torch.Tensor, past_length: int, cache: Cache | None) -> torch.Tensor:
        """Unified ids `(b, n)` at positions `past_length..` -> masked logits `(b, n, V)`."""
        config = self.config
        n = tokens.shape[1]
        positions = torch.arange(past_length, past_length + n, device=tokens.device)
        hidden = self.embed(tokens, positions)
        if config.stable:  # shrink the embedding gradient by 10x (CogView)
            hidden = hidden * 0.1 + hidden.detach() * 0.9
        keys = torch.arange(past_length + n, device=tokens.device)
        masks = {t: attention_pattern_mask(t, positions, keys, config)[None, None] for t in set(config.layer_attn_types)}
        angles = self.rotary_emb(positions)[None] if config.rotary_emb else None
        if config.reversible:
            hidden = torch.cat((hidden, hidden), dim=-1)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=masks[layer.layer_type], rotary_angles=angles,
                           positions=positions, past_key_values=cache)
        if config.reversible:
            hidden = torch.stack(hidden.chunk(2, dim=-1)).mean(dim=0)
        if config.stable:
            hidden = hidden / hidden.amax(dim=-1, keepdim=True).detach()
        logits = self.lm_head(self.norm(hidden))
        predicts_image = (positions >= config.text_seq_len)[:, None]
        is_image_token = torch.arange(config.vocab_size, device=tokens.device) >= config.text_vocab_size
        return logits.masked_fill(predicts_image != is_image_token[None], -torch.finfo(logits.dtype).max)

    def loss(self, logits: torch.Tensor, full_tokens: torch.Tensor) -> torch.Tensor:
        """dalle-pytorch's loss; `full_tokens (b, max_seq_len + 1)` = `[bos, text, all image codes]`."""
        config = self.config
        if full_tokens.shape[1] != config.max_seq_len + 1 or logits.shape[1] != config.max_seq_len:
            raise ValueError("return_loss needs the text and all image codes (image_ids or pixel_values), without "
                             "a cache")
        labels = full_tokens[:, 1:]
        text_len = config.text_seq_len
        loss_text = F.cross_entropy(logits[:, :text_len].transpose(1, 2), labels[:, :text_len])
        loss_image = F.cross_entropy(logits[:, text_len:].transpose(1, 2), labels[:, text_len:])
        return (loss_text + config.loss_img_weight * loss_image) / (config.loss_img_weight + 1)
