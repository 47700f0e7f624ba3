"""Checks that a contrastive model trained on several CPU processes (gloo) is exact.

`check_distributed_equivalence(cases_file, case_names, sizes)` spawns `len(sizes)` processes. For each case
`cases_file` defines `make_model_<case>()` (seeded, deterministic) and `make_batch_<case>(n, seed)` (a dict of
forward kwargs whose tensors have the batch in dim 0, or tuples of such tensors) and `loss_<case>(model, batch)`.
Rank r takes its rows of the concatenated batch (uneven sizes allowed), computes the loss (which must gather
across processes itself) and backpropagates; gradients are averaged over ranks as DDP does. The result must
equal one process on the whole batch: same loss and every parameter gradient within `tol`.
Usable for any family (x-clip, CoCa): only the cases file differs.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _load(cases_file: str):
    spec = importlib.util.spec_from_file_location("distributed_cases", cases_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(batch: dict, start: int, stop: int) -> dict:
    def take(v):
        if torch.is_tensor(v):
            return v[start:stop]
        if isinstance(v, (tuple, list)):
            return type(v)(take(x) for x in v)
        return v

    return {k: take(v) for k, v in batch.items()}


def _run(cases, name, batch, world_size, rank, sizes):
    model = getattr(cases, f"make_model_{name}")()
    model.train()
    if world_size > 1:
        start = sum(sizes[:rank])
        batch = _rows(batch, start, start + sizes[rank])
    loss = getattr(cases, f"loss_{name}")(model, batch)
    loss.backward()
    grads = {}
    for pname, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if world_size > 1:
            dist.all_reduce(g)
            g = g / world_size
        grads[pname] = g.detach().clone()
    return loss.detach(), grads


def _worker(rank, world_size, init_file, cases_file, names, sizes, out_dir):
    import sys

    import reference_imports

    # a spawned child inherits sys.path with the stand-ins on it: pin transformers' torchvision probes first
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != str(reference_imports.STUBS_DIR)]
    reference_imports.enable_reference_imports()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cases = _load(cases_file)
        results = {}
        for name in names:
            batch = getattr(cases, f"make_batch_{name}")(sum(sizes), 0)
            results[name] = _run(cases, name, batch, world_size, rank, sizes)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def check_distributed_equivalence(cases_file: str, names: list[str], sizes=(3, 5), tol: float = 1e-5) -> dict:
    """Returns `{case: (loss_diff, max_grad_diff)}`; raises AssertionError beyond `tol`."""
    cases = _load(cases_file)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(len(sizes), os.path.join(tmp, "init"), cases_file, names, list(sizes), tmp),
                 nprocs=len(sizes), join=True)
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(len(sizes))]
    report = {}
    for name in names:
        batch = getattr(cases, f"make_batch_{name}")(sum(sizes), 0)
        loss, grads = _run(cases, name, batch, 1, 0, list(sizes))
        worst_loss, worst_grad = 0.0, 0.0
        for results in per_rank:
            rank_loss, rank_grads = results[name]
            worst_loss = max(worst_loss, (rank_loss - loss).abs().item())
            assert rank_grads.keys() == grads.keys()
            for pname, g in grads.items():
                worst_grad = max(worst_grad, (rank_grads[pname] - g).abs().max().item())
        nonzero = sum(int(g.abs().sum() > 0) for g in grads.values())
        assert nonzero > 0, f"{name}: no parameter received a gradient"
        assert worst_loss <= tol and worst_grad <= tol, f"{name}: loss diff {worst_loss:.2e}, grad diff {worst_grad:.2e}"
        report[name] = (worst_loss, worst_grad)
    return report
