"""One loaded model used from several threads (forward and generate, different inputs per thread) gives exactly
the results of sequential use: no state of a call is kept on the model (masks, media conditioning, freezing)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import tiny_models as tm

THREADS, CALLS = 4, 2


# 4 Python threads on a 2-core box: intra-op threads would only oversubscribe it.
pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def job_inputs(family: str, model, job: int) -> dict:
    """Different inputs (batch size and content) per job, so a call that reads another call's state shows."""
    return tm.inputs(family, model, batch=1 + job % 3, seed=job)


def run_forward(family: str, model, job: int) -> torch.Tensor:
    with torch.no_grad():
        torch.manual_seed(job)  # seeds the dVAE's gumbel sample; identical per job in both runs
        return tm.main_output(family, model(**job_inputs(family, model, job)))


def run_generate(family: str, model, job: int) -> torch.Tensor:
    batch = tm.generate_inputs(family, model, batch=1 + job % 3, seed=job)
    kwargs = dict(do_sample=False, num_beams=1 + job % 2)
    if family != "dalle":
        kwargs["max_new_tokens"] = 3
    return model.generate(**batch, **kwargs)


def in_threads(fn, jobs):
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(fn, jobs))


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_concurrent_forward_equals_sequential(family):
    model = tm.build(family)
    jobs = list(range(THREADS * CALLS))
    sequential = [run_forward(family, model, job) for job in jobs]
    threaded = in_threads(lambda job: run_forward(family, model, job), jobs)
    for job, (expected, got) in enumerate(zip(sequential, threaded)):
        if family == "dalle_vae":  # the gumbel sample draws from the global generator, shared by the threads
            assert got.shape == expected.shape and torch.isfinite(got).all()
        else:
            assert torch.equal(expected, got), f"job {job}"


@pytest.mark.parametrize("family", tm.GENERATIVE)
def test_concurrent_generate_equals_sequential(family):
    model = tm.build(family)
    jobs = list(range(THREADS))
    sequential = [run_generate(family, model, job) for job in jobs]
    threaded = in_threads(lambda job: run_generate(family, model, job), jobs)
    for job, (expected, got) in enumerate(zip(sequential, threaded)):
        assert torch.equal(expected, got), f"job {job}"


def test_forward_leaves_no_state_on_the_model():
    """After forward / generate, the modules hold exactly the attributes they had before (nothing cached on self),
    and no parameter's requires_grad changed (no freezing inside forward)."""
    for family in tm.FAMILIES:
        model = tm.build(family)
        before = {name: set(vars(module)) for name, module in model.named_modules()}
        grads = {name: p.requires_grad for name, p in model.named_parameters()}
        run_forward(family, model, 1)
        if family in tm.GENERATIVE:
            run_generate(family, model, 1)
        after = {name: set(vars(module)) for name, module in model.named_modules()}
        assert after == before, family
        assert grads == {name: p.requires_grad for name, p in model.named_parameters()}, family
