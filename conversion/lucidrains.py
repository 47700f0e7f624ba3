"""Key mapping for building blocks that several lucidrains libraries share (coca-pytorch, flamingo-pytorch; OpenFlamingo
reuses flamingo-pytorch's perceiver and gated cross-attention)."""

import torch

from hf_mm.layers.rotary import RotaryEmbedding

from .common import StateDictConverter, move_layernorm


def convert_bias_free_layernorm(conv: StateDictConverter, src: str, dst: str) -> None:
    """lucidrains' `LayerNorm`: a `gamma` parameter and a persistent all-zero `beta` buffer."""
    conv.move(f"{src}.gamma", f"{dst}.weight")
    gamma = conv.source[f"{src}.gamma"]
    conv.check_buffer(f"{src}.beta", torch.zeros_like(gamma))


def convert_parallel_block(conv: StateDictConverter, src: str, dst: str, heads: int, dim_head: int) -> None:
    """PaLM `ParallelTransformerBlock` (fused `[q | k | v | ff]` projection, multi-query, rotary, SwiGLU)
    -> `TransformerBlock(parallel=True, num_kv_heads=1, gated_mlp=True)`."""
    convert_bias_free_layernorm(conv, f"{src}.norm", f"{dst}.norm1")
    conv.check_buffer(f"{src}.rotary_emb.inv_freq", RotaryEmbedding.compute_inv_freq(dim_head))
    fused = conv.take(f"{src}.fused_attn_ff_proj.weight")
    q, k, v, ff = fused.split([heads * dim_head, dim_head, dim_head, fused.shape[0] - heads * dim_head - 2 * dim_head])
    conv.put(f"{dst}.attn.q_proj.weight", q)
    conv.put(f"{dst}.attn.k_proj.weight", k)
    conv.put(f"{dst}.attn.v_proj.weight", v)
    conv.put(f"{dst}.mlp.fc1.weight", ff)
    conv.move(f"{src}.attn_out.weight", f"{dst}.attn.o_proj.weight")
    conv.move(f"{src}.ff_out.1.weight", f"{dst}.mlp.fc2.weight")


def convert_fused_kv_attention(conv: StateDictConverter, src: str, dst: str) -> None:
    """lucidrains' bias-free `to_q` / fused `to_kv` / `to_out` -> `Attention`'s q/k/v/o projections."""
    k, v = conv.take(f"{src}.to_kv.weight").chunk(2, dim=0)
    conv.move(f"{src}.to_q.weight", f"{dst}.q_proj.weight")
    conv.put(f"{dst}.k_proj.weight", k)
    conv.put(f"{dst}.v_proj.weight", v)
    conv.move(f"{src}.to_out.weight", f"{dst}.o_proj.weight")


def convert_feed_forward(conv: StateDictConverter, src: str, norm_dst: str, mlp_dst: str) -> None:
    """`Sequential(LayerNorm, Linear, GELU, Linear)` (bias-free linears) -> a LayerNorm and an `MLP`."""
    move_layernorm(conv, f"{src}.0", norm_dst)
    conv.move(f"{src}.1.weight", f"{mlp_dst}.fc1.weight")
    conv.move(f"{src}.3.weight", f"{mlp_dst}.fc2.weight")


def convert_perceiver_layers(conv: StateDictConverter, src: str, dst: str, depth: int) -> None:
    """Flamingo perceiver layers `[PerceiverAttention, FeedForward]` and the final norm -> `PerceiverResampler`."""
    for i in range(depth):
        s, d = f"{src}.layers.{i}", f"{dst}.layers.{i}"
        move_layernorm(conv, f"{s}.0.norm_media", f"{d}.norm_media")
        move_layernorm(conv, f"{s}.0.norm_latents", f"{d}.norm_latents")
        convert_fused_kv_attention(conv, f"{s}.0", f"{d}.attn")
        convert_feed_forward(conv, f"{s}.1", f"{d}.norm_ff", f"{d}.mlp")
    move_layernorm(conv, f"{src}.norm", f"{dst}.norm")


def convert_gated_cross_attention(conv: StateDictConverter, src: str, dst: str) -> None:
    """Flamingo `GatedCrossAttentionBlock` (gates, masked cross-attention, feed-forward) -> hf_mm's."""
    conv.move(f"{src}.attn_gate", f"{dst}.attn_gate")
    conv.move(f"{src}.ff_gate", f"{dst}.ff_gate")
    move_layernorm(conv, f"{src}.attn.norm", f"{dst}.norm1")
    convert_fused_kv_attention(conv, f"{src}.attn", f"{dst}.attn")
    convert_feed_forward(conv, f"{src}.ff", f"{dst}.norm2", f"{dst}.mlp")
