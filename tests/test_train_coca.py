"""examples/train_coca.py: a few Trainer steps, evaluation, resume from checkpoint, loss weights, GA scaling."""

import pytest
import torch

import hf_mm  # noqa: F401
from examples import train_coca
from examples.coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config
from examples.synthetic_shapes import caption_vocabulary, make_shapes_dataset
from hf_mm.models.coca import CocaModel
from ecosystem_helpers import check_train_evaluate_and_resume, losses, torchrun

COMMON = ["--train-size", "32", "--eval-size", "8", "--batch-size", "8", "--eval-steps", "2", "--logging-steps", "1"]


def test_train_evaluate_and_resume(tmp_path):
    check_train_evaluate_and_resume(train_coca.main, tmp_path, COMMON)


def batch(n=8, seed=0):
    processor = caption_processor(caption_vocabulary(), image_size=32)
    data = make_shapes_dataset(n, seed=seed)
    return processor, CocaCaptionCollator(processor)([data[i] for i in range(n)])


def test_loss_weights_are_honoured():
    processor, inputs = batch()
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config(processor.tokenizer, hidden_size=32, layers=1)).eval()
    out = model(**inputs)
    model.config.caption_loss_weight, model.config.contrastive_loss_weight = 0.5, 3.0
    reweighted = model(**inputs)
    expected = 0.5 * out.caption_loss + 3.0 * out.contrastive_loss
    torch.testing.assert_close(reweighted.loss, expected)


def test_gradient_accumulation_scaling(tmp_path):
    """batch 8 x GA 1 and batch 4 x GA 2 log the same loss scale on the first step (mean, not sum)."""
    args = ["--train-size", "16", "--eval-size", "4", "--max-steps", "1", "--logging-steps", "1",
            "--contrastive-loss-weight", "0"]  # contrastive loss depends on batch composition
    one = train_coca.main(["--output-dir", str(tmp_path / "ga1"), "--batch-size", "8", *args])
    two = train_coca.main(["--output-dir", str(tmp_path / "ga2"), "--batch-size", "4",
                           "--gradient-accumulation-steps", "2", *args])
    # equal-length captions: the mean of the two half-batch means equals the full-batch mean
    assert losses(two["log_history"])[1] == pytest.approx(losses(one["log_history"])[1], rel=1e-3)


def test_torchrun_two_processes_match_one(tmp_path):
    """2 processes x batch 8 (gloo, torchrun) log the same losses as 1 process x batch 16."""
    # eval: 16 = 2 ranks x 8, so Accelerate's even_batches adds no duplicated (false-negative) pairs
    args = ["--train-size", "16", "--eval-size", "16", "--max-steps", "2", "--logging-steps", "1",
            "--save-steps", "2", "--eval-steps", "2"]
    one = train_coca.main(["--output-dir", str(tmp_path / "one"), "--batch-size", "16", *args])
    two = torchrun("examples.train_coca", ["--batch-size", "8", *args], tmp_path / "two")
    assert losses(two["log_history"]) == pytest.approx(losses(one["log_history"]), rel=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)


def _eos_counts(processor, batch):
    eos = processor.tokenizer.eos_token_id
    return [(row == eos).sum().item() for row in batch["input_ids"]]


def test_collator_ends_each_caption_with_one_eos():
    """The word tokenizer of the demo appends no EOS (the collator adds it); open_clip's CLIP tokenizer appends
    <end_of_text> itself (the collator used to add a second one)."""
    from hf_mm.models.coca import CocaProcessor

    rows = [dict(r) for r in make_shapes_dataset(2, seed=0)]
    rows[0]["caption"], rows[1]["caption"] = "a red circle", "a dog"
    words = caption_processor(caption_vocabulary(), image_size=32)
    assert words.tokenizer("a red")["input_ids"][-1] != words.tokenizer.eos_token_id  # the demo's: no EOS
    demo_batch = CocaCaptionCollator(words)(rows)
    ids = words.tokenizer(["a red circle [EOS]", "a dog [EOS]"], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(demo_batch["input_ids"], ids)  # unchanged: "{} [EOS]"
    assert _eos_counts(words, demo_batch) == [1, 1]

    clip = CocaProcessor.from_open_clip(image_size=32, context_length=16)
    batch = CocaCaptionCollator(clip)(rows)
    tokens = [clip.tokenizer.convert_ids_to_tokens(row) for row in batch["input_ids"].tolist()]
    assert tokens[0] == ["<start_of_text>", "a</w>", "red</w>", "circle</w>", "<end_of_text>"]
    assert tokens[1][:4] == ["<start_of_text>", "a</w>", "dog</w>", "<end_of_text>"]
    assert _eos_counts(clip, batch) == [1, 1]
    assert batch["labels"][1].tolist() == [49406, 320, 1929, 49407, -100]
