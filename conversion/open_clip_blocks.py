"""Key mapping for open_clip's building blocks, shared by the open_clip CoCa and OpenFlamingo sources."""

from .common import StateDictConverter, move_layernorm


def convert_multihead_attention(conv: StateDictConverter, src: str, dst: str, packed: bool = True) -> None:
    """`nn.MultiheadAttention` (packed `in_proj_weight`, or separate `{q,k,v}_proj_weight`) -> `Attention`'s
    q/k/v/o projections."""
    if packed:
        for name, tensor in zip("qkv", conv.take(f"{src}.in_proj_weight").chunk(3)):
            conv.put(f"{dst}.{name}_proj.weight", tensor)
    else:
        for name in "qkv":
            conv.move(f"{src}.{name}_proj_weight", f"{dst}.{name}_proj.weight")
    for name, tensor in zip("qkv", conv.take(f"{src}.in_proj_bias").chunk(3)):
        conv.put(f"{dst}.{name}_proj.bias", tensor)
    conv.move(f"{src}.out_proj.weight", f"{dst}.o_proj.weight")
    conv.move(f"{src}.out_proj.bias", f"{dst}.o_proj.bias")


def convert_residual_block(conv: StateDictConverter, src: str, dst: str) -> None:
    """open_clip `ResidualAttentionBlock` (self- or cross-attention, optional layer scale) -> `TransformerBlock`."""
    move_layernorm(conv, f"{src}.ln_1", f"{dst}.norm1")
    if conv.has(f"{src}.ln_1_kv.weight"):
        move_layernorm(conv, f"{src}.ln_1_kv", f"{dst}.norm_context")
    convert_multihead_attention(conv, f"{src}.attn", f"{dst}.attn")
    move_layernorm(conv, f"{src}.ln_2", f"{dst}.norm2")
    conv.move(f"{src}.mlp.c_fc.weight", f"{dst}.mlp.fc1.weight")
    conv.move(f"{src}.mlp.c_fc.bias", f"{dst}.mlp.fc1.bias")
    conv.move(f"{src}.mlp.c_proj.weight", f"{dst}.mlp.fc2.weight")
    conv.move(f"{src}.mlp.c_proj.bias", f"{dst}.mlp.fc2.bias")
    for i in (1, 2):
        if conv.has(f"{src}.ls_{i}.gamma"):
            conv.move(f"{src}.ls_{i}.gamma", f"{dst}.ls{i}.gamma")


def convert_vision_transformer(conv: StateDictConverter, src: str, dst: str, vision_config) -> None:
    """open_clip `VisionTransformer`'s patch embedding, class token, positions, `ln_pre` and blocks ->
    `VisionTransformer` at `dst`. Its head (`ln_post`, `proj`, an attentional pooler) is left to the caller."""
    conv.move(f"{src}.conv1.weight", f"{dst}.patch_embedding.proj.weight")
    conv.move(f"{src}.class_embedding", f"{dst}.class_embedding")
    conv.move(f"{src}.positional_embedding", f"{dst}.position_embedding")
    if vision_config.pre_norm:
        move_layernorm(conv, f"{src}.ln_pre", f"{dst}.pre_norm")
    for i in range(vision_config.num_hidden_layers):
        convert_residual_block(conv, f"{src}.transformer.resblocks.{i}", f"{dst}.layers.{i}")
