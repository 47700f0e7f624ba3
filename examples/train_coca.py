"""Fine-tune (or train) CoCa with `datasets` + a data collator + `Trainer`: caption + contrastive losses.

One process:     python -m examples.train_coca --output-dir runs/coca --max-steps 200
Two processes:   torchrun --nproc_per_node 2 -m examples.train_coca --output-dir runs/coca --max-steps 200
Resume:          ... --resume            (from the last checkpoint in --output-dir)

The loss is `config.caption_loss_weight * caption + config.contrastive_loss_weight * contrastive`
(override with --caption-loss-weight / --contrastive-loss-weight). `CocaModel.accepts_loss_kwargs = False`,
so Trainer averages the per-micro-batch mean loss over gradient-accumulation steps itself. Under DDP every
process gathers all processes' embeddings (autograd-aware) for the contrastive loss and DDP averages the
gradients, so 2 processes x batch b train like 1 process x batch 2b. For an exact contrastive eval_loss,
make the eval set a multiple of processes x batch size: Accelerate pads the last eval batches by repeating
examples (`even_batches`), and a repeated example is a false negative for the contrastive loss.
Without --model, a tiny CoCa is trained from scratch on the synthetic shapes data (examples/synthetic_shapes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

import hf_mm  # noqa: F401  (registers CoCa with the Auto classes)
from hf_mm.models.coca import CocaModel

from .coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config
from .synthetic_shapes import caption_vocabulary, make_shapes_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a saved CoCa (directory or Hub id); default: a tiny CoCa from scratch")
    parser.add_argument("--dataset", help="an image-caption dataset saved with Dataset.save_to_disk "
                                          "(columns --image-column/--text-column); default: synthetic shapes")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="caption")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-size", type=int, default=512, help="synthetic data only")
    parser.add_argument("--eval-size", type=int, default=64, help="synthetic data only")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--caption-loss-weight", type=float)
    parser.add_argument("--contrastive-loss-weight", type=float)
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser.parse_args(argv)


def load_model_and_processor(args):
    if args.model:
        return AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    return CocaModel(tiny_coca_config(processor.tokenizer)), processor


def load_datasets(args):
    if args.dataset:
        from datasets import load_from_disk

        data = load_from_disk(args.dataset)
        return data["train"], data["validation"] if "validation" in data else data["test"]
    return (make_shapes_dataset(args.train_size, seed=args.seed),
            make_shapes_dataset(args.eval_size, seed=args.seed + 10_000))


def build_trainer(args) -> Trainer:
    set_seed(args.seed)
    model, processor = load_model_and_processor(args)
    if args.caption_loss_weight is not None:
        model.config.caption_loss_weight = args.caption_loss_weight
    if args.contrastive_loss_weight is not None:
        model.config.contrastive_loss_weight = args.contrastive_loss_weight
    train_ds, eval_ds = load_datasets(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir, use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,  # torchrun on CPU
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.logging_steps,
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.save_steps,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, seed=args.seed,
        data_seed=args.seed,
    )
    return Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                   data_collator=CocaCaptionCollator(processor, args.image_column, args.text_column),
                   processing_class=processor)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = build_trainer(args)
    checkpoint = get_last_checkpoint(args.output_dir) if args.resume and Path(args.output_dir).is_dir() else None
    if args.resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint-* folder in --output-dir {args.output_dir!r}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train_loss": result.training_loss, **trainer.evaluate(),
               "log_history": trainer.state.log_history, "resumed_from": checkpoint}
    trainer.save_model(str(Path(args.output_dir) / "final"))  # every rank: it synchronises, rank 0 writes
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


if __name__ == "__main__":
    main()
