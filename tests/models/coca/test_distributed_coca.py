"""CoCa's contrastive loss on 2 gloo processes (batches 3 + 5) equals one process on all 8 samples."""

from pathlib import Path

from distributed_check import check_distributed_equivalence


def test_contrastive_loss_and_gradients_match_single_process():
    report = check_distributed_equivalence(str(Path(__file__).with_name("distributed_cases_coca.py")),
                                           ["contrastive"], sizes=(3, 5), tol=1e-5)
    assert set(report) == {"contrastive"}
