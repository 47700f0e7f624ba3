"""CoCa training step (forward + backward of the CoCa loss): hf_mm vs open_clip and vs coca-pytorch.

Each hf_mm model is converted from the reference it is timed against (equal architecture, equal weights),
both run in train mode on the same batch, and the losses are checked equal (|diff| <= 1e-4) with a few
gradients compared too before anything is timed. A step is `loss.backward()` then `zero_grad(set_to_none=True)`
(no optimizer), so both sides allocate and free their gradients the same way.

Peak memory is measured for each side alone in a fresh subprocess (`python -m benchmarks.training
--memory-child SPEC`), so that one model's allocations never confound the other's: the child builds its model,
loads the same weights, reads every parameter once (memory-mapped safetensors become resident), resets the
kernel's peak-RSS counter (`/proc/self/clear_refs` = 5) and reports VmHWM (peak resident set size) over two
training steps, together with the RSS before them (model + inputs).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from conversion.coca_pytorch import convert as convert_coca_pytorch
from conversion.open_clip_coca import convert as convert_open_clip
from hf_mm.models.coca import CocaModel

from .coca_generation import TINY_OPEN_CLIP
from .common import (REPO_ROOT, Result, check_close, interleaved_times, log, median, require_reference, seeded_randint,
                     seeded_randn)

FULL = dict(batch=8, text_len=76, open_clip="coca_ViT-B-32",
            coca_pytorch=dict(dim=512, num_tokens=49408, unimodal_depth=12, multimodal_depth=12, dim_head=64, heads=8,
                              num_img_queries=256, image_dim=768),
            vit=dict(image_size=224, patch_size=32, num_classes=1000, dim=768, depth=12, heads=12, mlp_dim=3072,
                     dim_head=64),
            caption_lengths=(12, 15, 9, 20, 14, 11, 17, 13))  # COCO-like captions in open_clip's 76-token context
TINY = dict(batch=4, text_len=12, open_clip=None, caption_lengths=(5, 7, 3, 9),
            coca_pytorch=dict(dim=32, num_tokens=100, unimodal_depth=1, multimodal_depth=1, dim_head=16, heads=2,
                              num_img_queries=4, image_dim=48),
            vit=dict(image_size=32, patch_size=8, num_classes=10, dim=48, depth=1, heads=2, mlp_dim=96, dim_head=24))
OPEN_CLIP_LOSS_WEIGHTS = dict(caption_loss_weight=2.0, contrastive_loss_weight=1.0)  # open_clip's training defaults


# -- building ------------------------------------------------------------------------------------------
def build_open_clip(cfg: dict, seed: int = 0):
    require_reference("open_clip")
    torch.manual_seed(seed)
    if cfg["open_clip"] is None:
        ref = require_reference("open_clip.coca_model").CoCa(**TINY_OPEN_CLIP)
    else:
        ref = require_reference("open_clip").create_model(cfg["open_clip"])
    width = ref.text_decoder.ln_final.normalized_shape[0]
    torch.nn.init.normal_(ref.text_decoder.text_projection, std=width**-0.5)  # open_clip leaves it torch.empty
    return ref.train()


def build_coca_pytorch(cfg: dict, seed: int = 0):
    coca_pytorch = require_reference("coca_pytorch")
    vit_pytorch = require_reference("vit_pytorch")
    extractor = require_reference("vit_pytorch.extractor").Extractor
    torch.manual_seed(seed)
    vit = extractor(vit_pytorch.ViT(**cfg["vit"]), return_embeddings_only=True, detach=False)
    return coca_pytorch.CoCa(img_encoder=vit, **cfg["coca_pytorch"]).train()


def convert_reference(kind: str, ref):
    if kind == "open_clip":
        return convert_open_clip(ref, bos_token_id=1, eos_token_id=2, **OPEN_CLIP_LOSS_WEIGHTS).train()
    return convert_coca_pytorch(ref, bos_token_id=1, eos_token_id=2).train()


def inputs(cfg: dict, image_size: int, vocab: int, captions: bool = False):
    """Images `(b, 3, H, W)` and right-padded text `(b, text_len)` (pad 0): row i has 5 * i pads, or with
    `captions` the real tokens of `cfg["caption_lengths"]` (short captions padded to the full context)."""
    b, n = cfg["batch"], cfg["text_len"]
    images = seeded_randn(b, 3, image_size, image_size, seed=5)
    text = seeded_randint(3, vocab, (b, n), seed=6)
    for row in range(b):
        pads = n - cfg["caption_lengths"][row % len(cfg["caption_lengths"])] if captions else min(5 * row, n - 2)
        if pads:
            text[row, n - pads:] = 0
    return images, text


# -- one training step per side ---------------------------------------------------------------------
def training_step(module, loss_of):
    """`step(keep_grads=False)`: forward + backward of `loss_of()`, then free the gradients (unless kept)."""

    def step(keep_grads: bool = False) -> torch.Tensor:
        loss = loss_of()
        loss.backward()
        if not keep_grads:
            module.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def open_clip_step(ref, images, text):
    loss_fn = require_reference("open_clip.loss").CoCaLoss(
        caption_loss_weight=OPEN_CLIP_LOSS_WEIGHTS["caption_loss_weight"],
        clip_loss_weight=OPEN_CLIP_LOSS_WEIGHTS["contrastive_loss_weight"], pad_id=0)

    def loss_of():
        out = ref(images, text)
        clip_loss, caption_loss = loss_fn(out["image_features"], out["text_features"], out["logits"], out["labels"],
                                          out["logit_scale"])
        return clip_loss + caption_loss

    return training_step(ref, loss_of)


def coca_pytorch_step(ref, images, text):
    labels = torch.cat((text[:, 1:], torch.zeros_like(text[:, :1])), dim=1)  # pad (= ignore) after the last token
    return training_step(ref, lambda: ref(text, images=images, labels=labels, return_loss=True))


def hf_mm_step(model, images, text):
    mask = (text != 0).long()
    return training_step(
        model, lambda: model(input_ids=text, pixel_values=images, attention_mask=mask, return_loss=True).loss)


# gradients compared after one step: (reference parameter, hf_mm parameter, transform of the reference's)
GRADIENT_PAIRS = {
    "open_clip": [("text_decoder.text_projection", "lm_head.weight", lambda g: g.t()),
                  ("visual.conv1.weight", "vision_model.patch_embedding.proj.weight", None),
                  ("text.token_embedding.weight", "text_model.embed_tokens.weight", None)],
    "coca_pytorch": [("img_queries", "attn_pool.query", None),
                     ("img_encoder.vit.to_patch_embedding.2.weight", "vision_model.patch_embedding.proj.weight", None),
                     ("token_emb.weight", "text_model.embed_tokens.weight", None)],
}


def verify(kind: str, ref, model, ref_step, ours_step) -> tuple[str, dict]:
    """Loss equal within 1e-4; listed gradients equal within 1e-4 relative to their magnitude."""
    ref_loss, ours_loss = ref_step(keep_grads=True), ours_step(keep_grads=True)
    loss_diff = check_close(ref_loss, ours_loss, f"{kind} training loss")
    ref_params, our_params = dict(ref.named_parameters()), dict(model.named_parameters())
    grads = {}
    for src, dst, transform in GRADIENT_PAIRS[kind]:
        g_ref = ref_params[src].grad
        g_ref = transform(g_ref) if transform is not None else g_ref
        g_ours = our_params[dst].grad
        scale = max(1.0, g_ref.abs().max().item())
        grads[dst] = check_close(g_ref.reshape(g_ours.shape), g_ours, f"{kind} gradient of {dst}", 1e-4 * scale)
    ref.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    checks = {"loss": float(ref_loss), "gradient_max_abs_diff": grads}
    return f"loss diff {loss_diff:.1e}, {len(grads)} gradients equal", checks


# -- peak memory in a fresh process ----------------------------------------------------------------
def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec: dict) -> dict:
    """Build one side alone, load the shared weights, run `steps` training steps; peak RSS in MiB."""
    torch.set_num_threads(spec["threads"])
    cfg = TINY if spec["tiny"] else FULL
    side = spec["side"]
    if side == "hf_mm":
        model = CocaModel.from_pretrained(spec["weights"]).train()
        size = model.config.vision_config.image_size
        vocab = model.config.text_config.vocab_size
        images, text = inputs(cfg, size, vocab)
        step = hf_mm_step(model, images, text)
    else:
        ref = build_open_clip(cfg) if side == "open_clip" else build_coca_pytorch(cfg)
        ref.load_state_dict(torch.load(spec["weights"], weights_only=True))
        if side == "open_clip":
            images, text = inputs(cfg, ref.visual.image_size[0], ref.text.vocab_size)
            step = open_clip_step(ref, images, text)
        else:
            images, text = inputs(cfg, cfg["vit"]["image_size"], ref.token_emb.num_embeddings)
            step = coca_pytorch_step(ref, images, text)
    module = model if side == "hf_mm" else ref
    with torch.no_grad():  # page in memory-mapped weights so the baseline holds the whole model on both sides
        for param in module.parameters():
            param.sum()
    gc.collect()
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    loss = None
    for _ in range(spec["steps"]):
        loss = float(step())
    peak = _proc_status_kib("VmHWM")
    return {"side": side, "rss_before_steps_mib": before / 1024, "peak_rss_mib": peak / 1024,
            "peak_over_before_mib": (peak - before) / 1024, "loss": loss}


def measure_memory(side: str, weights: str, tiny: bool, threads: int, steps: int = 2) -> dict:
    spec = json.dumps(dict(side=side, weights=weights, tiny=tiny, threads=threads, steps=steps))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.training", "--memory-child", spec],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_details(kind: str, ref, model, tiny: bool, threads: int) -> dict:
    """Save both sides' weights, then measure each alone in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        ref_weights = str(Path(tmp) / "reference.pt")
        torch.save(ref.state_dict(), ref_weights)
        model.save_pretrained(Path(tmp) / "hf_mm")
        gc.collect()
        log(f"peak memory of {kind} and hf_mm, each in a fresh process")
        out = {"memory_reference": measure_memory(kind, ref_weights, tiny, threads),
               "memory_hf_mm": measure_memory("hf_mm", str(Path(tmp) / "hf_mm"), tiny, threads)}
    peaks = out["memory_hf_mm"]["peak_rss_mib"], out["memory_reference"]["peak_rss_mib"]
    out["peak_rss_ratio_hf_mm_over_reference"] = peaks[0] / peaks[1]
    return out


