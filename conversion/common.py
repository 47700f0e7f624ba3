"""Helpers shared by every converter: exact key mapping, checkpoint loading, verification, saving."""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

_TENSOR_BARS: list = []  # progress-bar factories installed by `track_tensors`, innermost last


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
        self._bar = _TENSOR_BARS[-1](len(self.source)) if _TENSOR_BARS else None

    def take(self, key: str) -> torch.Tensor:
        if key not in self.source:
            raise UnmappedTensorsError(f"source checkpoint has no tensor {key!r}")
        if self._bar is not None and key not in self.used:
            self._bar.update(1)
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
        if self._bar is not None:
            self._bar.close()
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


def move_layernorm(conv: StateDictConverter, src: str, dst: str) -> None:
    """`nn.LayerNorm` weight and bias."""
    conv.move(f"{src}.weight", f"{dst}.weight")
    conv.move(f"{src}.bias", f"{dst}.bias")


@contextlib.contextmanager
def track_tensors(make_bar):
    """Inside the block, every `StateDictConverter` reports each source tensor it consumes to
    `make_bar(total)` (e.g. a tqdm bar): the CLI's per-tensor progress, without touching `convert()` signatures."""
    _TENSOR_BARS.append(make_bar)
    try:
        yield
    finally:
        _TENSOR_BARS.remove(make_bar)


def _one_line(err: Exception) -> str:
    """The gist of an exception on one line (torch.load's weights_only refusal spans a dozen lines)."""
    text = str(err)
    for line in text.splitlines():  # torch: "\tWeightsUnpickler error: Unsupported global: GLOBAL x.Y was not ..."
        if "WeightsUnpickler error:" in line:
            text = line.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0]
            break
    return " ".join(text.split()) or type(err).__name__


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """The object saved in a checkpoint file: a dict of tensors from safetensors, or whatever a pickle holds,
    loaded with `weights_only=True` (never arbitrary code). Raises FileNotFoundError, or ValueError (on one line)
    for a pickle that `weights_only` refuses or a corrupt file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=map_location)
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:  # pickle with code, or a corrupt file
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint loadable with weights_only=True "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from err


def state_dict_from(obj, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a loaded pickle: itself, or its "state_dict" / "model" / "module" entry, without the
    "module." prefix of DDP-wrapped models. Raises ValueError when it is not a dict of tensors."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not contain a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a pickle with `weights_only=True` (never arbitrary code)."""
    obj = read_checkpoint(path, map_location)
    if Path(path).suffix == ".safetensors":
        return obj
    return state_dict_from(obj, path)


def reference_import_error(module: str, distribution: str) -> str | None:
    """None when reference library `module` imports, else why not, for the console and the model card:
    "<distribution> is not installed", or "<distribution> <version> is installed but could not be imported (...)"."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        version = library_version(distribution)
        if version == "unknown":
            return f"{distribution} is not installed"
        return (f"{distribution} {version} is installed but could not be imported "
                f"({type(err).__name__}: {' '.join(str(err).split())})")
    return None


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"cannot compare outputs of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.float() - b.float()).abs().max().item()


def render_model_card(template: str, **fields) -> str:
    """Fill the `{{name}}` placeholders of a template from `model_cards/`. Raises ValueError when a placeholder
    is left unfilled or a field has no placeholder (a template that forgot, say, the parity figures)."""
    root = Path(__file__).resolve().parent.parent / "model_cards"
    text = (root / template).read_text()
    unused = sorted(name for name in fields if "{{" + name + "}}" not in text)
    if unused:
        raise ValueError(f"model card {template} has no placeholder for the fields {unused}")
    for name, value in fields.items():
        text = text.replace("{{" + name + "}}", str(value))
    left = re.findall(r"\{\{[^{}]*\}\}", text)
    if left:
        raise ValueError(f"model card {template} has unfilled fields: {left}")
    return text


def check_against_reference(reference: torch.nn.Module, state_dict: dict, name: str) -> None:
    """Raise `UnmappedTensorsError` listing every tensor the reference module expects but `state_dict` lacks,
    every tensor it holds that the reference does not have, and every shape mismatch."""
    expected = reference.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs reference {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    )
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing tensors: {missing}" if missing else "",
                 f"{len(unexpected)} unexpected tensors: {unexpected}" if unexpected else "",
                 f"shape mismatches: {shapes}" if shapes else ""]
        raise UnmappedTensorsError(
            f"{name} does not match the reference architecture; " + "; ".join(p for p in parts if p))


def load_reference_weights(reference: torch.nn.Module, checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load `checkpoint` into the freshly built reference module, strictly (see `check_against_reference`), and
    check that tensors the reference ties together (e.g. input and output embeddings) are equal in the checkpoint.
    Returns the state dict."""
    state_dict = load_checkpoint(checkpoint)
    check_against_reference(reference, state_dict, f"checkpoint {checkpoint}")
    reference.load_state_dict(state_dict, strict=True)
    loaded = reference.state_dict()  # tied parameters keep only one of their checkpoint tensors
    differ = sorted(k for k, v in state_dict.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype)))
    if differ:
        tied = {k: sorted(o for o in loaded if o != k and loaded[o].data_ptr() == loaded[k].data_ptr()) for k in differ}
        raise UnmappedTensorsError(f"checkpoint {checkpoint}: tensors the reference ties together differ: "
                                   + "; ".join(f"{k} vs {others}" for k, others in tied.items()))
    return state_dict


