"""Hostile checkpoints: code-running pickles are refused, and a saved hf_mm model directory with missing,
unexpected or mis-shaped tensors, or a truncated / corrupt safetensors file, fails to load with an error listing
the problem: never a model with random weights that loads "successfully"."""

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import tiny_models as tm
from conversion.common import load_checkpoint
from hf_mm.modeling_utils import CheckpointCorruptError, CheckpointMismatchError


class WritesMarker:
    """Unpickling this object creates `path` (stands for arbitrary code execution)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "payload": WritesMarker(marker)}, path)
    return path


def test_the_malicious_pickle_really_runs_code_when_unpickled_unsafely(tmp_path):
    """Control for the tests below: without weights_only the payload does write its marker."""
    marker = tmp_path / "pwned"
    torch.load(malicious_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth"])
def test_conversion_loader_refuses_a_code_running_pickle(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(ValueError, match=r"refusing to load .*weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_conversion_loader_reads_plain_and_nested_state_dicts(tmp_path):
    weights = {"a.weight": torch.randn(3, 2), "b.bias": torch.randn(3)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "plain.pt")
    save_file(weights, str(tmp_path / "plain.safetensors"))
    for name in ("plain.pt", "plain.safetensors"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_from_pretrained_refuses_a_code_running_pytorch_model_bin(tmp_path):
    """A model folder with only a pickled `pytorch_model.bin` is loaded with weights_only=True (transformers)."""
    model = tm.build("coca")
    model.config.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["payload"] = WritesMarker(marker)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        type(model).from_pretrained(tmp_path)
    assert not marker.exists()


# ---- strict loading of saved hf_mm folders ------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`{family: (model, folder)}`: every family saved once with save_pretrained (safetensors)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for family in tm.FAMILIES:
        model = tm.build(family)
        model.save_pretrained(root / family)
        out[family] = (model, root / family)
    return out


def edited_copy(saved_dir: Path, tmp_path: Path, edit) -> Path:
    """Copy of a saved folder whose safetensors state dict went through `edit(state) -> state`."""
    target = tmp_path / "edited"
    target.mkdir()
    for file in saved_dir.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    weights = target / "model.safetensors"
    save_file(edit(load_file(str(weights))), str(weights), metadata={"format": "pt"})
    return target


def some_matrix(state: dict) -> str:
    """A weight matrix of the base model (a head is legitimately ignored when AutoModel loads the base model)."""
    return sorted(k for k, v in state.items() if v.ndim == 2 and not k.startswith("lm_head"))[0]


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_clean_folder_loads_with_nothing_missing_and_identical_outputs(saved, family):
    """Tied weights and non-persistent buffers (rotary frequencies, sin-cos positions) are rebuilt, not reported."""
    model, folder = saved[family]
    loaded, info = type(model).from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    with torch.no_grad():  # seeded: the dVAE forward draws a gumbel-softmax sample
        torch.manual_seed(0)
        expected = tm.main_output(family, model(**tm.inputs(family, model)))
        torch.manual_seed(0)
        got = tm.main_output(family, loaded.eval()(**tm.inputs(family, model)))
    assert torch.equal(expected, got)


# every kind of non-persistent buffer (not in checkpoints, so rebuilt after the meta-device build)
WITH_BUFFERS = {
    "x_clip rotary text": ("x_clip", dict(text_config={**tm.x_clip_config().text_config.to_dict(),
                                                      "position_embedding_type": "rotary"})),
    "x_clip visual SSL augmentation": ("x_clip", dict(use_visual_ssl=True)),
    "coca sin-cos vision": ("coca", dict(vision_config={**tm.coca_config().vision_config.to_dict(),
                                                       "position_embedding_type": "sincos2d", "class_token": False})),
    "coca rotary": ("coca_lucidrains", {}),
    "flamingo rotary": ("flamingo", {}),
}


@pytest.mark.parametrize("case", WITH_BUFFERS)
def test_non_persistent_buffers_are_rebuilt_after_loading(case, tmp_path):
    family, overrides = WITH_BUFFERS[case]
    model = tm.build(family, **overrides)
    transient = [name for name, module in model.named_modules() for buffer in module._non_persistent_buffers_set
                 if not name.startswith("text_model.language_model")]
    assert transient, f"{case}: the config builds no non-persistent buffer"
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    expected, got = dict(model.named_buffers()), dict(loaded.named_buffers())
    assert expected.keys() == got.keys()
    for name, buffer in expected.items():
        assert torch.equal(buffer, got[name]), f"{case}: buffer {name} differs after from_pretrained"
    if family == "x_clip" and overrides.get("use_visual_ssl"):
        model.train(), loaded.train()  # the visual SSL loss (it normalises with the buffers) runs in training
    batch = tm.inputs(family, model)
    with torch.no_grad():
        torch.manual_seed(0)
        want = model(**batch, return_loss=True).loss if model.training else tm.main_output(family, model(**batch))
        torch.manual_seed(0)
        have = loaded(**batch, return_loss=True).loss if model.training else tm.main_output(family, loaded(**batch))
    assert torch.isfinite(want).all() and torch.equal(want, have)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_missing_tensor_is_an_error_naming_it(saved, family, tmp_path):
    model, folder = saved[family]
    dropped = []

    def drop(state):
        dropped.append(some_matrix(state))
        del state[dropped[0]]
        return state

    folder = edited_copy(folder, tmp_path, drop)
    with pytest.raises(CheckpointMismatchError, match=re.escape(f"missing tensors: [{dropped[0]!r}]")):
        type(model).from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match="missing tensors"):  # through the Auto class as well
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_unexpected_tensor_is_an_error_naming_it(saved, family, tmp_path):
    model, folder = saved[family]

    def add(state):
        state["stray.weight"] = torch.zeros(3)
        return state

    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors: \['stray.weight'\]"):
        type(model).from_pretrained(edited_copy(folder, tmp_path, add))


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_wrong_shape_is_an_error_naming_key_and_shapes(saved, family, tmp_path):
    model, folder = saved[family]
    changed = []

    def reshape(state):
        key = some_matrix(state)
        changed.append((key, tuple(state[key].shape)))
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
        return state

    folder = edited_copy(folder, tmp_path, reshape)
    key, shape = changed[0]
    bigger = (shape[0] + 1, shape[1])
    expected = "wrong shapes: .*" + re.escape(f"{key} (checkpoint {bigger} vs model {shape})")
    with pytest.raises(CheckpointMismatchError, match=expected):
        type(model).from_pretrained(folder)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True re-initialises"):
        type(model).from_pretrained(folder, ignore_mismatched_sizes=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_is_an_error_naming_the_folder(saved, damage, tmp_path):
    model, folder = saved["coca"]
    target = edited_copy(folder, tmp_path, lambda state: state)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 8,
                         "empty": b""}[damage])
    with pytest.raises(CheckpointCorruptError, match=re.escape(str(target)) + ".*truncated or corrupt"):
        type(model).from_pretrained(target)


def test_strict_false_is_the_explicit_escape_hatch(saved, tmp_path):
    """A deliberate partial load still works, and transformers' loading info then lists what was missing."""
    model, folder = saved["x_clip"]
    key = []

    def drop(state):
        key.append(some_matrix(state))
        del state[key[0]]
        return state

    loaded, info = type(model).from_pretrained(edited_copy(folder, tmp_path, drop), strict=False,
                                               output_loading_info=True)
    assert key[0] in info["missing_keys"]
