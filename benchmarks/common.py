"""Shared benchmark machinery: reference imports, interleaved timing, output checks, result records.

Every benchmark times hf_mm and a reference implementation *in the same process*, on the same converted
weights and the same inputs, and checks the outputs are identical (tokens equal, logits/losses within 1e-4)
before any number is reported. Timings are medians over repeats taken after a warm-up, with hf_mm and the
reference interleaved (and their order alternated) so background load affects both alike.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
TOL = 1e-4


def require_reference(name: str):
    """Import a reference library with the stand-ins for torchvision & co. (conversion/reference_imports.py)."""
    from conversion.reference_imports import require_reference as _require

    return _require(name)


@dataclass
class Sizes:
    """One benchmark's workload; `tiny` ones are for the CI smoke run."""

    tiny: bool
    repeats: int
    warmup: int = 1


@dataclass
class Result:
    """One row of the report: hf_mm vs a reference on one workload."""

    family: str
    case: str
    reference: str
    reference_s: float
    hf_mm_s: float
    target: float | None
    verified: str  # what was checked identical, e.g. "tokens equal" / "loss |diff| 3e-6"
    unit: str = "s"
    short: str = ""  # bar-chart label
    details: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.reference_s / self.hf_mm_s if self.hf_mm_s > 0 else float("inf")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ratio"] = round(self.ratio, 3)
        out["target_met"] = None if self.target is None else bool(self.ratio >= self.target)
        return out


class OutputMismatch(AssertionError):
    """hf_mm and the reference disagreed: the benchmark refuses to report a speed for different work."""


def check_tokens(reference: torch.Tensor, ours: torch.Tensor, what: str) -> str:
    if reference.shape != ours.shape or not torch.equal(reference, ours):
        diff = "shapes differ" if reference.shape != ours.shape else f"{int((reference != ours).sum())} tokens differ"
        raise OutputMismatch(f"{what}: hf_mm and reference tokens are not identical ({diff})")
    return f"tokens equal ({tuple(ours.shape)})"


def check_close(reference: torch.Tensor, ours: torch.Tensor, what: str, tol: float = TOL) -> float:
    diff = (reference.detach().float() - ours.detach().float()).abs().max().item()
    if not diff <= tol:
        raise OutputMismatch(f"{what}: max abs diff {diff:.3g} > {tol}")
    return diff


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                      warmup_fns: dict[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Run every callable `warmup` times, then `repeats` rounds in which each runs once, alternating the
    order each round. Returns the wall times (seconds) per name; a callable that returns a float has timed
    itself (it excludes its own setup, e.g. copying a cache) and that float is used instead."""
    warmup_fns = warmup_fns or {}
    for _ in range(warmup):
        for name, fn in fns.items():
            warmup_fns.get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            out = fns[name]()
            elapsed = time.perf_counter() - start
            times[name].append(out if isinstance(out, float) else elapsed)
    return times


def one_token_forward_fn(model, prefix: dict, step: dict) -> Callable[[], float]:
    """The cache floor: a callable timing one cached forward of `step` (one new token per row) after the model
    has run `prefix` (its inputs, with `use_cache=True`). Each call copies the prefix cache first (untimed) and
    returns the seconds of the forward alone, which `interleaved_times` then uses."""
    with torch.no_grad():
        cache = model(**prefix, use_cache=True).past_key_values

    def run() -> float:
        fresh = copy.deepcopy(cache)
        with torch.no_grad():
            start = time.perf_counter()
            model(**step, past_key_values=fresh, use_cache=True)
            return time.perf_counter() - start

    return run


def per_token_details(reference_decode_s: float, hf_mm_decode_s: float, new_tokens: int, floor_s: float) -> dict:
    """The per-token decode cost of both sides and hf_mm's against its one-token forward (the cache floor)."""
    return {"new_tokens": new_tokens, "reference_decode_per_token_s": reference_decode_s / new_tokens,
            "hf_mm_decode_per_token_s": hf_mm_decode_s / new_tokens, "hf_mm_one_token_forward_s": floor_s,
            "hf_mm_decode_per_token_over_floor": hf_mm_decode_s / new_tokens / floor_s}


def log(message: str) -> None:
    print(f"[benchmarks]   {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def environment(threads: int) -> dict:
    import transformers

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()} {platform.processor() or ''}".strip(),
        "load_average_at_start": load,
    }


def seeded_randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded_randint(low: int, high: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))
