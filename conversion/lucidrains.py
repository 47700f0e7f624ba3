"""Key mapping for building blocks that several lucidrains libraries share (coca-pytorch, flamingo-pytorch)."""

import torch

from hf_mm.layers.rotary import RotaryEmbedding

from .common import StateDictConverter


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
