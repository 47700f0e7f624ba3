"""examples/train_coca.py: a few Trainer steps, evaluation, resume from checkpoint, loss weights, GA scaling."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_mm  # noqa: F401
from examples import train_coca
from examples.coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config
from examples.synthetic_shapes import caption_vocabulary, make_shapes_dataset
from hf_mm.models.coca import CocaModel

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--train-size", "32", "--eval-size", "8", "--batch-size", "8", "--save-steps", "2", "--eval-steps", "2",
          "--logging-steps", "1"]


def losses(log_history):
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


def test_train_evaluate_and_resume(tmp_path):
    out = str(tmp_path / "run")
    first = train_coca.main(["--output-dir", out, "--max-steps", "2", *COMMON])
    assert math.isfinite(first["eval_loss"]) and (tmp_path / "run" / "checkpoint-2").is_dir()
    resumed = train_coca.main(["--output-dir", out, "--max-steps", "4", "--resume", *COMMON])
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert (tmp_path / "run" / "checkpoint-4").is_dir() and (tmp_path / "run" / "final" / "config.json").is_file()
    # the same 4 steps in one go log the same losses as 2 steps + resume
    straight = train_coca.main(["--output-dir", str(tmp_path / "straight"), "--max-steps", "4", *COMMON])
    assert losses(resumed["log_history"]) == pytest.approx(losses(straight["log_history"]), rel=1e-4)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "examples.train_coca", "--output-dir", str(tmp_path / "two"), "--batch-size", "8", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = [line for line in (proc.stdout + proc.stderr).splitlines() if "it/s]" not in line and "s/it]" not in line]
    assert proc.returncode == 0, "\n".join(log[-60:])
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert losses(two["log_history"]) == pytest.approx(losses(one["log_history"]), rel=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)
