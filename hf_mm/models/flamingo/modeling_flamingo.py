"""Flamingo as a transformers model with native, cached `generate()`.

vision tower -> perceiver resampler -> language model with tanh-gated cross-attention to the media latents at
the layers `config.cross_attention_layer_ids()`. The language model is the built-in PaLM decoder (lucidrains'
`FlamingoPaLM`) or any transformers causal LM (OpenFlamingo), whose decoder layers get the cross-attention
through hooks (`language_model.py`). Einstein notation: `b` batch, `n` text positions, `t` media per sample,
`f` frames, `l` latents, `d` features.

Generation: media are encoded and resampled once per `generate()` call (the latents ride along in
`model_kwargs`); cross-attention K/V over the latents are projected once into an `EncoderDecoderCache`;
`media_time` is recomputed from the full `input_ids` at every step, so new tokens attend the latest medium. A
wrapped LM keeps its own self-attention cache (the self-attention half of the `EncoderDecoderCache`).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_outputs import ModelOutput
from transformers.utils.generic import can_return_tuple

from hf_mm.layers import (
    CrossAttentionCacheMixin, LayerNorm, Linear, RotaryEmbedding, TransformerBlock, VisionTransformer, on_rows,
    row_indices, rows_needed, self_attention_mask,
)
from hf_mm.layers.validation import (
    check_attention_mask, check_embeddings, check_index_tensor, check_output_options, check_pixel_values,
    check_texts_per_image, check_token_ids,
)
from hf_mm.modeling_utils import HfMmPreTrainedModel

from .configuration_flamingo import FlamingoConfig
from .cross_attention import GatedCrossAttentionBlock, media_time_from_ids, text_to_media_mask
from .language_model import (
    MediaConditioning, active_conditioning, attach_cross_attention, build_language_model, conditioning_active,
    find_decoder_layers, fit_attention_implementation,
)
from .perceiver import PerceiverResampler


@dataclass
class FlamingoModelOutput(ModelOutput):
    """`last_hidden_state (b, n, d)`, the cache, and `media_latents (b, t, l, d)` (None for text-only input)."""

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    media_latents: torch.FloatTensor | None = None


@dataclass
class FlamingoCausalLMOutput(ModelOutput):
    """`logits (b, n, vocab)`, the shifted next-token `loss` when `labels` are given, the cache and the latents."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    media_latents: torch.FloatTensor | None = None


