"""Helpers shared by every converter: exact key mapping, checkpoint loading, verification, saving."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch


class UnmappedTensorsError(ValueError):
    """Raised when a conversion leaves source tensors unused or target tensors unfilled."""


class StateDictConverter:
    """Moves tensors from a source state dict into a target model, accounting for every key.

    Use `take(src_key)` / `put(dst_key, tensor)`; `check_buffer(src_key, expected)` consumes a reference
    buffer after verifying its value (zero LayerNorm betas, rotary `inv_freq`); `alias(src_key, same_as)`
    consumes a key that must be the very same tensor as another (tied or re-registered modules).
    `finish(model)` loads the result strictly and raises listing any unused source key or unfilled target key.
    """

    def __init__(self, source: dict[str, torch.Tensor]):
        self.source = dict(source)
        self.used: set[str] = set()
        self.target: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.source:
            raise UnmappedTensorsError(f"source checkpoint has no tensor {key!r}")
        self.used.add(key)
        return self.source[key]

    def has(self, key: str) -> bool:
        return key in self.source

    def keys_matching(self, pattern: str) -> list[str]:
        return sorted(k for k in self.source if re.fullmatch(pattern, k))

    def put(self, key: str, tensor: torch.Tensor) -> None:
        if key in self.target:
            raise UnmappedTensorsError(f"target tensor {key!r} written twice")
        self.target[key] = tensor.detach().clone()

    def move(self, src: str, dst: str, transform=None) -> None:
        tensor = self.take(src)
        self.put(dst, transform(tensor) if transform is not None else tensor)

    def check_buffer(self, key: str, expected: torch.Tensor, atol: float = 1e-6) -> None:
        tensor = self.take(key)
        if tensor.shape != expected.shape or not torch.allclose(tensor.float(), expected.float(), atol=atol):
            raise UnmappedTensorsError(
                f"source buffer {key!r} does not hold the value hf_mm recomputes (shape {tuple(tensor.shape)}); "
                "the checkpoint uses a variant this converter does not support"
            )

    def alias(self, key: str, same_as: str) -> None:
        a, b = self.take(key), self.source[same_as]
        if a.shape != b.shape or not torch.equal(a, b):
            raise UnmappedTensorsError(f"source tensor {key!r} was expected to equal {same_as!r}")

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        unused = sorted(set(self.source) - self.used)
        if unused:
            raise UnmappedTensorsError(f"{len(unused)} source tensors were not converted: {unused}")
        expected = model.state_dict()
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        missing = sorted(k for k in expected if k not in self.target and k not in tied)
        unexpected = sorted(k for k in self.target if k not in expected)
        if missing or unexpected:
            raise UnmappedTensorsError(f"target keys not filled: {missing}; keys hf_mm does not have: {unexpected}")
        wrong = [
            f"{k}: source {tuple(v.shape)} vs hf_mm {tuple(expected[k].shape)}"
            for k, v in self.target.items() if v.shape != expected[k].shape
        ]
        if wrong:
            raise UnmappedTensorsError(f"shape mismatches: {wrong}")
        model.load_state_dict(self.target, strict=False)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return model.eval()


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a pickle with `weights_only=True` (never arbitrary code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=map_location)
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:  # pickle with code, or a corrupt file
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint loadable with weights_only=True ({err})"
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not contain a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"cannot compare outputs of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.float() - b.float()).abs().max().item()


def render_model_card(template: str, **fields) -> str:
    """Fill `{{name}}` placeholders of a template from `model_cards/`."""
    root = Path(__file__).resolve().parent.parent / "model_cards"
    text = (root / template).read_text()
    for name, value in fields.items():
        text = text.replace("{{" + name + "}}", str(value))
    left = re.findall(r"\{\{(\w+)\}\}", text)
    if left:
        raise ValueError(f"model card {template} has unfilled fields: {left}")
    return text


def save_converted(model, output_dir, processor=None, card: str | None = None, report: dict | None = None,
                   push_to_hub: str | None = None, private: bool = False) -> Path:
    """`save_pretrained` the model (safetensors) and processor, write README.md and the parity report,
    and optionally upload the folder with huggingface_hub."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    if card is not None:
        (out / "README.md").write_text(card)
    if report is not None:
        (out / "conversion_report.json").write_text(json.dumps(report, indent=2))
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=push_to_hub, commit_message="Upload hf_mm conversion")
    return out
