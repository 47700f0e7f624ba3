"""Shared fixtures for the DALL-E tests: tiny reference configs, converted pairs, tiny inputs."""

import torch

from reference_imports import require_reference

VAE_CONFIGS = {
    "2layers-resblock": dict(image_size=32, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=16,
                             num_resnet_blocks=1),
    "3layers-plain": dict(image_size=32, num_layers=3, num_tokens=24, codebook_dim=8, hidden_dim=8),
    "1layer-2blocks-gray": dict(image_size=16, num_layers=1, num_tokens=16, codebook_dim=12, hidden_dim=8,
                                num_resnet_blocks=2, channels=1, normalization=((0.3,), (0.7,))),
    "straight-through-reinmax-l1-kl": dict(image_size=16, num_layers=2, num_tokens=20, codebook_dim=8, hidden_dim=8,
                                           straight_through=True, reinmax=True, smooth_l1_loss=True,
                                           kl_div_loss_weight=0.5, temperature=0.6),
    # no `normalization`: dalle-pytorch's default is 4-wide, ((0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 1)), cut to channels
    "2layers-rgba-default-norm": dict(image_size=16, num_layers=2, num_tokens=20, codebook_dim=8, hidden_dim=8,
                                      channels=4),
}

BASE = dict(dim=32, num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16)
# (dalle kwargs, vae config name): every attention type and option of dalle-pytorch, over three dVAE shapes
DALLE_CONFIGS = {
    "default": (dict(BASE), "2layers-resblock"),
    "axial-conv-mix": (dict(BASE, depth=4, attn_types=("axial_row", "conv_like", "axial_col", "full")),
                       "2layers-resblock"),
    "conv-4x4grid": (dict(BASE, depth=2, attn_types=("conv_like",), heads=3, dim_head=12), "3layers-plain"),
    "axial-optimize-for-inference": (dict(BASE, depth=2, attn_types=("axial_row", "axial_col"),
                                          optimize_for_inference=True), "3layers-plain"),
    "no-shift-no-rotary": (dict(BASE, shift_tokens=False, rotary_emb=False, depth=3,
                                attn_types=("full", "axial_col", "conv_like")), "1layer-2blocks-gray"),
    "sandwich-stable": (dict(BASE, sandwich_norm=True, stable=True, attn_types=("full", "axial_row")),
                        "2layers-resblock"),
    "reversible": (dict(BASE, reversible=True, depth=3, attn_types=("conv_like", "full", "axial_row")),
                   "3layers-plain"),
    "shared-ids": (dict(BASE, depth=4, attn_types=("full", "axial_row"), shared_attn_ids=(0, 1, 0, 1),
                        shared_ff_ids=(0, 0, 1, 1)), "2layers-resblock"),
    "shared-embeddings": (dict(BASE, share_input_output_emb=True, text_seq_len=4), "1layer-2blocks-gray"),
    # more attention types than layers: dalle-pytorch takes the first `depth` (islice(cycle(...), depth))
    "more-types-than-layers": (dict(BASE, depth=2, attn_types=("full", "conv_like", "axial_row")), "3layers-plain"),
}


def dalle_pytorch():
    return require_reference("dalle_pytorch")


def build_reference_vae(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return dalle_pytorch().DiscreteVAE(**VAE_CONFIGS[name]).eval()


def build_reference_dalle(name: str, seed: int = 0):
    """The reference DALLE in eval mode, with layer scales and biases randomised (0.1 / zero would hide layers)."""
    kwargs, vae_name = DALLE_CONFIGS[name]
    vae = build_reference_vae(vae_name, seed)
    torch.manual_seed(seed)
    ref = dalle_pytorch().DALLE(vae=vae, **kwargs).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, param in ref.named_parameters():
            if key.endswith("scale"):
                param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
            elif "norm" in key or key.endswith("bias"):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return ref


def converted_pair(name: str, seed: int = 0):
    from conversion.dalle_pytorch import convert_dalle, dalle_config_from_kwargs

    kwargs, vae_name = DALLE_CONFIGS[name]
    ref = build_reference_dalle(name, seed)
    config = dalle_config_from_kwargs(kwargs, VAE_CONFIGS[vae_name])
    return ref, convert_dalle(ref.state_dict(), config)


def text_ids(config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """`(batch, text_seq_len)` ids with trailing padding (0) of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.num_text_tokens, (batch, config.text_seq_len), generator=gen)
    for row in range(batch):
        ids[row, config.text_seq_len - 1 - row % config.text_seq_len :] = 0
    return ids


def image_codes(config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vae_config.num_tokens, (batch, config.image_seq_len), generator=gen)


def pixels(vae_config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = vae_config.image_size
    return torch.rand(batch, vae_config.channels, size, size, generator=gen)


# every pattern, several axial and conv-like layers (dalle-pytorch's own cache is wrong for these)
MIXED = dict(attn_types=["axial_row", "conv_like", "axial_col", "full", "sparse", "conv_like"],
             num_hidden_layers=6, conv_dilation=2, conv_kernel_size=3, sparse_block_size=4, sparse_local_blocks=2,
             sparse_num_random_blocks=1)


def tiny_model(seed: int = 0, **overrides):
    """A random hf_mm DALL-E (no reference), with layer scales at 1 so every layer matters."""
    from hf_mm.models.dalle import DalleConfig, DalleForImageGeneration

    fields = dict(vae_config=dict(VAE_CONFIGS["2layers-resblock"]), num_text_tokens=40, text_seq_len=5,
                  hidden_size=32, num_attention_heads=2, head_dim=16, **MIXED)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = DalleForImageGeneration(DalleConfig(**fields)).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.ls1.gamma.fill_(1.0)
            layer.ls2.gamma.fill_(1.0)
    return model
