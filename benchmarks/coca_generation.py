"""CoCa captioning: hf_mm `generate()` vs open_clip `coca_ViT-B-32`'s decode algorithm.

open_clip's `CoCa.generate()` does not run with transformers 5 (it imports `BeamSearchScorer`, removed in v5:
every `generation_type` fails with "Please install transformers", see docs/references.md 5f). Its algorithm is
reproduced here as a naive loop over the open_clip model's own modules, exactly as its generate() calls them:
the image is encoded once (`_encode_image`), then every step runs `model(image, prefix, image_latent=...,
image_embs=...)`, i.e. the text tower and the multimodal decoder (cross-attention K/V over the image tokens
included) over the whole prefix, and takes the last position's logits.

- greedy: argmax per step (what open_clip's top_k=1 sampling reduces to);
- beam search: standard beam search scored with summed log-probabilities (transformers' algorithm, which
  hf_mm's generate() runs). open_clip's own `_generate_beamsearch` defaults to 3 beam groups (diverse beam
  search, removed from transformers' core in v5) and adds raw logits rather than log-probabilities; the
  comparison uses one group and log-probabilities so the tokens can be checked equal. The per-step work
  (one full-prefix forward over batch x beams rows) is the same.

"Decode only" subtracts each side's own image encoding, timed alone: open_clip encodes the beam-expanded batch
(`batch x beams` images, as its `_generate_beamsearch` does), hf_mm each image once. The totals are in the JSON.

EOS is suppressed on both sides (open_clip's `MinLengthLogitsProcessor`, transformers' `min_new_tokens`), so
every run decodes exactly `new_tokens` tokens.
"""

from __future__ import annotations

import torch

from conversion.open_clip_coca import convert

from .common import (Result, check_tokens, interleaved_times, log, median, one_token_forward_fn, per_token_details,
                     require_reference, seeded_randn)

FULL = dict(model="coca_ViT-B-32", batch=4, new_tokens=(20, 60), beams=6)
TINY = dict(batch=2, new_tokens=(3, 6), beams=3)
TINY_OPEN_CLIP = dict(
    embed_dim=32,
    multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2),
    text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2, embed_cls=True, output_tokens=True),
    vision_cfg=dict(image_size=32, patch_size=8, width=48, head_width=24, layers=2, attentional_pool=True,
                    attn_pooler_heads=2, attn_pooler_queries=8, output_tokens=True),
)


def build_pair(tiny: bool, seed: int = 0):
    """A random open_clip CoCa (its uninitialised decoder projection filled in) and its hf_mm conversion."""
    open_clip = require_reference("open_clip")
    torch.manual_seed(seed)
    if tiny:
        ref = require_reference("open_clip.coca_model").CoCa(**TINY_OPEN_CLIP)
        sot, eos = 1, 2
    else:
        ref = open_clip.create_model(FULL["model"])
        sot, eos = 49406, 49407  # open_clip's tokenizer
    ref.eval()
    width = ref.text_decoder.ln_final.normalized_shape[0]
    torch.nn.init.normal_(ref.text_decoder.text_projection, std=width**-0.5)  # open_clip leaves it torch.empty
    model = convert(ref, bos_token_id=sot, eos_token_id=eos).eval()
    return ref, model, sot, eos


@torch.no_grad()
def reference_greedy(ref, images, sot: int, eos: int, new_tokens: int) -> torch.Tensor:
    image_latent, image_embs = ref._encode_image(images)
    out = torch.full((images.shape[0], 1), sot, dtype=torch.long)
    for _ in range(new_tokens):
        logits = ref(images, out, image_latent=image_latent, image_embs=image_embs, output_labels=False)["logits"][:, -1]
        logits[:, eos] = float("-inf")
        out = torch.cat((out, logits.argmax(-1, keepdim=True)), dim=1)
    return out


