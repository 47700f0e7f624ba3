"""What the Trainer examples (train_coca, train_x_clip, train_flamingo) share: the command line, the data, the
`TrainingArguments`, resume, evaluation and the metrics file; a word-level caption tokenizer and an image-caption
data collator.

A family script supplies only its model/processor builder, its collator and the names of its loss weights:

    args = training_parser(__doc__, LOSS_WEIGHTS).parse_args(argv)
    trainer = build_trainer(args, load_model_and_processor, make_collator, LOSS_WEIGHTS)
    return run_training(args, trainer)

Under torchrun every process runs the same script; `TrainingArguments` then selects gloo (CPU DDP).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .synthetic_shapes import make_shapes_dataset

SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0..3
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- tokenizer, data
def word_tokenizer(words: list[str], max_length: int = 32, extra_special_tokens: tuple[str, ...] = (),
                   padding_side: str = "right", tokenizer_class: type = PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer; `[BOS]` is prepended to every text, so `text=""` encodes to `[BOS]`.

    tokenizer_class: the fast tokenizer class that wraps it (and is saved as its `tokenizer_class`), e.g. x-clip's
        `XClipBackendTokenizer`, which truncates to `max_length` by default.

    Ids: `[PAD]` 0, `[BOS]` 1, `[EOS]` 2, `[UNK]` 3, then `extra_special_tokens` (kept whole, e.g. `<image>`),
    then `words`. `[EOS]` is not appended automatically (a prompt must not end in it): training texts carry it
    explicitly, see `ImageCaptionCollator`.
    """
    specials = SPECIAL_TOKENS + list(extra_special_tokens)
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in dict.fromkeys(words) if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # special tokens are matched whole before this runs
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", vocab["[BOS]"])]
    )
    return tokenizer_class(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
        additional_special_tokens=list(extra_special_tokens) or None, model_max_length=max_length,
        padding_side=padding_side,
    )


class ImageCaptionCollator:
    """Rows `{image_column: PIL, text_column: str}` -> the processor's tensors, plus `return_loss=True` and, with
    `labels=True`, `labels` (= `input_ids`, -100 at padding and at `ignore_token_ids`).

    text_template: how a caption becomes the model's text, e.g. `"{} [EOS]"` (the caption must end in EOS).
    images_per_text: pass `[[image], ...]` (one list per text, Flamingo) instead of `[image, ...]`.
    forward_kwargs: constant keyword arguments added to every batch, e.g. `{"freeze_image_encoder": True}`.
    """

    def __init__(self, processor, image_column: str = "image", text_column: str = "caption",
                 text_template: str = "{}", labels: bool = False, ignore_token_ids: tuple[int, ...] = (),
                 images_per_text: bool = False, forward_kwargs: dict | None = None):
        self.processor, self.image_column, self.text_column = processor, image_column, text_column
        self.text_template, self.labels, self.ignore_token_ids = text_template, labels, tuple(ignore_token_ids)
        self.images_per_text = images_per_text
        self.forward_kwargs = dict(forward_kwargs or {})

    def __call__(self, rows: list[dict]) -> dict:
        images = [row[self.image_column].convert("RGB") for row in rows]
        texts = [self.text_template.format(row[self.text_column]) for row in rows]
        batch = dict(self.processor(images=[[i] for i in images] if self.images_per_text else images, text=texts,
                                    return_tensors="pt"))
        if self.labels:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            for token_id in self.ignore_token_ids:
                labels = labels.masked_fill(batch["input_ids"] == token_id, IGNORE_INDEX)
            batch["labels"] = labels
        batch["return_loss"] = True
        batch.update(self.forward_kwargs)
        return batch


def load_datasets(args):
    """`--dataset` (a `DatasetDict` saved with `save_to_disk`: train + validation/test) or synthetic shapes."""
    if args.dataset:
        from datasets import load_from_disk

        data = load_from_disk(args.dataset)
        for split in ("validation", "test"):
            if split in data:
                return data["train"], data[split]
        raise ValueError(f"--dataset {args.dataset!r} needs a 'validation' or 'test' split, has {list(data)}")
    return (make_shapes_dataset(args.train_size, seed=args.seed),
            make_shapes_dataset(args.eval_size, seed=args.seed + 10_000))