# -- the benchmark ----------------------------------------------------------------------------------
def run(tiny: bool, repeats: int, warmup: int, threads: int, memory: bool = True) -> list[Result]:
    cfg = TINY if tiny else FULL
    results = []
    for kind in ("open_clip", "coca_pytorch"):
        ref = build_open_clip(cfg) if kind == "open_clip" else build_coca_pytorch(cfg)
        model = convert_reference(kind, ref)
        size = model.config.vision_config.image_size
        images, text = inputs(cfg, size, model.config.text_config.vocab_size)
        ref_step = (open_clip_step if kind == "open_clip" else coca_pytorch_step)(ref, images, text)
        ours_step = hf_mm_step(model, images, text)
        log(f"training step vs {kind}")
        verified, checks = verify(kind, ref, model, ref_step, ours_step)
        times = interleaved_times({"reference": ref_step, "hf_mm": ours_step}, repeats, warmup)
        med = {k: median(v) for k, v in times.items()}
        details = {"batch": cfg["batch"], "text_tokens": cfg["text_len"], **checks, "raw_times": times,
                   "parameters_reference": sum(p.numel() for p in ref.parameters()),
                   "parameters_hf_mm": sum(p.numel() for p in model.parameters())}
        if memory:
            del ref_step, ours_step
            details.update(memory_details(kind, ref, model, tiny, threads))
            del ref, model
        label = (f"open_clip {cfg['open_clip']}" if kind == "open_clip" and not tiny else
                 "open_clip CoCa (tiny)" if kind == "open_clip" else
                 "coca-pytorch + vit-pytorch ViT-B/32" if not tiny else "coca-pytorch + vit-pytorch ViT (tiny)")
        results.append(Result(
            family="CoCa training", case=f"fwd+bwd step, batch {cfg['batch']}, {cfg['text_len']} text tokens",
            reference=label, reference_s=med["reference"], hf_mm_s=med["hf_mm"], target=1.2, verified=verified,
            unit="s/step", short=f"training step\nvs {kind.replace('_', '-')}", details=details,
        ))
        results.append(caption_length_result(kind, cfg, repeats, warmup, label, tiny))
    return results


