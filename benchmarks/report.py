"""Write a benchmark run as JSON, a Markdown table and a bar chart of the speed-ups."""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import fields
from pathlib import Path

from .common import Result


def _fmt_s(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def markdown(results: list[Result], env: dict, settings: dict) -> str:
    lines = [
        f"hf_mm vs reference implementations, {env['date']}: {env['cpu_count']} cores "
        f"(torch threads {env['torch_threads']}), torch {env['torch']}, transformers {env['transformers']}; "
        f"median of {settings['repeats']} interleaved repeats after {settings['warmup']} warm-up"
        + (" (tiny smoke sizes)" if settings["tiny"] else "") + ".",
        "",
        "| family | workload | reference | reference time | hf_mm time | speed-up | target | outputs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        target = "" if r.target is None else f"{r.target:g}x {'met' if r.ratio >= r.target else 'missed'}"
        lines.append(f"| {r.family} | {r.case} | {r.reference} | {_fmt_s(r.reference_s)} | {_fmt_s(r.hf_mm_s)} | "
                     f"{r.ratio:.2f}x | {target} | {r.verified} |")
    per_token = [r for r in results if "hf_mm_one_token_forward_s" in r.details]
    if per_token:
        lines += ["", "Decode cost per new token (decode time / new tokens; CoCa and Flamingo without the image "
                  "encoding, DALL-E without the dVAE decode) against hf_mm's cache floor: one cached single-token "
                  "forward through the whole decoder and its output head, mid-sequence:", "",
                  "| family | workload | reference per token | hf_mm per token | hf_mm one-token forward | "
                  "hf_mm per token / floor |", "|---|---|---|---|---|---|"]
        for r in per_token:
            d = r.details
            lines.append(f"| {r.family} | {r.case} | {_fmt_s(d['reference_decode_per_token_s'])} | "
                         f"{_fmt_s(d['hf_mm_decode_per_token_s'])} | {_fmt_s(d['hf_mm_one_token_forward_s'])} | "
                         f"{d['hf_mm_decode_per_token_over_floor']:.2f} |")
    training = [r for r in results if "memory_hf_mm" in r.details]
    if training:
        lines += ["", "Training-step peak memory (peak RSS of each side alone in a fresh process, over 2 steps; "
                  "in brackets the growth above the RSS with model and batch loaded):", "",
                  "| reference | reference peak RSS | hf_mm peak RSS | hf_mm / reference |", "|---|---|---|---|"]
        for r in training:
            m_ref, m_ours = r.details["memory_reference"], r.details["memory_hf_mm"]
            lines.append(f"| {r.reference} | {m_ref['peak_rss_mib']:.0f} MiB (+{m_ref['peak_over_before_mib']:.0f}) | "
                         f"{m_ours['peak_rss_mib']:.0f} MiB (+{m_ours['peak_over_before_mib']:.0f}) | "
                         f"{r.details['peak_rss_ratio_hf_mm_over_reference']:.2f} |")
    return "\n".join(lines) + "\n"


def bar_chart(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.short or f"{r.family}\n{textwrap.shorten(r.case, 22)}" for r in results]
    ratios = [r.ratio for r in results]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(results)), 4.5))
    colors = ["tab:green" if r.target is None or r.ratio >= r.target else "tab:orange" for r in results]
    ax.bar(range(len(results)), ratios, color=colors)
    for i, r in enumerate(results):
        if r.target is not None:
            ax.plot([i - 0.4, i + 0.4], [r.target, r.target], color="black", linestyle="--", linewidth=1)
        ax.text(i, ratios[i], f"{ratios[i]:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("speed-up over the reference (x)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[Result], env: dict, settings: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md",
             "png": output_dir / "speedups.png"}
    payload = {"environment": env, "settings": settings, "results": [r.to_dict() for r in results]}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float) + "\n")
    paths["markdown"].write_text(markdown(results, env, settings))
    bar_chart(results, paths["png"], f"hf_mm speed-up (dashed: target), {env['cpu_count']} cores, "
              f"{env['torch_threads']} threads, {env['date']}")
    return paths


def load(path: Path) -> tuple[list[Result], dict, dict]:
    """Read a `results.json` back (to re-render the Markdown and the chart without re-running)."""
    payload = json.loads(Path(path).read_text())
    names = {f.name for f in fields(Result)}
    results = [Result(**{k: v for k, v in row.items() if k in names}) for row in payload["results"]]
    return results, payload["environment"], payload["settings"]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="re-render results.md and speedups.png from results.json files (several: merged, in order)")
    parser.add_argument("results_json", nargs="+")
    parser.add_argument("--output-dir", help="default: the folder of the first results.json")
    args = parser.parse_args(argv)
    results, env, settings = load(Path(args.results_json[0]))
    for extra in args.results_json[1:]:
        more, more_env, more_settings = load(Path(extra))
        results += more
        settings = {**settings, "benchmarks": settings["benchmarks"] + more_settings["benchmarks"],
                    "durations_s": {**settings.get("durations_s", {}), **more_settings.get("durations_s", {})},
                    "merged_runs": settings.get("merged_runs", [env]) + [more_env]}
    write(results, env, settings, Path(args.output_dir or Path(args.results_json[0]).parent))


if __name__ == "__main__":
    main()