@torch.no_grad()
def reference_beam_search(ref, images, sot: int, eos: int, new_tokens: int, num_beams: int) -> torch.Tensor:
    """Beam search with a full-prefix recompute per step; returns the best beam per image `(b, 1 + new_tokens)`."""
    b = images.shape[0]
    images = images.repeat_interleave(num_beams, dim=0)
    image_latent, image_embs = ref._encode_image(images)
    ids = torch.full((b * num_beams, 1), sot, dtype=torch.long)
    scores = torch.full((b, num_beams), -1e9)
    scores[:, 0] = 0.0
    for _ in range(new_tokens):
        logits = ref(images, ids, image_latent=image_latent, image_embs=image_embs, output_labels=False)["logits"]
        log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)
        log_probs[:, eos] = float("-inf")
        vocab = log_probs.shape[-1]
        candidates = (log_probs.view(b, num_beams, vocab) + scores[:, :, None]).view(b, -1)
        scores, flat = candidates.topk(num_beams, dim=-1)
        beam = flat // vocab + torch.arange(b)[:, None] * num_beams
        ids = torch.cat((ids[beam.flatten()], (flat % vocab).reshape(-1, 1)), dim=1)
    return ids.view(b, num_beams, -1)[:, 0]


def _hf_generate(model, images, new_tokens: int, num_beams: int = 1) -> torch.Tensor:
    return model.generate(pixel_values=images, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, num_beams=num_beams, length_penalty=1.0, early_stopping=False)


def _cache_floor_fn(model, images, prefix_len: int, batch_rows: int):
    """One cached single-token forward (text tower + decoder + lm_head) after a `prefix_len` prefix; like
    generate(), the `batch_rows // b` beams of an image share its cross-attention K/V."""
    bos = model.config.text_config.bos_token_id
    prefix = torch.full((batch_rows, prefix_len), bos, dtype=torch.long)
    return one_token_forward_fn(
        model, dict(input_ids=prefix, pixel_values=images, sequences_per_image=batch_rows // images.shape[0]),
        dict(input_ids=prefix[:, :1]))


def run(tiny: bool, repeats: int, warmup: int) -> list[Result]:
    cfg = TINY if tiny else FULL
    ref, model, sot, eos = build_pair(tiny)
    size = model.config.vision_config.image_size
    images = seeded_randn(cfg["batch"], 3, size, size, seed=1)
    label = "open_clip CoCa (tiny)" if tiny else f"open_clip {FULL['model']}"
    results = []
    for mode, beams in (("greedy", 1), (f"beam{cfg['beams']}", cfg["beams"])):
        rows = cfg["batch"] * beams
        batch_images = images.repeat_interleave(beams, dim=0)
        for n in cfg["new_tokens"]:
            if beams == 1:
                ref_fn = lambda n=n: reference_greedy(ref, images, sot, eos, n)  # noqa: E731
            else:
                ref_fn = lambda n=n: reference_beam_search(ref, images, sot, eos, n, beams)  # noqa: E731
            ours_fn = lambda n=n, beams=beams: _hf_generate(model, images, n, beams)  # noqa: E731
            log(f"CoCa {mode}, {n} new tokens")
            verified = check_tokens(ref_fn(), ours_fn(), f"CoCa {mode} {n} tokens")

            def ref_encode(batch_images=batch_images):
                with torch.no_grad():
                    ref._encode_image(batch_images)

            def ours_encode():  # generate() encodes each image once; its beams share it
                with torch.no_grad():
                    model.pool_image(model.encode_image_tokens(pixel_values=images))

            fns = {"reference": ref_fn, "hf_mm": ours_fn, "reference_encode": ref_encode,
                   "hf_mm_encode": ours_encode, "hf_mm_step": _cache_floor_fn(model, images, 1 + n // 2, rows)}
            short = {"reference": (lambda: reference_greedy(ref, images, sot, eos, 2)) if beams == 1
                     else (lambda: reference_beam_search(ref, images, sot, eos, 2, beams))}
            times = interleaved_times(fns, repeats, warmup, warmup_fns=short)
            med = {k: median(v) for k, v in times.items()}
            ref_decode = med["reference"] - med["reference_encode"]
            ours_decode = med["hf_mm"] - med["hf_mm_encode"]
            results.append(Result(
                family="CoCa", case=f"{mode}, {n} new tokens (decode only)", reference=label,
                reference_s=ref_decode, hf_mm_s=ours_decode, target=10.0 if beams == 1 else 8.0,
                verified=verified, short=f"CoCa {mode}\n{n} tokens",
                details={
                    "batch": cfg["batch"], "num_beams": beams,
                    "reference_total_s": med["reference"], "hf_mm_total_s": med["hf_mm"],
                    "reference_encode_s": med["reference_encode"], "hf_mm_encode_s": med["hf_mm_encode"],
                    **per_token_details(ref_decode, ours_decode, n, med["hf_mm_step"]),
                    "raw_times": times,
                },
            ))
    return results
