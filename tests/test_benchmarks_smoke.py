"""The benchmark suite runs end to end on tiny models: every comparison's outputs verified identical, and the
JSON / Markdown / PNG report written. Timings are never asserted on (they are what the benchmarks report)."""

import json
import tempfile

import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.common import OutputMismatch, check_close, check_tokens

EXPECTED_ROWS = {"CoCa": 4, "Flamingo": 2, "DALL-E": 1, "CoCa training": 4}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    previous = torch.get_num_threads()
    try:
        bench_run.main(["--tiny", "--no-memory", "--threads", "1", "--output-dir", str(out)])
    finally:
        torch.set_num_threads(previous)
    return out


def test_report_files_written_with_every_benchmark_verified(tiny_run):
    payload = json.loads((tiny_run / "results.json").read_text())
    env = payload["environment"]
    assert env["cpu_count"] >= 1 and env["torch_threads"] == 1 and env["torch"] and env["transformers"]
    rows = payload["results"]
    counts = {family: sum(r["family"] == family for r in rows) for family in EXPECTED_ROWS}
    assert counts == EXPECTED_ROWS
    for row in rows:
        assert row["reference_s"] > 0 and row["hf_mm_s"] > 0
        assert row["ratio"] == pytest.approx(row["reference_s"] / row["hf_mm_s"], rel=1e-2)
        assert "equal" in row["verified"], row
    generation = [r for r in rows if r["family"] != "CoCa training"]
    assert all(r["verified"].startswith("tokens equal") for r in generation)
    training = [r for r in rows if r["family"] == "CoCa training"]
    assert all(r["details"]["gradient_max_abs_diff"] for r in training)
    coca = [r for r in rows if r["family"] == "CoCa"]
    assert {(r["details"]["num_beams"], r["details"]["new_tokens"]) for r in coca} == {(1, 3), (1, 6), (3, 3), (3, 6)}
    per_token = [r for r in generation if "hf_mm_one_token_forward_s" in r["details"]]
    assert sorted(r["family"] for r in per_token) == ["CoCa"] * 4 + ["DALL-E", "Flamingo"]
    for r in per_token:
        d = r["details"]
        assert d["hf_mm_one_token_forward_s"] > 0 and d["hf_mm_decode_per_token_s"] > 0, r
        assert d["hf_mm_decode_per_token_over_floor"] == pytest.approx(
            d["hf_mm_decode_per_token_s"] / d["hf_mm_one_token_forward_s"], rel=1e-6)

    markdown = (tiny_run / "results.md").read_text()
    assert "cache floor" in markdown
    main_table, floor_table = markdown.split("cache floor")
    assert main_table.count("\n| CoCa |") == 4 and "| DALL-E |" in main_table and "| Flamingo |" in main_table
    assert floor_table.count("\n| CoCa |") == 4 and "\n| Flamingo |" in floor_table and "\n| DALL-E |" in floor_table
    png = (tiny_run / "speedups.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_mismatching_outputs_refuse_to_report():
    a = torch.tensor([[1, 2, 3]])
    assert check_tokens(a, a.clone(), "same").startswith("tokens equal")
    with pytest.raises(OutputMismatch, match="1 tokens differ"):
        check_tokens(a, torch.tensor([[1, 2, 4]]), "changed")
    assert check_close(torch.ones(3), torch.ones(3) + 5e-5, "close") <= 1e-4
    with pytest.raises(OutputMismatch, match="max abs diff"):
        check_close(torch.ones(3), torch.ones(3) + 1e-3, "far")


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--only", "coca,nonsense"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--repeats", "0"])


def test_peak_memory_child_process_reports_rss():
    """The training benchmark's fresh-process memory measurement (the tiny hf_mm side, from saved weights)."""
    from benchmarks.training import TINY, build_coca_pytorch, convert_reference, measure_memory

    model = convert_reference("coca_pytorch", build_coca_pytorch(TINY))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        report = measure_memory("hf_mm", tmp, tiny=True, threads=1, steps=1)
    assert report["side"] == "hf_mm"
    assert report["peak_rss_mib"] >= report["rss_before_steps_mib"] > 50
    assert report["loss"] > 0



@pytest.mark.parametrize("argv, folder", [
    ([], "benchmarks/results"),
    (["--tiny"], "outputs/benchmarks-tiny"),
    (["--only", "dalle"], "outputs/benchmarks-partial"),
    (["--tiny", "--output-dir", "elsewhere"], "elsewhere"),
])
def test_only_a_full_run_writes_the_committed_results_by_default(argv, folder):
    """Smoke and partial runs must not overwrite benchmarks/results, which the README's tables quote."""
    out = bench_run.parse_args(argv).output_dir
    assert out == folder or out.endswith("/" + folder)
