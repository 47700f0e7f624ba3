"""DALL-E image-token sampling: hf_mm `generate()` (cached) vs dalle-pytorch `DALLE.generate_images`.

dalle-pytorch's `use_cache=True` is silently dropped unless `cond_scale != 1` (docs/references.md 4b), so
both of its modes recompute the whole prefix every step; both are timed and the faster one is "its best
mode". Both sides sample with top-k (`filter_thres` set so that k = 1, which makes the sampled tokens
deterministic and comparable) and decode the codes with the dVAE, as `generate_images` does; the reference's
codes are captured at its `vae.decode` call. hf_mm's cached output is also checked equal to its uncached one.
The sampling cost per image token (each side's dVAE decode, timed alone, subtracted) is reported against
hf_mm's one cached single-token forward (the cache floor).
"""

from __future__ import annotations

import torch

from conversion.dalle_pytorch import convert_dalle, dalle_config_from_kwargs

from .common import (Result, check_tokens, interleaved_times, median, one_token_forward_fn, per_token_details,
                     require_reference, seeded_randint)

FULL = dict(
    dalle=dict(dim=256, depth=4, heads=8, dim_head=64, num_text_tokens=10000, text_seq_len=32,
               attn_types=("full", "axial_row", "axial_col", "conv_like")),
    vae=dict(image_size=64, num_layers=3, num_tokens=1024, codebook_dim=256, hidden_dim=64),  # 8 x 8 = 64 codes
    batch=2,
)
TINY = dict(
    dalle=dict(dim=32, depth=4, heads=2, dim_head=16, num_text_tokens=50, text_seq_len=6,
               attn_types=("full", "axial_row", "axial_col", "conv_like")),
    vae=dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=16),  # 4 x 4 = 16 codes
    batch=2,
)


def build_pair(cfg: dict, seed: int = 0):
    dalle_pytorch = require_reference("dalle_pytorch")
    torch.manual_seed(seed)
    vae = dalle_pytorch.DiscreteVAE(**cfg["vae"])
    ref = dalle_pytorch.DALLE(vae=vae, **cfg["dalle"]).eval()
    model = convert_dalle(ref.state_dict(), dalle_config_from_kwargs(cfg["dalle"], cfg["vae"])).eval()
    return ref, model


class _CodeRecorder:
    """Wraps the reference dVAE's `decode` to keep the image codes `generate_images` sampled."""

    def __init__(self, vae):
        self.decode, self.codes = vae.decode, None
        vae.decode = self

    def __call__(self, img_seq, *args, **kwargs):
        self.codes = img_seq.clone()
        return self.decode(img_seq, *args, **kwargs)


def run(tiny: bool, repeats: int, warmup: int) -> list[Result]:
    cfg = TINY if tiny else FULL
    ref, model = build_pair(cfg)
    config = model.config
    text = seeded_randint(1, config.num_text_tokens, (cfg["batch"], config.text_seq_len), seed=4)
    text[0, config.text_seq_len // 2:] = 0  # padding
    thres = 1 - 1.5 / config.vocab_size  # top-k with k = max(int((1 - thres) * V), 1) = 1, on both sides
    recorder = _CodeRecorder(ref.vae)

    def reference(use_cache: bool):
        with torch.no_grad():
            ref.generate_images(text.clone(), filter_thres=thres, use_cache=use_cache)  # it mutates its input
        return recorder.codes

    def ours(use_cache: bool = True):
        with torch.no_grad():
            codes = model.generate(text, filter_thres=thres, use_cache=use_cache)
            model.vae.decode(codes)
        return codes

    expected = reference(False)
    verified = check_tokens(expected, ours(), "DALL-E sampling")
    check_tokens(expected, reference(True), "dalle-pytorch use_cache=True")
    check_tokens(expected, ours(use_cache=False), "hf_mm uncached sampling")
    half = config.image_seq_len // 2
    image_token = expected[:, half: half + 1] + config.text_vocab_size
    floor = one_token_forward_fn(model, dict(input_ids=text, image_ids=expected[:, :half]), dict(input_ids=image_token))

    @torch.no_grad()
    def ref_vae():
        recorder.decode(expected)

    @torch.no_grad()
    def ours_vae():
        model.vae.decode(expected)

    times = interleaved_times(
        {"reference_no_cache": lambda: reference(False), "hf_mm": ours,
         "reference_use_cache": lambda: reference(True), "reference_vae_decode": ref_vae,
         "hf_mm_vae_decode": ours_vae, "hf_mm_step": floor},
        repeats, warmup,
    )
    med = {k: median(v) for k, v in times.items()}
    best = min(("reference_no_cache", "reference_use_cache"), key=med.get)
    sampling = per_token_details(med[best] - med["reference_vae_decode"], med["hf_mm"] - med["hf_mm_vae_decode"],
                                 config.image_seq_len, med["hf_mm_step"])
    types = "/".join(cfg["dalle"]["attn_types"])
    return [Result(
        family="DALL-E",
        case=f"sample {config.image_seq_len} image tokens + dVAE decode, batch {cfg['batch']} ({types})",
        reference=f"dalle-pytorch DALLE{' (tiny)' if tiny else ''}, best of use_cache=False/True",
        reference_s=med[best], hf_mm_s=med["hf_mm"], target=3.0,
        verified=verified + "; hf_mm cached == uncached", short=f"DALL-E sampling\n{config.image_seq_len} tokens",
        details={"reference_no_cache_s": med["reference_no_cache"], "reference_use_cache_s": med["reference_use_cache"],
                 "reference_best_mode": best, "reference_vae_decode_s": med["reference_vae_decode"],
                 "hf_mm_vae_decode_s": med["hf_mm_vae_decode"], **sampling,
                 "note": "per token = (time - own dVAE decode) / image tokens", "raw_times": times},
    )]