def convert_from_reference(progress, build_reference, checkpoint, convert, verify) -> tuple:
    """The pipeline of a source whose reference is rebuilt from code, one progress stage each: `build_reference()`,
    load `checkpoint` into it strictly, `convert(reference)` (per-tensor progress), `verify(reference, model)`.
    Returns `(reference, model, parity report)`."""
    with progress.stage("build reference"):
        reference = build_reference().eval()
    with progress.stage("load checkpoint"):
        load_reference_weights(reference, checkpoint)
    with progress.tensors():
        model = convert(reference)
    with progress.stage("verify"):
        report = verify(reference, model)
    return reference, model, report


def read_json_argument(value: str, name: str) -> dict:
    """A CLI argument holding a JSON object, given inline (`'{"dim": 512}'`) or as the path of a .json file."""
    text = value
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{name} must be a JSON object or the path of a JSON file; {value!r} is neither")
        text = path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{name} must be a JSON object of keyword arguments, got {type(obj).__name__}")
    return obj


def library_version(distribution: str) -> str:
    """Installed version of a pip distribution (for model cards), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Conversion:
    """What a source's `run(args, progress)` hands back to the CLI (`python -m conversion`).

    `parity` maps each verified output to its max abs difference against the reference (None: the reference
    library could not be imported, nothing was verified, and `not_verified` says why); `card_fields` fills the
    family-specific `{{...}}` fields of `model_cards/<family>.md` (`family` names the template: "dalle" or
    "dalle_vae" for the two kinds of DALL-E checkpoint); `notes` go to the console and the model card.
    """

    model: torch.nn.Module
    family: str
    source: str
    checkpoint: str
    parity: dict[str, float] | None
    processor: object | None = None
    card_fields: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    code_license: str = "MIT"
    not_verified: str | None = None


def load_tokenizer(path: str | os.PathLike, vocab_size: int | None = None):
    """A local tokenizer (a saved tokenizer folder, or a `tokenizer.json` file), never downloaded.
    Raises ValueError when it has more tokens than the model's `vocab_size`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        raise ValueError(f"--tokenizer must be a tokenizer folder or a tokenizer.json file, got {str(path)!r}")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(f"--tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {vocab_size}")
    return tokenizer


def adopt_special_token_ids(model, tokenizer) -> None:
    """Give the converted model the `--tokenizer`'s BOS / EOS ids (config, text config, generation config), so
    prompt-free captioning starts with its BOS and generation stops at its EOS."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            for config in {id(c): c for c in (model.config, model.config.get_text_config(), model.generation_config)}.values():
                setattr(config, name, value)


def normalisation_note(library: str) -> str:
    """Model-card note for references that do not record how their images were normalised."""
    return (f"{library} stores no image normalisation: the processor uses OpenAI CLIP's mean/std (`image_mean` / "
            "`image_std` in processor_config.json); change them if the checkpoint was trained otherwise.")


def square_image_processor(image_size: int, cls=None, **kwargs):
    """A PIL-backend CLIP-style image processor (resize shortest edge, centre crop, normalise) to `image_size`."""
    if cls is None:
        from transformers import CLIPImageProcessorPil as cls
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs)


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) the Hub model repo `repo_id` and upload `folder` to it. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload hf_mm conversion")
    return str(getattr(info, "commit_url", info))


def save_converted(model, output_dir, processor=None, card: str | None = None, report: dict | None = None,
                   push_to_hub_repo: str | None = None, private: bool = False, token: str | None = None) -> Path:
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
    if push_to_hub_repo:
        push_to_hub(out, push_to_hub_repo, private=private, token=token)
    return out