class FlamingoPreTrainedModel(HfMmPreTrainedModel):
    config: FlamingoConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock", "GatedCrossAttentionBlock", "PerceiverLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, PerceiverResampler):
            for param in (module.latents, module.media_position_embedding, module.frame_position_embedding):
                if param is not None:
                    nn.init.normal_(param, std=std)
        elif isinstance(module, GatedCrossAttentionBlock):
            nn.init.zeros_(module.attn_gate)  # tanh(0) = 0: an untrained Flamingo equals its language model
            nn.init.zeros_(module.ff_gate)
        elif isinstance(module, VisionTransformer):
            if module.class_embedding is not None:
                nn.init.normal_(module.class_embedding, std=std)
            if isinstance(module.position_embedding, nn.Parameter):
                nn.init.normal_(module.position_embedding, std=std)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class FlamingoModel(FlamingoPreTrainedModel):
    """Vision tower, perceiver, language model and cross-attention blocks; `forward(...) -> FlamingoModelOutput`.

    Built-in PaLM: `embed_tokens`, `layers`, `norm` here. Any other LM: `language_model` is the LM's base model
    (`AutoModel.from_config(text_config)`, or the one passed in), its state-dict names unchanged.
    """

    # a FlamingoForConditionalGeneration checkpoint with an untied head loads into the base model (head ignored)
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: FlamingoConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.config._attn_implementation = self.config._attn_implementation  # reach the sub-configs
        config.validate_architecture()
        text = config.text_config
        if not config.uses_builtin_text_model:
            fit_attention_implementation(text)
        self.vision_model = VisionTransformer(config.vision_config)
        self.perceiver = PerceiverResampler(config.perceiver_config)
        # keyed by the index of the decoder layer they sit at; that index is also their cross-attention cache slot
        self.cross_attn_layers = nn.ModuleDict(
            {str(i): GatedCrossAttentionBlock(config, layer_idx=i) for i in config.cross_attention_layer_ids()}
        )
        if config.uses_builtin_text_model:
            self.language_model = None
            self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)
            self.rotary = RotaryEmbedding(text.head_dim, base=text.rope_theta)
            self.layers = nn.ModuleList(
                TransformerBlock(
                    text, text.hidden_size, text.num_attention_heads, text.head_dim, text.intermediate_size,
                    num_kv_heads=text.num_key_value_heads, causal=True, parallel=True, norm_bias=False,
                    norm_eps=text.layer_norm_eps, qkv_bias=False, out_bias=False, mlp_bias=False,
                    mlp_act=text.hidden_act, gated_mlp=True, layer_idx=i,
                )
                for i in range(text.num_hidden_layers)
            )
            self.norm = LayerNorm(text.hidden_size, eps=text.layer_norm_eps, bias=False)
        else:
            if language_model is None:
                language_model, _ = build_language_model(text, with_head=False)
            self.language_model = language_model
            self.decoder_layers_path, layers = find_decoder_layers(
                self.language_model, text.num_hidden_layers, config.decoder_layers_attr_name
            )
            attach_cross_attention(self, layers, config.cross_attention_layer_ids(),
                                   before=config.cross_attn_placement == "before")
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        if self.language_model is not None:
            return self.language_model.get_input_embeddings()
        return self.embed_tokens

    def set_input_embeddings(self, value):
        if self.language_model is not None:
            self.language_model.set_input_embeddings(value)
        else:
            self.embed_tokens = value

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tokens: `(b, t, C, H, W) -> (b, t, n, d)`, videos `(b, t, f, C, H, W) -> (b, t, f, n, d)`.

        Single-frame "videos" `(b, t, 1, C, H, W)` (OpenFlamingo's `vision_x`) are images when the perceiver has
        no frame embedding. `vision_feature_select_strategy="default"` drops the class token.
        """
        if pixel_values.ndim == 6 and pixel_values.shape[2] == 1 and not self.config.perceiver_config.max_video_frames:
            pixel_values = pixel_values[:, :, 0]
        self._check_pixel_values(pixel_values)
        media_shape = pixel_values.shape[:-3]
        tokens = self.vision_model(pixel_values.flatten(0, len(media_shape) - 1))
        if self.config.vision_feature_select_strategy == "default":
            tokens = tokens[:, 1:]
        return tokens.reshape(*media_shape, *tokens.shape[1:])

    def get_media_latents(self, pixel_values=None, image_embeds=None) -> torch.Tensor:
        """Pixels or precomputed vision tokens -> perceiver latents `(b, t, l, d)`."""
        if image_embeds is None:
            image_embeds = self.get_image_features(pixel_values)
        else:
            video = torch.is_tensor(image_embeds) and image_embeds.ndim == 5
            check_embeddings(image_embeds, "image_embeds", width=self.config.vision_config.hidden_size,
                             layout=("batch", "num_media") + (("frames",) if video else ()) + ("tokens",),
                             width_field="vision_config.hidden_size")
            image_embeds = image_embeds.to(self.perceiver.latents.dtype)
        return self.perceiver(image_embeds)

    def _check_pixel_values(self, pixel_values):
        v = self.config.vision_config
        check_pixel_values(pixel_values, num_channels=v.num_channels, image_size=v.image_size,
                           layouts=(("batch", "num_media"), ("batch", "num_media", "frames")))
        if pixel_values.ndim == 6 and pixel_values.shape[2] > self.config.perceiver_config.max_video_frames:
            raise ValueError(
                f"pixel_values holds videos of {pixel_values.shape[2]} frames, but "
                f"perceiver_config.max_video_frames is {self.config.perceiver_config.max_video_frames}"
            )

    def _check_input_ids(self, input_ids):
        check_token_ids(input_ids, vocab_size=self.config.text_config.vocab_size, vocab_field="text_config.vocab_size")

    def _check_media_latents(self, media_latents):
        p = self.config.perceiver_config
        check_embeddings(media_latents, "media_latents", layout=("batch", "num_media", "num_latents"),
                         width=p.hidden_size, width_field="perceiver_config.hidden_size")
        if media_latents.shape[2] != p.num_latents:
            raise ValueError(f"media_latents must have {p.num_latents} latents per medium "
                             f"(perceiver_config.num_latents), got shape {tuple(media_latents.shape)}")

    def _check_media_tokens(self, input_ids, num_media):
        counts = (input_ids == self.config.media_token_id).sum(dim=-1)
        if bool((counts != num_media).any()):
            missing = "" if num_media else " (pass pixel_values, image_embeds or media_latents for them)"
            raise ValueError(
                f"every row of input_ids must hold one media token (id {self.config.media_token_id}) per medium: "
                f"{num_media} media given per sample, media tokens per row {counts.tolist()}{missing}"
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        media_latents: torch.FloatTensor | None = None,
        media_time: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        sequences_per_image: int = 1,
        needed_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> FlamingoModelOutput:
        """
        input_ids (b, n): text with `media_token_id` where each medium goes.
        pixel_values (b, t, C, H, W) images | (b, t, f, C, H, W) videos; or image_embeds (b, t, [f,] tokens, d)
            vision-tower outputs; or media_latents (b, t, l, d) perceiver outputs. At most one of them.
        media_time (b, n): index in [0, t] of the latest medium at each position (default: from `input_ids`).
        attention_mask (b, past + n): 1 = real token (left padding).
        sequences_per_image=g (set by generate() for beams / `num_return_sequences`): the text rows come in groups
            of `g` consecutive rows per sample of media, i.e. `input_ids (b * g, n)` with media of batch `b`.
        needed_positions (b, n) bool: the outputs used (a loss's targets); the built-in decoder's per-token layers
            skip positions none of them reads, whose hidden states are then not meaningful.
        return_dict=False (or `config.return_dict=False`): the output's non-None fields as a tuple.
        """
        check_output_options(type(self).__name__, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (batch, seq) and inputs_embeds (batch, seq, hidden)")
        given = [name for name, v in (("pixel_values", pixel_values), ("image_embeds", image_embeds),
                                      ("media_latents", media_latents)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"pass at most one of pixel_values, image_embeds, media_latents; got {given}")
        if input_ids is not None:
            self._check_input_ids(input_ids)
        else:
            check_embeddings(inputs_embeds, "inputs_embeds", layout=("batch", "sequence_length"),
                             width=self.get_input_embeddings().embedding_dim,
                             width_field="get_input_embeddings().embedding_dim")
            inputs_embeds = inputs_embeds.to(self.get_input_embeddings().weight.dtype)
        b, n = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if position_ids is not None:
            check_index_tensor(position_ids, "position_ids", (b, n), broadcast_batch=True)
        if media_latents is not None:
            self._check_media_latents(media_latents)
            media_latents = media_latents.to(self.perceiver.latents.dtype)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = CrossAttentionCacheMixin.new_cache()
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0

        if media_latents is None and (pixel_values is not None or image_embeds is not None):
            media_latents = self.get_media_latents(pixel_values, image_embeds)
        text_input = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        check_texts_per_image(text_input, (given[0] if given else "media_latents", media_latents), sequences_per_image)
        check_attention_mask(attention_mask, (b, past_len + n), layout="(batch, past + new tokens)")
        num_media = media_latents.shape[1] if media_latents is not None else self._cached_num_media(past_key_values)
        if media_time is not None and num_media:
            check_index_tensor(media_time, "media_time", (b, n), high=num_media + 1,
                               high_field="0 = before the first medium, t = after the t-th")
        if not num_media and past_len == 0 and input_ids is not None:  # media tokens without media: refused
            self._check_media_tokens(input_ids, 0)
        if media_time is None and num_media:
            if input_ids is None:
                raise ValueError("with inputs_embeds and media, pass media_time (batch, seq) as well")
            media_time = media_time_from_ids(input_ids, self.config.media_token_id)
            if past_len == 0:
                self._check_media_tokens(input_ids, num_media)
            else:  # continuing a cached sequence: every earlier medium has been seen
                media_time = media_time + num_media
        conditioning = None
        if num_media:
            media_mask, attends = text_to_media_mask(
                media_time, num_media, self.config.perceiver_config.num_latents,
                self.config.only_attend_immediate_media,
            )
            context = media_latents.flatten(1, 2) if media_latents is not None else None
            conditioning = MediaConditioning(context, media_mask, attends, past_key_values)

        decode = self._decode_builtin if self.language_model is None else self._decode_language_model
        hidden = decode(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, conditioning,
                        use_cache, needed_positions)
        return FlamingoModelOutput(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            media_latents=media_latents,
        )

    def _decode_builtin(self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cond,
                        use_cache, needed_positions=None) -> torch.Tensor:
        """The PaLM decoder with the cross-attention blocks before / after their layers -> `(b, n, d)`."""
        if input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        n = inputs_embeds.shape[1]
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
            else:
                position_ids = torch.arange(past_len, past_len + n, device=inputs_embeds.device)[None]
        rotary_angles = self.rotary(position_ids)
        mask = self_attention_mask(attention_mask, n, causal=True) if attention_mask is not None else None
        before = self.config.cross_attn_placement == "before"
        rows = None
        if needed_positions is not None and past_len == 0:
            rows = row_indices(rows_needed(needed_positions.bool(), mask, causal=True))

        def cross_attend(i, hidden):
            if cond is None or str(i) not in self.cross_attn_layers:
                return hidden
            return self.cross_attn_layers[str(i)](hidden, cond.media_latents, cond.media_mask, cond.attends,
                                                  past_key_values=past_key_values, rows=rows)

        hidden = inputs_embeds
        for i, layer in enumerate(self.layers):
            hidden = cross_attend(i, hidden) if before else hidden
            hidden = layer(hidden, mask, rotary_angles=rotary_angles, past_key_values=past_key_values, rows=rows)
            hidden = hidden if before else cross_attend(i, hidden)
        return self.norm(hidden)

    def _decode_language_model(self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cond,
                               use_cache, needed_positions=None) -> torch.Tensor:
        """The wrapped LM with the media conditioning active for this call only -> `(b, n, d)` (after its final
        norm). Position ids are the LM's own default unless given (`generate()` gives them from the mask)."""
        self_cache = past_key_values.self_attention_cache if isinstance(past_key_values, EncoderDecoderCache) \
            else past_key_values
        with conditioning_active(self, cond):  # per thread: never stored on the model
            out = self.language_model(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids, past_key_values=self_cache, use_cache=use_cache, return_dict=True,
            )
        return out.last_hidden_state

    @property
    def media_conditioning(self) -> MediaConditioning | None:
        """The media conditioning of this model's wrapped-LM call in progress in this thread (None outside one)."""
        return active_conditioning(self)

    def _cached_num_media(self, cache) -> int:
        """Media count recovered from cross-attention K/V stored on an earlier call (0 when none)."""
        if not isinstance(cache, EncoderDecoderCache) or not self.cross_attn_layers:
            return 0
        first = int(next(iter(self.cross_attn_layers)))
        if not cache.is_updated.get(first, False):
            return 0
        return cache.cross_attention_cache.layers[first].keys.shape[2] // self.config.perceiver_config.num_latents


class FlamingoForConditionalGeneration(CrossAttentionCacheMixin, FlamingoPreTrainedModel, GenerationMixin):
    """Flamingo with its tied language-model head. `forward(...) -> FlamingoCausalLMOutput (logits (b, n, vocab))`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _per_image_generation_inputs = ("pixel_values", "image_embeds", "media_latents")  # encoded once, not per beam

    def __init__(self, config: FlamingoConfig):
        super().__init__(config)
        self.config._attn_implementation = self.config._attn_implementation
        text = config.text_config
        if config.uses_builtin_text_model:
            self.model = FlamingoModel(config)
            self.lm_head = Linear(text.hidden_size, text.vocab_size, bias=False)
        else:  # the LM's own head (bias and all) on top of its base model
            language_model, self.lm_head = build_language_model(text, with_head=True)
            self.model = FlamingoModel(config, language_model=language_model)
            embeddings = self.model.language_model.get_input_embeddings()
            name = next(n for n, m in self.model.language_model.named_modules() if m is embeddings)
            self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()
        # post_init gathered the base model's pattern; this model has the head, so an unexpected lm_head.* is an error
        self._keys_to_ignore_on_load_unexpected -= set(FlamingoModel._keys_to_ignore_on_load_unexpected)
        self.apply_generation_defaults()
        if config.freeze_pretrained:
            self.freeze_pretrained()

    def generation_defaults(self, generation_config) -> dict:
        """`suppress_tokens`: the media and pad tokens (`config.generation_suppressed_token_ids()`); a value already
        set is kept (`[]`: suppress nothing)."""
        return {"suppress_tokens": self.config.generation_suppressed_token_ids()}

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def freeze_pretrained(self, train_input_embeddings: bool = False) -> "FlamingoForConditionalGeneration":
        """Paper recipe: freeze the vision tower and the language model (embeddings, blocks, norm, head);
        the perceiver and the gated cross-attention blocks stay trainable. Returns self.

        `train_input_embeddings=True` keeps the language model's input embeddings trainable as well: OpenFlamingo's
        recipe (its `freeze_lm_embeddings=False` default), which learns the added `<image>` /
        `<|endofchunk|>` tokens. With tied embeddings that trains the head too."""
        for param in self.parameters():
            param.requires_grad_(False)
        for module in (self.model.perceiver, self.model.cross_attn_layers):
            module.requires_grad_(True)
        if train_input_embeddings:
            self.get_input_embeddings().requires_grad_(True)
        return self

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        media_latents: torch.FloatTensor | None = None,
        media_time: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        sequences_per_image: int = 1,
        **kwargs,
    ) -> FlamingoCausalLMOutput:
        """See `FlamingoModel.forward`; `labels (b, n)` give the shifted next-token loss (-100 = ignore).

        Training with labels (train mode, built-in decoder, `config.skip_unused_positions`): positions that no
        loss target reads skip the per-token layers, and their logits are 0."""
        check_output_options(type(self).__name__, kwargs)
        if labels is not None:
            text = input_ids if input_ids is not None else inputs_embeds
            check_index_tensor(labels, "labels", tuple(text.shape[:2]), high=self.config.text_config.vocab_size,
                               high_field="text_config.vocab_size", ignore_index=-100)
        targets = None
        if (labels is not None and self.training and self.config.skip_unused_positions and not logits_to_keep
                and self.config.uses_builtin_text_model):
            shifted = kwargs.get("shift_labels")
            shifted = shifted if shifted is not None else nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
            targets = shifted != -100
        out = self.model(
            input_ids=input_ids, pixel_values=pixel_values, image_embeds=image_embeds, media_latents=media_latents,
            media_time=media_time, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            sequences_per_image=sequences_per_image, needed_positions=targets, return_dict=True,
        )
        hidden = out.last_hidden_state
        if targets is not None:
            logits = on_rows(self.lm_head, hidden, row_indices(targets))
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return FlamingoCausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      media_latents=out.media_latents)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; the prompt is `input_ids` (its media tokens place the media)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("generate() does not take inputs_embeds: pass the prompt as input_ids (batch, seq), with "
                             "media_token_id where each medium goes (forward() accepts inputs_embeds with media_time)")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, media_latents=None, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if media_latents is not None:  # resampled on the first step; never re-encode
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("image_embeds", None)
            model_inputs["media_latents"] = media_latents
        elif not self.model._cached_num_media(kwargs.get("past_key_values")):
            # nothing encoded yet: the media are needed even on a call transformers does not count as the first
            # iteration (an assistant model's prefill in assisted generation), where it drops pixel_values
            for name in ("pixel_values", "image_embeds"):
                if kwargs.get(name) is not None:
                    model_inputs[name] = kwargs[name]
        elif not is_first_iteration:  # encoded by an earlier call (the assistant's next round): the cache has them
            model_inputs.pop("image_embeds", None)
        num_media = self._num_media(media_latents, kwargs)
        if num_media and input_ids is not None:
            if is_first_iteration:
                self.model._check_media_tokens(input_ids, num_media)
            # from the whole sequence so far (beams reorder input_ids, so this follows them)
            step_len = model_inputs["input_ids"].shape[1] if model_inputs.get("input_ids") is not None else input_ids.shape[1]
            time = media_time_from_ids(input_ids, self.config.media_token_id)[:, -step_len:]
            # after a generated media token (no medium given for it): the same mask as "no medium yet" in immediate
            # mode, "every medium" otherwise, within forward's [0, num_media]
            beyond = 0 if self.config.only_attend_immediate_media else num_media
            model_inputs["media_time"] = time.masked_fill(time > num_media, beyond)
        return model_inputs

    @staticmethod
    def _num_media(media_latents, kwargs) -> int:
        for media in (media_latents, kwargs.get("image_embeds"), kwargs.get("pixel_values")):
            if media is not None:
                return media.shape[1]
        return 0

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, **kwargs)
        if getattr(outputs, "media_latents", None) is not None:
            model_kwargs["media_latents"] = outputs.media_latents
        return model_kwargs
