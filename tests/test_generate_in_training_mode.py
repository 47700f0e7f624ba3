"""generate() on a model left in training mode with gradient checkpointing: the checkpointed blocks cannot fill
a cache, so decoding must fall back to uncached steps (it used to feed only the newest token to blocks that had
dropped the cache, and returned wrong tokens with nothing but a warning)."""

import logging

import pytest
import torch

import tiny_models as tm


@pytest.mark.parametrize("family", ["coca", "coca_lucidrains", "flamingo", "open_flamingo", "dalle"])
def test_checkpointed_training_model_generates_the_eval_tokens(family, caplog):
    model = tm.build(family)
    batch = tm.generate_inputs(family, model)
    kwargs = dict(do_sample=False) if family == "dalle" else dict(do_sample=False, max_new_tokens=6)
    with torch.no_grad():
        expected = model.generate(**batch, **kwargs)
        model.train()
        model.activation_checkpointing_enable()
        with caplog.at_level(logging.WARNING, logger="hf_mm.modeling_utils"):
            got = model.generate(**batch, **kwargs)
    assert torch.equal(expected, got)
    assert "decodes without a cache" in caplog.text
