"""Run every benchmark and write `results.json`, `results.md` and `speedups.png`.

    python -m benchmarks.run                      # full sizes (README table), ~15-20 min on 2 cores
    python -m benchmarks.run --tiny --no-memory   # smoke sizes, seconds (what CI runs)
    python -m benchmarks.run --only coca,dalle --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from .common import OutputMismatch, environment

BENCHMARKS = ("coca", "flamingo", "dalle", "training")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and short runs (CI smoke test)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5, tiny 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per side")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the training peak-memory subprocesses")
    parser.add_argument("--output-dir", default=None,
                        help="default: benchmarks/results (the committed table) for a full run of every benchmark; "
                             "outputs/benchmarks-tiny for --tiny and outputs/benchmarks-partial for an --only subset, "
                             "so smoke and partial runs never overwrite it (merge partial runs with benchmarks.report)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; expected a subset of {list(BENCHMARKS)}")
    args.only = only
    if args.output_dir is None:
        root = Path(__file__).resolve().parent
        if args.tiny:
            args.output_dir = str(root.parent / "outputs" / "benchmarks-tiny")
        elif set(only) != set(BENCHMARKS):
            args.output_dir = str(root.parent / "outputs" / "benchmarks-partial")
        else:
            args.output_dir = str(root / "results")
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 5
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    settings = {"tiny": args.tiny, "repeats": args.repeats, "warmup": args.warmup, "benchmarks": args.only}
    from . import coca_generation, dalle_generation, flamingo_generation, report, training

    runners = {
        "coca": lambda: coca_generation.run(args.tiny, args.repeats, args.warmup),
        "flamingo": lambda: flamingo_generation.run(args.tiny, args.repeats, args.warmup),
        "dalle": lambda: dalle_generation.run(args.tiny, args.repeats, args.warmup),
        "training": lambda: training.run(args.tiny, args.repeats, args.warmup, args.threads, not args.no_memory),
    }
    results, durations = [], {}
    start = time.perf_counter()
    failures = {}
    for name in args.only:
        began = time.perf_counter()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        try:
            results += runners[name]()
        except OutputMismatch as err:
            failures[name] = f"outputs differ, no timing reported: {err}"
        except Exception as err:  # keep the other benchmarks' results; reported below and in the exit status
            failures[name] = f"{type(err).__name__}: {err}"
        durations[name] = round(time.perf_counter() - began, 1)
        settings["durations_s"] = {**durations, "total": round(time.perf_counter() - start, 1)}
        settings["failures"] = failures
        paths = report.write(results, env, settings, Path(args.output_dir))  # after each one: nothing is lost
    print(paths["markdown"].read_text())
    print(f"[benchmarks] wrote {', '.join(str(p) for p in paths.values())} in {settings['durations_s']['total']} s",
          file=sys.stderr)
    if failures:
        raise SystemExit("[benchmarks] failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return {"results": results, "paths": paths, "settings": settings}


if __name__ == "__main__":
    main()
