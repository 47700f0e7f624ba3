"""`hf_mm.layers.Linear`: the few-row CPU kernel is an exact drop-in for nn.Linear, and loading re-aligns weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_mm.layers import Linear
from hf_mm.layers.linear import SKINNY_MAX_ROWS
from hf_mm.modeling_utils import align_tensors
from tiny_models import build, generate_inputs


def _layer(in_features, out_features, bias=True, seed=0):
    torch.manual_seed(seed)
    return Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 32), (4, 32), (2, 3, 32), (4, 1, 32), (2, 4, 32)])
def test_few_rows_use_weight_as_left_operand_and_match_f_linear(shape, bias):
    layer = _layer(32, 96, bias)
    x = torch.randn(*shape)
    out = layer(x)
    rows = x.reshape(-1, 32)
    expected_kernel = torch.mm(layer.weight, rows.t()).t()
    if bias:
        expected_kernel = expected_kernel + layer.bias
    assert out.shape == (*shape[:-1], 96)
    assert out.is_contiguous()  # a strided result would push SDPA off its fused kernel
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.reshape(-1, 96), expected_kernel, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["many rows", "down projection", "bfloat16"])
def test_other_calls_are_exactly_nn_linear(case):
    layer = _layer(96, 32) if case == "down projection" else _layer(32, 96)
    x = torch.randn(SKINNY_MAX_ROWS + 1 if case == "many rows" else 2, layer.in_features)
    if case == "bfloat16":
        layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_is_an_nn_linear_with_the_same_state_dict_and_gradients():
    layer, plain = _layer(32, 64), nn.Linear(32, 64)
    plain.load_state_dict(layer.state_dict())
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 32, requires_grad=True)
    layer(x).square().sum().backward()
    grads = layer.weight.grad, layer.bias.grad, x.grad
    x.grad = None
    plain(x).square().sum().backward()
    for ours, theirs in zip(grads, (plain.weight.grad, plain.bias.grad, x.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_align_tensors_copies_misaligned_tensors_and_keeps_ties():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight
    storage = torch.zeros(10 * 8 + 1)
    misaligned = storage[1:].view(10, 8)  # 4 bytes past an aligned allocation
    misaligned.copy_(model[0].weight.detach())
    model[0].weight.data = misaligned
    assert model[0].weight.data_ptr() % 64
    align_tensors(model)
    assert model[0].weight.data_ptr() % 64 == 0
    assert model[1].weight is model[0].weight
    assert torch.equal(model[0].weight, misaligned)


@pytest.mark.parametrize("family", ["coca", "flamingo", "dalle"])
def test_loaded_model_generates_exactly_like_the_one_built_in_memory(tmp_path, family):
    """Loaded weights are memory-mapped at 8-byte offsets; without re-alignment the few-row kernel's last
    bits would differ between a model and its saved copy."""
    model = build(family).eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())
    batch = generate_inputs(family, model, batch=2)
    with torch.no_grad():
        ours = model.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                              return_dict_in_generate=True)
        theirs = loaded.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.scores, theirs.scores):
        assert torch.equal(a, b)
