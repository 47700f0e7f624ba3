"""Shared fixtures for the Flamingo tests: tiny reference configs, a converted pair, tiny inputs."""

import torch

from reference_imports import require_reference

# FlamingoPaLM kwargs + the ViT's; chosen to differ in every architectural knob the converter reads.
REFERENCE_CONFIGS = {
    "immediate-every2-video": dict(
        num_tokens=100, dim=64, depth=4, heads=4, dim_head=16, media_token_id=3, cross_attn_every=2,
        perceiver_num_latents=8, perceiver_depth=1, max_video_frames=4,
        vit=dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=1, heads=2, mlp_dim=128),
    ),
    "all-media-every3": dict(
        num_tokens=50, dim=32, depth=3, heads=2, dim_head=8, ff_mult=2, media_token_id=5, cross_attn_every=3,
        perceiver_num_latents=4, perceiver_depth=2, only_attend_immediate_media=False, max_video_frames=2,
        vit=dict(image_size=32, patch_size=16, num_classes=0, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64),
    ),
    "immediate-every1-3heads": dict(
        num_tokens=70, dim=48, depth=2, heads=3, dim_head=16, media_token_id=7, cross_attn_every=1,
        perceiver_num_latents=6, perceiver_depth=2, max_video_frames=3,
        vit=dict(image_size=16, patch_size=4, num_classes=5, dim=48, depth=1, heads=3, dim_head=16, mlp_dim=96),
    ),
}


def build_reference(name: str, seed: int = 0):
    """The reference FlamingoPaLM in eval mode, with non-zero tanh gates (zero gates would hide the x-attn)."""
    require_reference("vit_pytorch")
    from conversion.flamingo_pytorch import build_reference as build

    torch.manual_seed(seed)
    ref = build(REFERENCE_CONFIGS[name]).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, xattn in ref.layers:
            if xattn is not None:
                xattn.attn_gate.copy_(torch.rand(1, generator=gen) + 0.5)
                xattn.ff_gate.copy_(torch.rand(1, generator=gen) + 0.5)
    return ref


def converted_pair(name: str, seed: int = 0):
    from conversion.flamingo_pytorch import convert

    ref = build_reference(name, seed)
    return ref, convert(ref)


def media_prompt(name: str, batch: int, length: int, media_positions, seed: int = 0) -> torch.Tensor:
    """Random ids (never the media token) with the media token at `media_positions`."""
    cfg = REFERENCE_CONFIGS[name]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(cfg["media_token_id"] + 1, cfg["num_tokens"], (batch, length), generator=gen)
    ids[:, list(media_positions)] = cfg["media_token_id"]
    return ids


def pixels(name: str, *leading, seed: int = 0) -> torch.Tensor:
    size = REFERENCE_CONFIGS[name]["vit"]["image_size"]
    return torch.randn(*leading, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_config(**overrides):
    from hf_mm.models.flamingo import FlamingoConfig

    kwargs = dict(
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           head_dim=16, intermediate_size=64, patch_embedding_type="linear", patch_bias=True,
                           final_norm=True, pre_norm=False, qkv_bias=False),
        perceiver_config=dict(num_latents=4, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                              max_video_frames=3),
        text_config=dict(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16),
        media_token_id=3, cross_attn_every=2,
    )
    kwargs.update(overrides)
    return FlamingoConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides):
    """A random tiny Flamingo with open (non-zero) gates, in eval mode."""
    from hf_mm.models.flamingo import FlamingoForConditionalGeneration

    torch.manual_seed(seed)
    model = FlamingoForConditionalGeneration(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for block in model.model.cross_attn_layers.values():
            block.attn_gate.fill_(0.8)
            block.ff_gate.fill_(0.6)
    return model
