"""Flamingo greedy decoding: hf_mm `generate()` vs flamingo-pytorch `FlamingoPaLM` with full recompute.

flamingo-pytorch has no generate() and no cache; its `forward(text, images=...)` re-encodes the images (ViT +
perceiver) on every call, and its precomputed-embeddings path crashes (`embeds=` -> NameError). The timed
reference is the strongest naive loop over its own modules: the media are encoded once (`img_encoder` +
`perceiver_resampler`, as forward does), then each step runs forward's decoder part (`token_emb`, the PaLM
blocks and gated cross-attention with `media_locations = text == media_token_id`, `to_logits`) over the whole
prefix. The library's own per-step `forward(text, images=...)` loop is timed as well (a detail in the JSON).
A second row reports decode only (no target): each side's media encoding (ViT + perceiver), timed alone, is
subtracted, as the CoCa rows do with the image encoding; it also gives the decode cost per token against
hf_mm's one cached single-token forward (the cache floor).
"""

from __future__ import annotations

import torch

from conversion.flamingo_pytorch import build_reference, convert

from .common import (Result, check_tokens, interleaved_times, median, one_token_forward_fn, per_token_details,
                     require_reference, seeded_randint, seeded_randn)

# 256 media tokens: the perceiver resamples each image into 256 latents that the text cross-attends to
FULL = dict(
    arch=dict(num_tokens=20000, dim=512, depth=6, heads=8, dim_head=64, media_token_id=3, cross_attn_every=3,
              perceiver_num_latents=256, perceiver_depth=2,
              vit=dict(image_size=224, patch_size=32, num_classes=1000, dim=512, depth=4, heads=8, mlp_dim=2048)),
    batch=2, prompt=16, new_tokens=20,
)
TINY = dict(
    arch=dict(num_tokens=100, dim=32, depth=3, heads=2, dim_head=16, media_token_id=3, cross_attn_every=3,
              perceiver_num_latents=8, perceiver_depth=1,
              vit=dict(image_size=16, patch_size=8, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64)),
    batch=2, prompt=6, new_tokens=4,
)


def build_pair(arch: dict, seed: int = 0):
    """A random FlamingoPaLM (tanh gates opened: zero gates would skip the cross-attention) and its conversion."""
    require_reference("flamingo_pytorch")
    torch.manual_seed(seed)
    ref = build_reference(arch).eval()
    with torch.no_grad():
        for _, xattn in ref.layers:
            if xattn is not None:
                xattn.attn_gate.fill_(0.7)
                xattn.ff_gate.fill_(0.5)
    return ref, convert(ref).eval()


@torch.no_grad()
def reference_greedy(ref, prompt: torch.Tensor, images: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Media encoded once, then `FlamingoPaLM.forward`'s decoder over the whole prefix at every step."""
    b = prompt.shape[0]
    embeds = ref.img_encoder(images.flatten(0, 1)).unflatten(0, (b, images.shape[1]))
    latents = ref.perceiver_resampler(embeds)
    out = prompt
    for _ in range(new_tokens):
        x = ref.token_emb(out)
        media_locations = out == ref.media_token_id
        for attn_ff, cross_attn in ref.layers:
            x = attn_ff(x)
            if cross_attn is not None:
                x = cross_attn(x, latents, media_locations=media_locations)
        next_token = ref.to_logits(x)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat((out, next_token), dim=1)
    return out


@torch.no_grad()
def reference_forward_greedy(ref, prompt, images, new_tokens: int) -> torch.Tensor:
    """The library as shipped: `forward(text, images=...)` per step (re-encodes the images every step)."""
    out = prompt
    for _ in range(new_tokens):
        out = torch.cat((out, ref(out, images=images)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return out


def run(tiny: bool, repeats: int, warmup: int) -> list[Result]:
    cfg = TINY if tiny else FULL
    ref, model = build_pair(cfg["arch"])
    arch = cfg["arch"]
    prompt = seeded_randint(arch["media_token_id"] + 1, arch["num_tokens"], (cfg["batch"], cfg["prompt"]), seed=2)
    prompt[:, 0] = arch["media_token_id"]
    size = arch["vit"]["image_size"]
    images = seeded_randn(cfg["batch"], 1, 3, size, size, seed=3)
    n = cfg["new_tokens"]

    def ours():
        return model.generate(input_ids=prompt, pixel_values=images, max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None,
                              suppress_tokens=[])  # plain argmax as the reference (hf_mm's default drops <image>/pad)

    expected = reference_greedy(ref, prompt, images, n)
    verified = check_tokens(expected, ours(), "Flamingo greedy")
    check_tokens(expected, reference_forward_greedy(ref, prompt, images, n), "flamingo-pytorch forward loop")

    @torch.no_grad()
    def ref_encode():  # what reference_greedy runs once before decoding
        ref.perceiver_resampler(ref.img_encoder(images.flatten(0, 1)).unflatten(0, images.shape[:2]))

    @torch.no_grad()
    def ours_encode():  # what generate() runs once before decoding
        model.model.get_media_latents(pixel_values=images)

    halfway = torch.cat((prompt, prompt[:, 1: 1 + n // 2]), dim=1)  # the prompt and half the new tokens
    floor = one_token_forward_fn(model, dict(input_ids=halfway, pixel_values=images), dict(input_ids=halfway[:, -1:]))
    times = interleaved_times(
        {"reference": lambda: reference_greedy(ref, prompt, images, n), "hf_mm": ours,
         "reference_forward": lambda: reference_forward_greedy(ref, prompt, images, n),
         "reference_encode": ref_encode, "hf_mm_encode": ours_encode, "hf_mm_step": floor},
        repeats, warmup,
        warmup_fns={"reference": lambda: reference_greedy(ref, prompt, images, 2),
                    "reference_forward": lambda: reference_forward_greedy(ref, prompt, images, 2)},
    )
    med = {k: median(v) for k, v in times.items()}
    label = "flamingo-pytorch FlamingoPaLM" + (" (tiny)" if tiny else "")
    case = f"greedy, {n} new tokens after a {cfg['prompt']}-token prompt, batch {cfg['batch']}"
    ref_decode, ours_decode = med["reference"] - med["reference_encode"], med["hf_mm"] - med["hf_mm_encode"]
    decode_only = Result(
        family="Flamingo", case=case + " (decode only)", reference=label + ", media encoded once",
        reference_s=ref_decode, hf_mm_s=ours_decode, target=None, verified=verified,
        short=f"Flamingo greedy\n{n} tokens, decode", details={
            "reference_encode_s": med["reference_encode"], "hf_mm_encode_s": med["hf_mm_encode"],
            **per_token_details(ref_decode, ours_decode, n, med["hf_mm_step"]),
            "note": "each side's media encoding (vision tower + perceiver, run once) subtracted, as for CoCa; "
                    "per token = decode-only time (prompt included) / new tokens"})
    return [Result(
        family="Flamingo", case=case,
        reference=label + ", media encoded once", reference_s=med["reference"], hf_mm_s=med["hf_mm"], target=8.0,
        verified=verified, short=f"Flamingo greedy\n{n} tokens",
        details={"reference_forward_per_step_s": med["reference_forward"],
                 "ratio_vs_forward_per_step": med["reference_forward"] / med["hf_mm"],
                 "media_tokens": arch["perceiver_num_latents"], "raw_times": times},
    ), decode_only]
