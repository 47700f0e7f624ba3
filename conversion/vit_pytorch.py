"""Key mapping for vit-pytorch's `ViT` (as wrapped by `Extractor`) -> `hf_mm.layers.VisionTransformer`.

vit-pytorch `ViT` = patches `(p1 p2 c)` -> LayerNorm -> Linear -> LayerNorm, class token, learned positions,
pre-norm blocks (`Attention` with its own LayerNorm and bias-free fused qkv; `FeedForward` with its own LayerNorm),
final LayerNorm. The classification head (`mlp_head`) is not part of the embeddings and is dropped.
"""

import math
import re

from .common import StateDictConverter, UnmappedTensorsError


def check_square_image(vit_kwargs: dict) -> None:
    """hf_mm's vision tower takes square images: a ViT `image_size=(h, w)` with `h != w` is rejected."""
    size = vit_kwargs.get("image_size")
    if isinstance(size, (tuple, list)) and len(set(size)) > 1:
        raise ValueError(f"vit image_size={tuple(size)}: only square images are supported (hf_mm's vision tower)")


def _qualified_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_vit_extractor(encoder) -> None:
    """`convert_vit_pytorch` maps a vit-pytorch `ViT` to the output of its `transformer` (after the final norm):
    the image encoder must be an `Extractor` of a `vit_pytorch.ViT` taking that output (its defaults). `detach` and
    `return_embeddings_only` do not change the image tokens."""
    if _qualified_name(encoder) != "vit_pytorch.extractor.Extractor":
        raise ValueError(f"img_encoder: only a vit_pytorch Extractor is supported (wrapping a vit_pytorch.ViT), "
                         f"got {_qualified_name(encoder)}")
    if _qualified_name(encoder.vit) != "vit_pytorch.vit.ViT":
        raise ValueError(f"img_encoder: only vit_pytorch.ViT is supported (in the Extractor), "
                         f"got {_qualified_name(encoder.vit)}")
    only = "only the output of vit.transformer (the Extractor default) is converted"
    if encoder.layer is not None and encoder.layer is not encoder.vit.transformer:
        raise ValueError(f"img_encoder: Extractor(layer={type(encoder.layer).__name__}) is not supported: {only}")
    if encoder.layer is None and encoder.layer_name != "transformer":
        raise ValueError(f"img_encoder: Extractor(layer_name={encoder.layer_name!r}) is not supported: {only}")
    if encoder.layer_save_input:
        raise ValueError(f"img_encoder: Extractor(layer_save_input=True) is not supported: {only}")


def convert_vit_extractor(conv: StateDictConverter, src_prefix: str, dst_prefix: str, encoder) -> dict:
    """`check_vit_extractor`, then `convert_vit_pytorch` on `encoder.vit` (at `{src_prefix}.vit`). An Extractor
    given `layer=vit.transformer` saves that module twice (also under `{src_prefix}.layer`): those copies must equal
    the transformer's tensors."""
    check_vit_extractor(encoder)
    if encoder.layer is not None:
        for key in conv.keys_matching(re.escape(f"{src_prefix}.layer.") + ".*"):
            conv.alias(key, key.replace(f"{src_prefix}.layer.", f"{src_prefix}.vit.transformer.", 1))
    return convert_vit_pytorch(conv, f"{src_prefix}.vit", dst_prefix, encoder.vit)


def convert_vit_pytorch(conv: StateDictConverter, src_prefix: str, dst_prefix: str, vit_module) -> dict:
    """Move every tensor of `vit_module` (a vit-pytorch `ViT`, found at `src_prefix` in `conv.source`) to a
    `VisionTransformer` at `dst_prefix`. Returns the `VisionTowerConfig` kwargs that reproduce it."""
    s, d = src_prefix, dst_prefix
    transformer = vit_module.transformer
    first_attn = transformer.layers[0][0]
    heads = first_attn.heads
    head_dim = first_attn.to_qkv.weight.shape[0] // (3 * heads)
    dim = vit_module.pos_embedding.shape[-1]
    if not hasattr(first_attn.to_out, "__getitem__"):
        raise UnmappedTensorsError("vit-pytorch ViT with heads=1 and dim_head=dim (no output projection) is not supported")
    patch_size = vit_module.patch_size
    if isinstance(patch_size, tuple):
        if patch_size[0] != patch_size[1]:
            raise UnmappedTensorsError(f"only square patches are supported, got {patch_size}")
        patch_size = patch_size[0]
    patch_dim = vit_module.to_patch_embedding[1].normalized_shape[0]
    channels = patch_dim // (patch_size * patch_size)
    num_cls = vit_module.cls_token.shape[0]
    num_patches = vit_module.pos_embedding.shape[0] - num_cls
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise UnmappedTensorsError(f"only square images are supported: the ViT has {num_patches} patches of "
                                   f"{patch_size}x{patch_size} pixels, not a square grid (non-square image_size?)")

    for src, dst in (("to_patch_embedding.1", "patch_embedding.norm_in"), ("to_patch_embedding.2", "patch_embedding.proj"),
                     ("to_patch_embedding.3", "patch_embedding.norm_out"), ("transformer.norm", "final_norm")):
        conv.move(f"{s}.{src}.weight", f"{d}.{dst}.weight")
        conv.move(f"{s}.{src}.bias", f"{d}.{dst}.bias")
    cls_token = conv.take(f"{s}.cls_token")
    if num_cls:
        conv.put(f"{d}.class_embedding", cls_token[0])
    conv.move(f"{s}.pos_embedding", f"{d}.position_embedding")
    for i in range(len(transformer.layers)):
        src, dst = f"{s}.transformer.layers.{i}", f"{d}.layers.{i}"
        conv.move(f"{src}.0.norm.weight", f"{dst}.norm1.weight")
        conv.move(f"{src}.0.norm.bias", f"{dst}.norm1.bias")
        q, k, v = conv.take(f"{src}.0.to_qkv.weight").chunk(3, dim=0)
        conv.put(f"{dst}.attn.q_proj.weight", q)
        conv.put(f"{dst}.attn.k_proj.weight", k)
        conv.put(f"{dst}.attn.v_proj.weight", v)
        conv.move(f"{src}.0.to_out.0.weight", f"{dst}.attn.o_proj.weight")
        conv.move(f"{src}.0.to_out.0.bias", f"{dst}.attn.o_proj.bias")
        for part, name in (("0", "norm2"), ("1", "mlp.fc1"), ("4", "mlp.fc2")):
            conv.move(f"{src}.1.net.{part}.weight", f"{dst}.{name}.weight")
            conv.move(f"{src}.1.net.{part}.bias", f"{dst}.{name}.bias")
    for key in conv.keys_matching(re.escape(s) + r"\.mlp_head\..*"):
        conv.take(key)  # classification head: unused by an embedding extractor
    return dict(
        image_size=grid * patch_size, patch_size=patch_size, num_channels=channels, hidden_size=dim,
        num_hidden_layers=len(transformer.layers), num_attention_heads=heads, head_dim=head_dim,
        intermediate_size=transformer.layers[0][1].net[1].out_features, hidden_act="gelu", layer_norm_eps=1e-5,
        patch_embedding_type="linear", patch_bias=True, class_token=bool(num_cls),
        position_embedding_type="learned", pre_norm=False, final_norm=True,
        qkv_bias=False, out_bias=True, mlp_bias=True,
    )
