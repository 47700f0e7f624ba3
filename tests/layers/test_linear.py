"""`hf_mm.layers.Linear`: the native few-row CPU kernel is a drop-in for nn.Linear (same results to fp32
rounding, batch- and thread-invariant bits), falls back cleanly, and loading re-aligns weights."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hf_mm.layers.linear as linear_module
from hf_mm.layers import Linear
from hf_mm.layers.linear import SKINNY_MAX_ROWS
from hf_mm.layers.native import load_skinny_linear
from hf_mm.modeling_utils import align_tensors
from tiny_models import build, generate_inputs


def _layer(in_features, out_features, bias=True, seed=0):
    torch.manual_seed(seed)
    return Linear(in_features, out_features, bias=bias)


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the calls that reach the native kernel."""
    calls = []
    original = linear_module.skinny_linear

    def spy(x, weight, bias):
        calls.append(tuple(x.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(linear_module, "skinny_linear", spy)
    return calls


@pytest.fixture
def fresh_kernel_loader():
    load_skinny_linear.cache_clear()
    yield
    load_skinny_linear.cache_clear()


def test_native_kernel_builds_on_this_machine():
    """The test machines have a C compiler: a missing kernel here means the build broke, not a skip."""
    assert load_skinny_linear() is not None


@pytest.mark.parametrize("in_features", [16, 48, 512, 1040])  # 1040: the long-K (interleaved) walk
@pytest.mark.parametrize("bias", [True, False])
def test_native_kernel_matches_float64_for_every_row_count_and_tail(in_features, bias, native_calls):
    for out_features in (1, 7, 8, 9, 100):
        layer = _layer(in_features, out_features, bias)
        for rows in (1, 2, 3, 4, 5, 8, 13, SKINNY_MAX_ROWS):
            x = torch.randn(rows, in_features)
            with torch.no_grad():
                out = layer(x)
            expected = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
            assert out.shape == (rows, out_features) and out.dtype == torch.float32 and out.is_contiguous()
            torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(native_calls) == 5 * 8


@pytest.mark.parametrize("shape", [(2, 3, 64), (4, 1, 64)])
def test_leading_dims_and_strided_inputs(shape, native_calls):
    layer = _layer(64, 96)
    x = torch.randn(*shape)
    strided = torch.randn(64, *shape[:-1]).movedim(0, -1)  # same shape, not contiguous
    assert not strided.is_contiguous()
    with torch.no_grad():
        for inp in (x, strided):
            torch.testing.assert_close(layer(inp), F.linear(inp, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert len(native_calls) == 2


def test_rows_do_not_depend_on_the_batch_or_the_thread_count():
    """Each output is summed in a fixed order: a sequence's logits do not change with who shares its batch."""
    layer = _layer(512, 300)
    x = torch.randn(SKINNY_MAX_ROWS, 512)
    threads = torch.get_num_threads()
    with torch.no_grad():
        full = layer(x)
        for rows in (1, 3, 4, 17):
            assert torch.equal(layer(x[:rows]), full[:rows])
        try:
            torch.set_num_threads(1)
            single = layer(x)
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(single, full)


@pytest.mark.parametrize("case", ["many rows", "autograd", "bfloat16", "in_features not a multiple of 16"])
def test_other_calls_take_torch(case, native_calls):
    layer = _layer(40 if case.startswith("in_features") else 32, 96)
    x = torch.randn(SKINNY_MAX_ROWS + 1 if case == "many rows" else 2, layer.in_features)
    if case == "bfloat16":
        layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.set_grad_enabled(case == "autograd"):
        out = layer(x)
    assert native_calls == []
    if case == "autograd":
        assert out.requires_grad
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_disabled_kernel_falls_back_to_torch(monkeypatch, fresh_kernel_loader):
    monkeypatch.setenv("HF_MM_NATIVE_KERNELS", "0")
    assert load_skinny_linear() is None
    layer, x = _layer(32, 96), torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_failed_build_warns_and_falls_back(monkeypatch, tmp_path, caplog, fresh_kernel_loader):
    monkeypatch.setenv("HF_MM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="hf_mm.layers.native"):
        assert load_skinny_linear() is None
    assert "kernel unavailable" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    layer, x = _layer(32, 96), torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_kernel_is_built_into_the_cache_folder(monkeypatch, tmp_path, fresh_kernel_loader):
    monkeypatch.setenv("HF_MM_KERNEL_CACHE", str(tmp_path))
    assert load_skinny_linear() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("skinny_linear-") and built[0].suffix == ".so"


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
    length = {} if family == "dalle" else dict(max_new_tokens=3)  # DALL-E always generates the whole image
    with torch.no_grad():
        ours = model.generate(**batch, **length, do_sample=False, output_scores=True, return_dict_in_generate=True)
        theirs = loaded.generate(**batch, **length, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.scores, theirs.scores):
        assert torch.equal(a, b)


def test_unusable_cache_folders_fall_back_to_torch(monkeypatch, tmp_path, caplog, fresh_kernel_loader):
    """A cache folder others can write to is never used: the kernel is loaded as code from it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("HF_MM_KERNEL_CACHE", str(shared))
    with caplog.at_level(logging.WARNING, logger="hf_mm.layers.native"):
        assert load_skinny_linear() is None
    assert "no writable private cache folder" in caplog.text and list(shared.iterdir()) == []
