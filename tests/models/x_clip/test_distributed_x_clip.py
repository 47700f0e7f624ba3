"""Contrastive learning across 2 real CPU processes (gloo) equals one process on the concatenated batch."""

from pathlib import Path

from distributed_check import check_distributed_equivalence

CASES = Path(__file__).with_name("distributed_cases_x_clip.py")


def test_two_processes_match_one_process_uneven_batches():
    names = ["default", "filip", "dcl", "filip_dcl_extra", "extra_simreg", "multiview", "filip_per_rank_padding"]
    report = check_distributed_equivalence(str(CASES), names, sizes=(3, 5), tol=1e-5)
    assert set(report) == set(names)
