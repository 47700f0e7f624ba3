"""Convert an original checkpoint into an hf_mm model folder, verify it against the reference, write a model
card, and optionally push the folder to the Hugging Face Hub.

    python -m conversion SOURCE --checkpoint CKPT --output-dir OUT [source options]
                         [--tokenizer TOK] [--push-to-hub REPO [--private] [--token TOKEN]]
    python -m conversion SOURCE --help      # the options of one source
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

# The one registry of sources: name -> (module, one-line description). A source module defines
# `add_arguments(parser)` (its own options; the common ones below are added for it) and
# `run(args, progress) -> conversion.common.Conversion`.
SOURCES: dict[str, tuple[str, str]] = {
    "open_clip_coca": ("conversion.open_clip_coca", "open_clip CoCa (--model coca_ViT-B-32, or --model-config)"),
    "coca_pytorch": ("conversion.coca_pytorch", "lucidrains coca-pytorch CoCa (+ optional vit-pytorch ViT)"),
    "x_clip": ("conversion.x_clip", "lucidrains x-clip CLIP with its built-in towers"),
    "flamingo_pytorch": ("conversion.flamingo_pytorch", "lucidrains flamingo-pytorch FlamingoPaLM + vit-pytorch ViT"),
    "dalle_pytorch": ("conversion.dalle_pytorch", "lucidrains DALLE-pytorch DALLE / DiscreteVAE checkpoints"),
    "open_flamingo": ("conversion.open_flamingo",
                      "OpenFlamingo checkpoint.pt + the LM folder (+ open_clip ViT weights)"),
}

STAGES = ("build reference", "load checkpoint", "convert", "verify", "model card", "save")


class Progress:
    """A tqdm bar over the conversion stages, and a nested per-tensor bar while tensors are converted.

    Sources wrap their steps in `with progress.stage("convert"): ...`; `progress.tensors()` makes every
    `StateDictConverter` created inside it report each source tensor it consumes.
    """

    def __init__(self, total: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.bar = tqdm(total=total, desc="conversion", unit="stage", disable=not enabled)

    @contextlib.contextmanager
    def stage(self, name: str):
        self.bar.set_postfix_str(name)
        yield
        self.bar.update(1)

    @contextlib.contextmanager
    def tensors(self):
        from .common import track_tensors

        def make_bar(total):
            return self._tqdm(total=total, desc="tensors", unit="tensor", leave=False, disable=not self.enabled)

        with self.stage("convert"), track_tensors(make_bar):
            yield

    def close(self):
        self.bar.close()


def _source_listing() -> str:
    width = max(map(len, SOURCES))
    rows = "\n".join(f"  {name:<{width}}  {description}" for name, (_, description) in SOURCES.items())
    return f"sources:\n{rows}\n\n`python -m conversion SOURCE --help` lists the options of one source."


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    common = parser.add_argument_group("common options")
    common.add_argument("--checkpoint", required=True,
                        help="original weights: .safetensors, or a torch pickle loaded with weights_only=True")
    common.add_argument("--output-dir", "--output", dest="output_dir", required=True,
                        help="folder to write (safetensors, config, processor files, README.md model card)")
    common.add_argument("--tokenizer", help="a local tokenizer (folder or tokenizer.json) for the processor files")
    common.add_argument("--model-name", help="title of the model card (default: the output folder's name)")
    common.add_argument("--license", default="other", help="license id for the model card metadata (default: other)")
    common.add_argument("--atol", type=float, default=1e-4,
                        help="fail when an output differs from the reference by more (default: 1e-4, fp32)")
    common.add_argument("--push-to-hub", metavar="REPO", help="upload the output folder to this Hub model repo")
    common.add_argument("--private", action="store_true", help="create the Hub repo as private")
    common.add_argument("--token", help="Hub token (default: the logged-in one / HF_TOKEN)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")


def _format(value: float) -> str:
    return f"{value:.2e}"


def _not_verified(result) -> str:
    """Why a conversion was not verified: the import error of its reference library."""
    return result.not_verified or f"{result.source} could not be imported"


def print_verification(result, atol: float, file=None) -> None:
    """The verification summary table: max abs diff of every output against the reference."""
    file = file or sys.stdout
    if result.parity is None:
        print(f"verification: not run ({_not_verified(result)})", file=file)
        return
    print(f"verification against {result.source} (fp32, random inputs, tolerance {atol:g}):", file=file)
    width = max(len("output"), *map(len, result.parity))
    print(f"  {'output':<{width}}  {'max abs diff':>12}  ok", file=file)
    for name, diff in result.parity.items():
        ok = "yes" if diff <= atol else "NO"
        print(f"  {name:<{width}}  {_format(diff):>12}  {ok}", file=file)


def _parity_markdown(result, atol: float) -> str:
    if result.parity is None:
        return (f"Not verified at conversion time: {_not_verified(result)}. Run the conversion again with the "
                "reference library importable to fill this section.")
    rows = "\n".join(f"| `{name}` | {_format(diff)} |" for name, diff in result.parity.items())
    return ("Max absolute difference between the original implementation and hf_mm on random inputs "
            f"(fp32, seed 0); the conversion fails above {atol:g}.\n\n| output | max abs diff |\n|---|---|\n{rows}")


def architecture_summary(model) -> str:
    """Markdown bullets: class, parameter count and the main sizes of the config and each sub-config."""
    from transformers import PretrainedConfig

    keys = ("vocab_size", "num_text_tokens", "num_tokens", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings", "text_seq_len",
            "image_size", "patch_size", "num_latents", "projection_dim")

    def sizes(cfg) -> str:
        return ", ".join(f"{k}={getattr(cfg, k)}" for k in keys if getattr(cfg, k, None) is not None)

    config = model.config
    lines = [f"- `{type(model).__name__}` (`model_type: {config.model_type}`), {model.num_parameters():,} parameters"]
    if sizes(config):
        lines.append(f"- {sizes(config)}")
    for name, sub in vars(config).items():
        if isinstance(sub, PretrainedConfig) and sizes(sub):
            lines.append(f"- `{name}`: {sizes(sub)}")
    return "\n".join(lines)


def render_card(result, args) -> str:
    """Fill `model_cards/<family>.md` with what this conversion measured."""
    from .common import render_model_card

    notes = "\n".join(f"- {note}" for note in result.notes) or "- none"
    repo_id = args.push_to_hub or str(args.output_dir)
    # a source's card fields may name the repo (e.g. a code line `from_pretrained("{{repo_id}}")`)
    card_fields = {name: value.replace("{{repo_id}}", repo_id) if isinstance(value, str) else value
                   for name, value in result.card_fields.items()}
    license_note = (
        f"The converted weights keep the license of the original checkpoint (`{Path(result.checkpoint).name}`); "
        f"hf_mm does not change it: check where the checkpoint was published before use. The source code "
        f"({result.source}) is {result.code_license}-licensed, as is hf_mm."
    )
    return render_model_card(
        f"{result.family}.md", model_name=args.model_name or Path(args.output_dir).resolve().name,
        repo_id=repo_id, source=result.source,
        checkpoint=Path(result.checkpoint).name, license=args.license, license_note=license_note,
        architecture=architecture_summary(result.model), parity=_parity_markdown(result, args.atol),
        conversion_notes=notes, **card_fields,
    )


def run_source(name: str, argv: list[str]) -> Path:
    """Parse one source's arguments, convert, verify, write the folder (and push it). Returns the folder.

    The reference libraries that rebuild the original model import packages that are not installed (torchvision
    & co.): their stand-ins (conversion/reference_stubs) are switched on before the source is imported, and a
    module that still cannot be imported is a one-line error naming it."""
    from .common import UnmappedTensorsError, push_to_hub, save_converted
    from .reference_imports import enable_reference_imports, import_error_message

    def import_failed(err: ImportError) -> SystemExit:
        return SystemExit(f"python -m conversion {name}: error: {import_error_message(err)}")

    enable_reference_imports(allow_installed_torchvision=True)
    try:
        module = importlib.import_module(SOURCES[name][0])
    except ImportError as err:
        raise import_failed(err) from err
    parser = argparse.ArgumentParser(prog=f"python -m conversion {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    _add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private only applies with --push-to-hub REPO")

    progress = Progress(len(STAGES) + bool(args.push_to_hub), enabled=not args.no_progress)
    try:
        result = module.run(args, progress)
        print_verification(result, args.atol)
        failed = {k: v for k, v in (result.parity or {}).items() if not v <= args.atol}  # NaN fails too
        if failed:
            raise ValueError(f"verification failed: {failed} exceed --atol {args.atol:g}; nothing was written")
        for note in result.notes:
            print(f"note: {note}")
        with progress.stage("model card"):
            card = render_card(result, args)
        with progress.stage("save"):
            report = dict(source=name, library=result.source, checkpoint=str(result.checkpoint), atol=args.atol,
                          parity=result.parity, notes=result.notes)
            if result.parity is None:
                report["not_verified"] = _not_verified(result)
            out = save_converted(result.model, args.output_dir, result.processor, card, report)
        if args.push_to_hub:
            try:
                with progress.stage("push"):
                    url = push_to_hub(out, args.push_to_hub, private=args.private, token=args.token)
            except Exception as err:  # network, authentication, Hub errors: the folder is saved, say so
                raise ValueError(f"the converted model is saved in {out}, but pushing it to {args.push_to_hub!r} "
                                 f"failed: {type(err).__name__}: {err}") from err
            print(f"pushed to {args.push_to_hub}: {url}")
    except (UnmappedTensorsError, ValueError, TypeError, FileNotFoundError) as err:
        progress.close()
        raise SystemExit(f"python -m conversion {name}: error: {err}") from err
    except ImportError as err:  # a reference library (or what it imports) that is missing
        progress.close()
        raise import_failed(err) from err
    progress.close()
    print(f"saved {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return out


def source_main(name: str, argv: list[str] | None = None) -> Path:
    """What `python -m conversion.<source> ...` runs: the same as `python -m conversion <source> ...`."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m conversion", description=__doc__, epilog=_source_listing(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=list(SOURCES), metavar="SOURCE", help="one of: " + ", ".join(SOURCES))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the source's options (SOURCE --help)")
    args = parser.parse_args(argv)
    return run_source(args.source, args.options)


if __name__ == "__main__":
    main()
