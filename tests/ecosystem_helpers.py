"""What the ecosystem tests share (tests/test_train_*, test_pipelines_*, test_peft_*): logged losses, a resume
check, a real 2-process torchrun (gloo, CPU) launch of an example module, a saved model folder for pipelines,
and a few LoRA training steps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TIMEOUT_S = 300


def losses(log_history) -> dict[int, float]:
    """`{step: training loss}` from `trainer.state.log_history`."""
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


def check_train_evaluate_and_resume(main, tmp_path: Path, common: list[str]) -> dict:
    """2 steps, then resume to 4 steps: finite eval loss, checkpoints, `final/`, and the same logged losses as 4
    steps in one go (the resumed run restores model, optimiser, scheduler and data order; these configurations draw
    no random numbers in forward: with dropout, patch dropout or MLM masking the random stream after a mid-epoch
    resume differs from a straight run's); then 1 step of fine-tuning from `final/` with `--model`."""
    out = str(tmp_path / "run")
    first = main(["--output-dir", out, "--max-steps", "2", "--save-steps", "2", *common])
    assert math.isfinite(first["eval_loss"]) and (tmp_path / "run" / "checkpoint-2").is_dir()
    resumed = main(["--output-dir", out, "--max-steps", "4", "--save-steps", "2", "--resume", *common])
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert (tmp_path / "run" / "checkpoint-4").is_dir() and (tmp_path / "run" / "final" / "config.json").is_file()
    assert sorted(losses(resumed["log_history"])) == [1, 2, 3, 4]
    straight = main(["--output-dir", str(tmp_path / "straight"), "--max-steps", "4", "--save-steps", "4", *common])
    assert losses(resumed["log_history"]) == pytest.approx(losses(straight["log_history"]), rel=1e-4)
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], rel=1e-4)
    # fine-tuning starts from the saved folder (model + processor through the Auto classes)
    tuned = main(["--output-dir", str(tmp_path / "tuned"), "--model", str(tmp_path / "run" / "final"),
                  "--max-steps", "1", "--save-steps", "1", *common])
    assert math.isfinite(tuned["eval_loss"]) and (tmp_path / "tuned" / "final" / "config.json").is_file()
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        main(["--output-dir", str(tmp_path / "empty"), "--max-steps", "1", "--resume", *common])
    return resumed


def torchrun(module: str, args: list[str], output_dir: Path, nproc: int = 2) -> dict:
    """`torchrun --standalone --nproc_per_node nproc -m module --output-dir output_dir *args` on CPU (gloo);
    returns the `metrics.json` it wrote. On failure the assertion shows the launcher's log (no progress bars)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", module, "--output-dir", str(output_dir), *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        log = ((exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or "") + \
              ((exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else exc.stderr or "")
        pytest.fail(f"torchrun {module} timed out after {TORCHRUN_TIMEOUT_S} s:\n{_tail(log)}")
    assert proc.returncode == 0, f"torchrun {module} exited with {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}"
    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    assert metrics["world_size"] == nproc, metrics["world_size"]
    return metrics


def _tail(log: str, lines: int = 80) -> str:
    kept = [line for line in log.splitlines() if "it/s]" not in line and "s/it]" not in line]
    return "\n".join(kept[-lines:])


def saved_model_dir(path: Path, model, processor) -> Path:
    """`model` (in eval mode) and `processor` saved together in `path`, as a pipeline loads them."""
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def train_adapters(peft_model, batch: dict, steps: int = 4, lr: float = 1e-2) -> tuple[float, float]:
    """`steps` AdamW steps on the trainable (adapter) parameters; returns the loss before and after."""
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    with torch.no_grad():
        first = peft_model(**batch).loss.item()
    for _ in range(steps):
        peft_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        last = peft_model(**batch).loss.item()
    return first, last


def base_weights(peft_model) -> dict:
    """The wrapped model's own state dict (names as before wrapping), adapters left out."""
    return {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in peft_model.state_dict().items() if "lora_" not in k}
