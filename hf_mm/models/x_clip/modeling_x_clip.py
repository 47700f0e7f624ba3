"""x-clip CLIP (lucidrains' `x-clip`) as a transformers model, built from hf_mm's shared layers.

Einstein notation: `b` batch, `m` text views, `v` image views, `n` text tokens, `p` patches, `d` features,
`l` latent features, `c` channels, `g` patch-grid side.
"""

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from hf_mm.layers import LayerNorm, LogitScale, RotaryEmbedding, TransformerBlock, self_attention_mask
from hf_mm.layers.validation import check_attention_mask, check_pixel_values, check_token_ids
from hf_mm.layers.vision import PatchDropout
from hf_mm.modeling_utils import HfMmPreTrainedModel

from .configuration_x_clip import XClipConfig, XClipTextConfig, XClipVisionConfig
from .image_augmentation_x_clip import default_ssl_augmentation
from .loss_x_clip import contrastive_losses, pair_similarities, similarity_regularization
from .ssl_x_clip import XClipMLMHead, XClipVisualSSL


@dataclass
class XClipOutput(ModelOutput):
    """Output of `XClipModel.forward`.

    loss: total training loss (contrastive, weighted side losses); with `return_loss`.
    logits_per_image `(b_i, b_t)` / logits_per_text `(b_t, b_i)`: scaled similarities (FILIP token-wise when
        `use_all_token_embeds`; image->text from the extra projection when `extra_latent_projection`).
    text_embeds `(b, l)` or `(b, n, l)` / image_embeds `(b, l)` or `(b, p, l)`: L2-normalised latents.
    contrastive_loss, multiview_loss, mlm_loss, visual_ssl_loss, sim_reg_loss: unweighted loss terms.
    text_model_output `(b, [1 +] n, d)` / vision_model_output `(b, 1 + p, d)`: tower token states.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    multiview_loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    visual_ssl_loss: torch.Tensor | None = None
    sim_reg_loss: torch.Tensor | None = None
    text_model_output: torch.Tensor | None = None
    vision_model_output: torch.Tensor | None = None


class XClipEncoder(nn.Module):
    """`norm_in` -> x-clip blocks (bias-free, attention output norm, GEGLU with inner norm) -> `norm_out`.
    `(b, n, d) -> (b, n, d)`."""

    def __init__(self, config, causal: bool = False):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.norm_in = LayerNorm(d, eps=eps, bias=False)
        self.layers = nn.ModuleList(
            TransformerBlock(
                config, d, config.num_attention_heads, config.head_dim, config.intermediate_size,
                causal=causal, norm_bias=False, norm_eps=eps, qkv_bias=False, out_bias=False, mlp_bias=False,
                mlp_act="gelu", gated_mlp=True, attn_out_norm=True, mlp_inner_norm=True, rotate_values=True,
                layer_idx=i,
            )
            for i in range(config.num_hidden_layers)
        )
        self.norm_out = LayerNorm(d, eps=eps, bias=False)

    def forward(self, x, attention_mask=None, rotary_angles=None):
        x = self.norm_in(x)
        for layer in self.layers:
            x = layer(x, attention_mask, rotary_angles=rotary_angles)
        return self.norm_out(x)


class XClipTextTransformer(nn.Module):
    """`input_ids (b, n)`, `attention_mask (b, n)` -> `(b, 1 + n, d)` (CLS first) or `(b, n, d)` if causal."""

    def __init__(self, config: XClipTextConfig, extra_tokens: int = 0):
        super().__init__()
        self.config, d = config, config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size + extra_tokens, d)
        absolute = config.position_embedding_type == "absolute"
        self.position_embedding = nn.Embedding(config.max_position_embeddings, d) if absolute else None
        self.rotary = None if absolute else RotaryEmbedding(config.rotary_dim)
        self.cls_token = None if config.causal else nn.Parameter(torch.randn(d))
        self.encoder = XClipEncoder(config, causal=config.causal)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n = input_ids.shape
        x = self.embed_tokens(input_ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(n, device=x.device))  # called: offload hooks run on calls
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(b, 1, -1).to(x.dtype), x), dim=1)
            if attention_mask is not None:
                attention_mask = F.pad(attention_mask.bool(), (1, 0), value=True)
        rotary = self.rotary(torch.arange(x.shape[1], device=x.device)) if self.rotary is not None else None
        mask = self_attention_mask(attention_mask, x.shape[1], causal=self.config.causal) if attention_mask is not None else None
        return self.encoder(x, mask, rotary_angles=rotary)


class XClipVisionTransformer(nn.Module):
    """`pixel_values (b, c, g*P, g*P)` -> `(b, 1 + p, d)`: the first token is `Linear(mean(tokens))`."""

    def __init__(self, config: XClipVisionConfig):
        super().__init__()
        self.config, d, p = config, config.hidden_size, config.patch_size
        self.patch_embedding = nn.Linear(config.num_channels * p * p, d)
        self.position_embedding = nn.Embedding(config.grid_size**2, d)
        self.patch_dropout = PatchDropout(config.patch_dropout, keep_first=False)
        self.encoder = XClipEncoder(config)
        self.cls_projection = nn.Linear(d, d, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        b, c, h, w = pixel_values.shape
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # b gh gw p1 p2 c
        x = self.patch_embedding(patches.reshape(b, (h // p) * (w // p), p * p * c).to(self.patch_embedding.weight.dtype))
        positions = torch.arange(self.position_embedding.num_embeddings, device=x.device)
        x = self.patch_dropout(x + self.position_embedding(positions))
        x = self.encoder(x)
        return torch.cat((self.cls_projection(x.mean(dim=1, keepdim=True)), x), dim=1)


class DownsampleProjection(nn.Module):
    """Token grid `(b, g*g, d)` -> depthwise conv (4x4, stride 2) -> 1x1 conv -> `(b, (g/2)^2, l)`."""

    def __init__(self, dim: int, latent_dim: int):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 4, stride=2, padding=1, bias=False, groups=dim)
        self.pointwise = nn.Conv2d(dim, latent_dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"downsample_image_embeds needs a square token grid, got {n} image tokens")
        grid = tokens.transpose(1, 2).reshape(b, d, g, g)
        return self.pointwise(self.depthwise(grid)).flatten(2).transpose(1, 2)


class XClipPreTrainedModel(HfMmPreTrainedModel):
    config: XClipConfig
    base_model_prefix = "x_clip"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _no_split_modules = ["TransformerBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LogitScale):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, XClipTextTransformer) and module.cls_token is not None:
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)) and not isinstance(module, nn.BatchNorm1d):
            init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


def as_views(views) -> tuple:
    return tuple(views) if isinstance(views, (tuple, list)) else (views,)


class XClipModel(XClipPreTrainedModel):
    """x-clip CLIP: text and vision towers, latent projections, learned temperature and every loss option.

    `forward(input_ids (b, n), pixel_values (b, c, H, W), attention_mask (b, n), return_loss)` -> `XClipOutput`.
    """

    def __init__(self, config: XClipConfig):
        super().__init__(config)
        self.config._attn_implementation = self.config._attn_implementation  # reaches the sub-configs
        text, vision = config.text_config, config.vision_config
        self.builtin_text = isinstance(text, XClipTextConfig)
        self.builtin_vision = isinstance(vision, XClipVisionConfig)
        self.text_model = (
            XClipTextTransformer(text, extra_tokens=int(config.use_mlm)) if self.builtin_text else AutoModel.from_config(text)
        )
        self.vision_model = XClipVisionTransformer(vision) if self.builtin_vision else AutoModel.from_config(vision)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = self._make_visual_projection()
        if config.extra_latent_projection:  # CLOOB: separate latents for the image -> text direction
            self.text_projection_extra = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
            self.visual_projection_extra = self._make_visual_projection()
        self.logit_scale = LogitScale(config.logit_scale_init, max_scale=config.logit_scale_max)
        self.mlm = XClipMLMHead(config) if config.use_mlm else None
        if config.use_visual_ssl:
            augment = (
                default_ssl_augmentation(vision.image_size, vision.num_channels)
                if config.visual_ssl_augment == "default" else nn.Identity()
            )
            self.visual_ssl = XClipVisualSSL(config, augment)
        else:
            self.visual_ssl = None
        self.post_init()

    def _make_visual_projection(self) -> nn.Module:
        d, l = self.config.vision_config.hidden_size, self.config.projection_dim
        return DownsampleProjection(d, l) if self.config.downsample_image_embeds else nn.Linear(d, l, bias=False)

    # -- embeddings API (gradient checkpointing and PEFT hook the token embeddings) ----------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embed_tokens if self.builtin_text else self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self.builtin_text:
            self.text_model.embed_tokens = value
        else:
            self.text_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------- input checks
    def _check_input_ids(self, input_ids, name: str = "input_ids") -> None:
        vocab_size = getattr(self.get_input_embeddings(), "num_embeddings", None)
        if not self.builtin_text:
            check_token_ids(input_ids, name, vocab_size=vocab_size, vocab_field="text_config.vocab_size")
            return
        text = self.config.text_config
        check_token_ids(
            input_ids, name, vocab_size=vocab_size, vocab_field="text_config.vocab_size",
            max_length=text.max_position_embeddings, length_field="text_config.max_position_embeddings, x-clip's text_seq_len",
        )
        if text.causal and not bool((input_ids == text.eos_token_id).any(dim=-1).all()):
            raise ValueError(f"every row of {name} needs the eos token {text.eos_token_id} (causal text tower pools at eos)")

    def _check_pixel_values(self, pixel_values, name: str = "pixel_values") -> None:
        vision = self.config.vision_config
        check_pixel_values(
            pixel_values, name, num_channels=getattr(vision, "num_channels", 3),
            image_size=getattr(vision, "image_size", None), size_hint=f", patch_size={getattr(vision, 'patch_size', None)}",
        )

    def _text_mask(self, input_ids, attention_mask):
        if attention_mask is not None:
            check_attention_mask(attention_mask, tuple(input_ids.shape))
            return attention_mask.bool()
        pad = getattr(self.config.text_config, "pad_token_id", None)
        return input_ids != pad if pad is not None else torch.ones_like(input_ids, dtype=torch.bool)

    def _check_token_wise_text(self, text_mask, name: str) -> None:
        """FILIP averages over each text's tokens: a text of padding only has none (x-clip returns -3.4e38)."""
        if not self.config.use_all_token_embeds:
            return
        empty = (~text_mask.any(dim=-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"use_all_token_embeds compares each text's tokens with the image tokens, but rows {empty} of {name} "
                f"are all padding (attention_mask 0, or text_config.pad_token_id without a mask); expected at least "
                "one token per text"
            )

    # --------------------------------------------------------------------------------------------- towers
    def encode_text(self, input_ids, text_mask, freeze: bool = False, keep_mask: bool = False) -> torch.Tensor:
        """`(b, n)` -> token states `(b, [1 +] n, d)`; under `no_grad` and detached when `freeze` (LiT).
        `text_mask` is dropped under `text_encode_without_mask` unless `keep_mask` (x-clip's MLM pass)."""
        with torch.no_grad() if freeze else nullcontext():
            mask = None if self.config.text_encode_without_mask and not keep_mask else text_mask
            if self.builtin_text:
                states = self.text_model(input_ids, mask)
            else:
                states = self.text_model(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        return states.detach() if freeze else states

    def encode_image(self, pixel_values, freeze: bool = False) -> torch.Tensor:
        """`(b, c, H, W)` -> token states `(b, 1 + p, d)`."""
        with torch.no_grad() if freeze else nullcontext():
            states = self.vision_model(pixel_values) if self.builtin_vision else self.vision_model(
                pixel_values=pixel_values, return_dict=True).last_hidden_state
        return states.detach() if freeze else states

    def _text_embeds(self, states, input_ids, text_mask):
        """Token states -> pooled `(b, d)` (CLS, or eos when causal) or FILIP tokens `(b, t, d)` with mask `(b, t)`."""
        causal = self.builtin_text and self.config.text_config.causal
        if not self.config.use_all_token_embeds:
            if causal:  # x-clip moves the (first) eos token to the front
                eos = (input_ids == self.config.text_config.eos_token_id).float().argmax(dim=-1)
                return states[torch.arange(states.shape[0], device=states.device), eos], None
            return states[:, 0], None
        tokens = states[:, 1:] if self.config.text_has_cls_token and not causal else states
        extra = tokens.shape[1] - text_mask.shape[1]
        mask = F.pad(text_mask, (extra, 0), value=True) if extra >= 0 else text_mask[:, -extra:]
        return tokens, mask

    def _image_embeds(self, states):
        if not self.config.use_all_token_embeds:
            return states[:, 0]
        return states[:, 1:] if self.config.visual_has_cls_token else states

    def _latents(self, text_embeds, image_embeds, extra: bool):
        if extra and not self.config.extra_latent_projection:
            raise ValueError("extra_projection=True needs the CLOOB projections of a model configured with "
                             "extra_latent_projection=True; this one has none")
        text_proj = self.text_projection_extra if extra else self.text_projection
        image_proj = self.visual_projection_extra if extra else self.visual_projection
        text = F.normalize(text_proj(text_embeds), dim=-1) if text_embeds is not None else None
        image = F.normalize(image_proj(image_embeds), dim=-1) if image_embeds is not None else None
        return text, image

    def get_text_features(self, input_ids, attention_mask=None, extra_projection: bool = False) -> torch.Tensor:
        """`input_ids (b, n)` -> normalised latents `(b, l)`, or `(b, n, l)` with `use_all_token_embeds`."""
        self._check_input_ids(input_ids)
        mask = self._text_mask(input_ids, attention_mask)
        embeds, _ = self._text_embeds(self.encode_text(input_ids, mask), input_ids, mask)
        return self._latents(embeds, None, extra_projection)[0]

    def get_image_features(self, pixel_values, extra_projection: bool = False) -> torch.Tensor:
        """`pixel_values (b, c, H, W)` -> normalised latents `(b, l)`, or `(b, p, l)` with `use_all_token_embeds`."""
        self._check_pixel_values(pixel_values)
        return self._latents(None, self._image_embeds(self.encode_image(pixel_values)), extra_projection)[1]

    # -------------------------------------------------------------------------------------------- forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        aug_input_ids: torch.Tensor | tuple | None = None,
        aug_pixel_values: torch.Tensor | tuple | None = None,
        freeze_image_encoder: bool = False,
        freeze_text_encoder: bool = False,
        **kwargs,
    ) -> XClipOutput:
        """Similarities of every text with every image, and with `return_loss` x-clip's total loss.

        `aug_input_ids` / `aug_pixel_values`: extra views `(b, n)` / `(b, c, H, W)` (or tuples of them) for
        the multiview loss. `return_dict=False` (or `config.return_dict=False`) returns `XClipOutput.to_tuple()`:
        its non-None fields, `loss` first.

        `freeze_image_encoder` / `freeze_text_encoder` (LiT) run that tower without gradients in the contrastive
        pass only. As in x-clip, the tower keeps its train/eval mode (a locked vision tower in train mode still
        applies patch dropout: call `vision_model.eval()` for deterministic features), and x-clip's self-supervised
        passes ignore the flags: with `return_loss`, `use_visual_ssl` still trains the image tower under
        `freeze_image_encoder`, and `use_mlm` still trains the text tower under `freeze_text_encoder` (a
        `UserWarning` says so). To lock a tower completely, turn its side loss off (or its loss weight to 0 and
        its parameters' `requires_grad` off).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("XClipModel.forward needs both input_ids (batch, seq_len) and pixel_values "
                             "(batch, channels, height, width); use get_text_features / get_image_features for one")
        self._check_input_ids(input_ids)
        self._check_pixel_values(pixel_values)
        cfg, b = self.config, input_ids.shape[0]
        text_mask = self._text_mask(input_ids, attention_mask)
        self._check_token_wise_text(text_mask, "input_ids")
        text_views, image_views = 1, 1
        if aug_input_ids is not None or aug_pixel_values is not None:
            if not return_loss:
                raise ValueError("aug_input_ids / aug_pixel_values are only used by the multiview loss: pass return_loss=True")
            if cfg.multiview_loss_weight == 0:
                raise ValueError("aug_input_ids / aug_pixel_values given but multiview_loss_weight is 0")
        if return_loss and pixel_values.shape[0] != b:
            raise ValueError(f"return_loss pairs text i with image i: input_ids has batch {b}, "
                             f"pixel_values has batch {pixel_values.shape[0]}")

        if return_loss:  # x-clip's side passes below encode with gradients whatever the freeze flags say
            for frozen, frozen_name, side, side_name in (
                (freeze_image_encoder, "freeze_image_encoder", self.visual_ssl, "use_visual_ssl"),
                (freeze_text_encoder, "freeze_text_encoder", self.mlm, "use_mlm"),
            ):
                if frozen and side is not None:
                    warnings.warn(
                        f"{frozen_name}=True only freezes the contrastive pass: with {side_name}=True the "
                        f"self-supervised loss still trains that tower (x-clip's behaviour); set {side_name}=False "
                        "to lock the tower completely", UserWarning, stacklevel=2,
                    )
        mlm_loss = visual_ssl_loss = None
        # MLM: drawn first, as in x-clip, so a shared seed gives the same masks; its pass always masks padding
        if return_loss and self.mlm is not None:
            masked_ids, labels = self.mlm.mask_tokens(input_ids)
            mlm_loss = self.mlm.loss(self.encode_text(masked_ids, text_mask, keep_mask=True), labels)
        if return_loss and self.visual_ssl is not None:
            visual_ssl_loss = self.visual_ssl(pixel_values, self.encode_image)

        if aug_input_ids is not None:
            views = as_views(aug_input_ids)
            for i, view in enumerate(views):
                self._check_input_ids(view, f"aug_input_ids[{i}]")
                if view.shape != input_ids.shape:
                    raise ValueError(f"aug_input_ids[{i}] must have the shape of input_ids {tuple(input_ids.shape)}, "
                                     f"got {tuple(view.shape)}")
            text_views += len(views)
            view_masks = [self._text_mask(v, None) for v in views]
            for i, mask in enumerate(view_masks):
                self._check_token_wise_text(mask, f"aug_input_ids[{i}]")
            text_mask = torch.cat([text_mask, *view_masks])
            input_ids = torch.cat((input_ids, *views))
        if aug_pixel_values is not None:
            views = as_views(aug_pixel_values)
            for i, view in enumerate(views):
                self._check_pixel_values(view, f"aug_pixel_values[{i}]")
                if view.shape != pixel_values.shape:
                    raise ValueError(f"aug_pixel_values[{i}] must have the shape of pixel_values "
                                     f"{tuple(pixel_values.shape)}, got {tuple(view.shape)}")
            image_views += len(views)
            pixel_values = torch.cat((pixel_values, *views))

        text_states = self.encode_text(input_ids, text_mask, freeze=freeze_text_encoder)
        image_states = self.encode_image(pixel_values, freeze=freeze_image_encoder)
        text_embeds, token_mask = self._text_embeds(text_states, input_ids, text_mask)
        image_embeds = self._image_embeds(image_states)
        text_latents, image_latents = self._latents(text_embeds, image_embeds, extra=False)
        text_extra = image_extra = None
        if cfg.extra_latent_projection:
            text_extra, image_extra = self._latents(text_embeds, image_embeds, extra=True)
        scale = self.logit_scale()

        b_img = pixel_values.shape[0] // image_views
        logits_per_text, logits_per_image = pair_similarities(
            text_latents[:b], image_latents[:b_img],
            text_extra[:b] if text_extra is not None else None, image_extra[:b_img] if image_extra is not None else None,
            token_mask[:b] if token_mask is not None else None, scale,
        )
        outputs = dict(
            logits_per_image=logits_per_image, logits_per_text=logits_per_text,
            text_embeds=text_latents[:b], image_embeds=image_latents[:b_img],
            text_model_output=text_states[:b], vision_model_output=image_states[:b_img],
            mlm_loss=mlm_loss, visual_ssl_loss=visual_ssl_loss,
        )
        if not return_loss:
            return XClipOutput(**outputs)

        def split(t, views):  # ((views b), ...) -> (views, b, ...)
            return t.reshape(views, -1, *t.shape[1:]) if t is not None else None

        losses = contrastive_losses(
            split(text_latents, text_views), split(image_latents, image_views),
            split(text_extra, text_views), split(image_extra, image_views),
            split(token_mask, text_views), scale, cfg.decoupled_contrastive_learning, cfg.use_all_token_embeds,
        )
        multiview = losses.shape[0] > 1
        weights = {
            "mlm": cfg.text_ssl_loss_weight if mlm_loss is not None else 0.0,
            "ssl": cfg.image_ssl_loss_weight if visual_ssl_loss is not None else 0.0,
            "multiview": cfg.multiview_loss_weight if multiview else 0.0,
        }
        loss = losses[0] * (1 - sum(weights.values()))
        if mlm_loss is not None:
            loss = loss + mlm_loss * weights["mlm"]
        if visual_ssl_loss is not None:
            loss = loss + visual_ssl_loss * weights["ssl"]
        multiview_loss = sim_reg_loss = None
        if multiview:
            multiview_loss = losses[1:].mean()
            loss = loss + multiview_loss * weights["multiview"]
        if cfg.sim_reg_loss_weight > 0:
            sim_reg_loss = similarity_regularization(
                split(text_latents, text_views), split(image_latents, image_views),
                split(text_extra, text_views), split(image_extra, image_views),
            )
            loss = loss + sim_reg_loss * cfg.sim_reg_loss_weight
        # built once, in field order, so that `to_tuple()` (return_dict=False) starts with the loss
        return XClipOutput(loss=loss, contrastive_loss=losses[0], multiview_loss=multiview_loss,
                           sim_reg_loss=sim_reg_loss, **outputs)


__all__ = ["XClipModel", "XClipOutput", "XClipPreTrainedModel"]
