"""The hf_mm demo: train a tiny CoCa from scratch on synthetic shapes, then use it through transformers pipelines.

    python -m examples.demo            # ~3 minutes on 2 CPU cores
    python -m examples.demo --quick    # a few steps, for tests

Steps: synthetic image-caption `datasets.Dataset` -> word-level tokenizer + `CocaProcessor` -> `Trainer` ->
`save_pretrained` -> reload with `AutoModel` / `AutoProcessor` -> zero-shot classification and captioning
through `pipeline(...)` -> `outputs/demo/{metrics.json, grid.png, loss.png}`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoProcessor,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)

import hf_mm  # noqa: E402,F401  (registers CoCa with the Auto classes)
from hf_mm.models.coca import CocaModel  # noqa: E402

from .coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config  # noqa: E402
from .synthetic_shapes import all_captions, caption_vocabulary, make_shapes_dataset  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--quick", action="store_true", help="tiny run (seconds) to check the plumbing")
    parser.add_argument("--train-size", type=int, default=3200)
    parser.add_argument("--eval-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.eval_size, args.epochs, args.batch_size = 32, 4, 1.0, 16
    return args


def train(args, out: Path):
    """Train the tiny CoCa with Trainer; returns (saved model dir, loss history)."""
    set_seed(args.seed)
    processor = caption_processor(caption_vocabulary(), image_size=args.image_size)
    model = CocaModel(tiny_coca_config(processor.tokenizer, image_size=args.image_size, hidden_size=args.hidden_size))
    train_ds = make_shapes_dataset(args.train_size, seed=args.seed, image_size=64)
    training_args = TrainingArguments(
        output_dir=str(out / "trainer"), use_cpu=True, per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.01, logging_steps=1 if args.quick else 5, save_strategy="no", report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, seed=args.seed, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                      data_collator=CocaCaptionCollator(processor), processing_class=processor)
    trainer.train()
    model_dir = out / "model"
    trainer.save_model(str(model_dir))  # save_pretrained of the model and of the processor
    processor.save_pretrained(str(model_dir))
    history = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return model_dir, history


def token_accuracy(prediction: str, reference: str) -> float:
    pred, ref = prediction.split(), reference.split()
    return sum(p == r for p, r in zip(pred, ref)) / max(len(ref), 1)


def evaluate(model_dir: Path, eval_ds, max_new_tokens: int = 12) -> tuple[dict, list[str]]:
    """Zero-shot accuracy and caption quality through the real pipelines on the saved model."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)  # reload check: the same class comes back
    assert isinstance(model, CocaModel), type(model)
    images, refs = [row["image"] for row in eval_ds], list(eval_ds["caption"])
    labels = all_captions()
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu")
    # the captions were trained ending in [EOS]; the template gives the contrastive text the same form
    template = "{} " + processor.tokenizer.eos_token
    zs = classifier(images, candidate_labels=labels, hypothesis_template=template)
    zero_shot = sum(r[0]["label"] == ref for r, ref in zip(zs, refs)) / len(refs)

    captioner = pipeline("image-text-to-text", model=str(model_dir), device="cpu")
    metrics = {"num_eval_images": len(refs), "zero_shot_num_labels": len(labels),
               "zero_shot_accuracy": zero_shot, "zero_shot_chance": 1 / len(labels)}
    captions = {}
    for name, kwargs in {"greedy": {}, "beam": {"num_beams": 3}}.items():
        outputs = captioner(images=images, text=[""] * len(images), max_new_tokens=max_new_tokens,
                            generate_kwargs=kwargs, return_full_text=False)
        preds = [(o[0] if isinstance(o, list) else o)["generated_text"].strip() for o in outputs]
        captions[name] = preds
        metrics[f"caption_exact_match_{name}"] = sum(p == r for p, r in zip(preds, refs)) / len(refs)
        metrics[f"caption_token_accuracy_{name}"] = sum(map(token_accuracy, preds, refs)) / len(refs)
    return metrics, captions


def plot_loss(history, path: Path):
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (2 x caption + contrastive)")
    ax.set_yscale("log")
    ax.set_title("tiny CoCa on synthetic shapes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_grid(images, refs, preds, path: Path, columns: int = 4, rows: int = 3):
    n = min(len(images), columns * rows)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 3.0), dpi=90, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i])
        ok = preds[i] == refs[i]
        words = preds[i].split()
        text = " ".join(words[:4]) + "\n" + " ".join(words[4:])
        ax.set_title(text, fontsize=8, color="darkgreen" if ok else "firebrick")
    fig.suptitle("greedy captions from pipeline('image-text-to-text') (green = exact match)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    start = time.time()
    model_dir, history = train(args, out)
    train_seconds = time.time() - start
    eval_ds = make_shapes_dataset(args.eval_size, seed=args.seed + 10_000, image_size=64)
    metrics, captions = evaluate(model_dir, eval_ds)
    metrics.update(train_seconds=round(train_seconds, 1), total_seconds=round(time.time() - start, 1),
                   train_examples=args.train_size, epochs=args.epochs, quick=args.quick,
                   final_train_loss=history[-1][1] if history else None)
    plot_loss(history, out / "loss.png")
    plot_grid(list(eval_ds["image"]), list(eval_ds["caption"]), captions["greedy"], out / "grid.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'grid.png'}, {out / 'loss.png'}; model in {model_dir}")
    return metrics


if __name__ == "__main__":
    main()