# ------------------------------------------------------------------------------------------- command line, run
def json_object(text: str) -> dict:
    """argparse `type=` for a JSON object option (e.g. `--config-overrides`): anything else is a usage error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"use_mlm\": true}}', "
                                         f"got a JSON {type(value).__name__}: {text!r}")
    return value


def config_field_names(config_class) -> tuple[list[str], set[str]]:
    """-> (the class's own fields, in order; every field it accepts, the base `PreTrainedConfig` ones included)."""
    from transformers import PreTrainedConfig

    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    every = [f.name for f in dataclasses.fields(config_class)]
    return [name for name in every if name not in base], set(every)


def check_config_keys(keys, config_class, where: str) -> None:
    own, valid = config_field_names(config_class)
    unknown = [key for key in keys if key not in valid]
    if unknown:
        hints = [f"{key!r} (did you mean {difflib.get_close_matches(key, own, n=1)[0]!r}?)"
                 if difflib.get_close_matches(key, own, n=1) else repr(key) for key in unknown]
        raise ValueError(f"unknown {config_class.__name__} field(s) in {where}: {', '.join(hints)}; "
                         f"valid fields: {', '.join(own)}")


def merge_config_overrides(defaults: dict, overrides: dict, config_class, sub_configs: dict | None = None) -> dict:
    """`defaults` (the keyword arguments of `config_class`) updated with `overrides` (e.g. `--config-overrides`).

    Unknown keys raise a `ValueError` naming them and the valid fields. A dict override of a sub-config named in
    `sub_configs` (`{"text_config": XClipTextConfig, ...}`) is merged into its defaults (its keys checked against
    that class), so `{"text_config": {"num_hidden_layers": 1}}` keeps the vocabulary size and token ids; one that
    names a `model_type` replaces the sub-config whole (a different tower).
    """
    if not isinstance(overrides, dict):
        raise ValueError(f"config overrides must be a JSON object (dict), got {type(overrides).__name__}")
    check_config_keys(overrides, config_class, "--config-overrides")
    merged = dict(defaults)
    for key, value in overrides.items():
        sub_class = (sub_configs or {}).get(key)
        if sub_class is not None and isinstance(value, dict) and "model_type" not in value:
            check_config_keys(value, sub_class, f"--config-overrides {key}")
            merged[key] = {**(merged.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def training_parser(doc: str, loss_weights: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The options every example takes; `loss_weights` (config field names) become `--<name-with-dashes>`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--model", help="a saved model (directory or Hub id); default: a tiny one from scratch")
    parser.add_argument("--dataset", help="an image-caption DatasetDict saved with save_to_disk "
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
    for name in loss_weights:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"overrides config.{name}")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser


def apply_loss_weights(config, args, names: tuple[str, ...]) -> None:
    """Copy every `--<loss weight>` given on the command line onto `config`."""
    for name in names:
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
            setattr(config, name, value)


def training_arguments(args) -> TrainingArguments:
    """CPU `TrainingArguments` from the common options (gloo DDP when started by torchrun)."""
    return TrainingArguments(
        output_dir=args.output_dir, use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.logging_steps,
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.save_steps,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0, seed=args.seed,
        data_seed=args.seed,
    )


def build_trainer(args, load_model_and_processor, make_collator, loss_weights: tuple[str, ...] = ()) -> Trainer:
    """Seed, build `(model, processor)`, apply `--<loss weight>` options, and a Trainer on the datasets with
    `make_collator(processor, image_column, text_column)`."""
    torch.set_num_threads(args.threads)
    set_seed(args.seed)  # before the model is built: its random init must agree across processes
    model, processor = load_model_and_processor(args)
    apply_loss_weights(model.config, args, loss_weights)
    train_ds, eval_ds = load_datasets(args)
    return Trainer(model=model, args=training_arguments(args), train_dataset=train_ds, eval_dataset=eval_ds,
                   data_collator=make_collator(processor, args.image_column, args.text_column),
                   processing_class=processor)


def run_training(args, trainer: Trainer) -> dict:
    """Train (resuming from the last checkpoint with `--resume`), evaluate, save `final/` and `metrics.json`."""
    out = Path(args.output_dir)
    checkpoint = get_last_checkpoint(str(out)) if args.resume and out.is_dir() else None
    if args.resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint-* folder in --output-dir {args.output_dir!r}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train_loss": result.training_loss, **trainer.evaluate(),
               "log_history": trainer.state.log_history, "resumed_from": checkpoint,
               "world_size": trainer.args.world_size}
    trainer.save_model(str(out / "final"))  # every rank: it synchronises, rank 0 writes
    if trainer.is_world_process_zero():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        close_process_group()
    return metrics


def close_process_group() -> None:
    """Shut the gloo process group down while every rank is still here.

    Left to interpreter exit, a rank could abort after all its work was done ("terminate called without an
    active exception", SIGABRT). Destroying it right after a collective can deadlock instead: gloo's worker
    threads free finished work items (holding Python tensors) under the GIL, while the group's destructor
    joins those threads with the GIL held. The pause releases the GIL so the workers finish first.
    """
    torch.distributed.barrier()
    time.sleep(0.2)
    torch.distributed.destroy_process_group()