def caption_length_result(kind: str, cfg: dict, repeats: int, warmup: int, label: str, tiny: bool) -> Result:
    """The same step on short captions padded to the full context (what open_clip's tokenizer produces for
    COCO-like text); time only (no peak-memory subprocesses)."""
    ref = build_open_clip(cfg) if kind == "open_clip" else build_coca_pytorch(cfg)
    model = convert_reference(kind, ref)
    images, text = inputs(cfg, model.config.vision_config.image_size, model.config.text_config.vocab_size,
                          captions=True)
    ref_step = (open_clip_step if kind == "open_clip" else coca_pytorch_step)(ref, images, text)
    ours_step = hf_mm_step(model, images, text)
    log(f"training step vs {kind}, short captions")
    verified, checks = verify(kind, ref, model, ref_step, ours_step)
    times = interleaved_times({"reference": ref_step, "hf_mm": ours_step}, repeats, warmup)
    lengths = cfg["caption_lengths"]
    return Result(
        family="CoCa training", reference=label, reference_s=median(times["reference"]),
        hf_mm_s=median(times["hf_mm"]), target=None, verified=verified, unit="s/step",
        case=f"fwd+bwd step, batch {cfg['batch']}, captions of {min(lengths)}-{max(lengths)} tokens padded to "
             f"{cfg['text_len']}",
        short=f"training, short\ncaptions vs {kind.replace('_', '-')}",
        details={"batch": cfg["batch"], "text_tokens": cfg["text_len"], "caption_lengths": list(lengths), **checks,
                 "raw_times": times},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="internal: peak-memory child process of the training benchmark")
    parser.add_argument("--memory-child", required=True, help="JSON spec: side, weights, tiny, threads, steps")
    args = parser.parse_args(argv)
    print(json.dumps(memory_child(json.loads(args.memory_child))))


if __name__ == "__main__":
    main()
