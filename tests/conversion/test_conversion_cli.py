"""`python -m conversion SOURCE ...` end to end on tiny reference models: output folder, reload with the Auto
classes against the reference, filled model card (and its usage snippet run), verification summary and failures,
push-to-hub up to the upload. Most run `main()` in-process; the "fresh process" ones run the CLI as a user does,
where only the CLI itself can switch on the stand-ins the reference libraries need.

(No `__init__.py` here on purpose: a `tests/conversion` package would shadow the real `conversion` package.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hf_mm  # noqa: F401  (Auto registration)
from conversion.__main__ import SOURCES, STAGES, main
from conversion.common import render_model_card
from reference_imports import REPO_ROOT, STUB_PACKAGES, TESTS_DIR, require_reference

TOL = 1e-4
WORDS = ["[PAD]", "[BOS]", "[EOS]", "<image>", "a", "red", "blue", "circle", "square", "photo", "of"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny word-level tokenizer saved as a folder (ids: [PAD]=0, <image>=3), as `--tokenizer` takes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image>", behavior="isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                        eos_token="[EOS]", additional_special_tokens=["<image>"])
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(source: str, *args: str) -> Path:
    return main([source, *args, "--no-progress"])


def check_card(out: Path, source_text: str) -> str:
    """The card is fully rendered and carries this conversion's figures."""
    card = (out / "README.md").read_text()
    report = json.loads((out / "conversion_report.json").read_text())
    assert "{{" not in card and "}}" not in card
    assert source_text in card
    assert Path(report["checkpoint"]).name in card
    assert "## License" in card and "keep the license of the original checkpoint" in card
    assert "- `" in card and "parameters" in card  # the architecture summary
    if report["parity"] is not None:
        assert report["parity"] and max(report["parity"].values()) <= TOL
        for name, diff in report["parity"].items():
            assert f"| `{name}` | {diff:.2e} |" in card
    return card


def saved_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


# ---------------------------------------------------------------------------------------------------------
# the entry point


def test_help_lists_every_source_in_a_real_subprocess():
    proc = subprocess.run([sys.executable, "-m", "conversion", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name, (_, description) in SOURCES.items():
        assert name in proc.stdout and description in proc.stdout


def test_source_help_lists_its_options_and_the_common_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["x_clip", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--reference-kwargs", "--checkpoint", "--output-dir", "--tokenizer", "--push-to-hub", "--private",
                   "--token", "--atol"):
        assert option in text


def test_unknown_source_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["not_a_source", "--checkpoint", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_registered_source_has_the_source_interface():
    import importlib

    for module_name, _ in SOURCES.values():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), module_name


# ---------------------------------------------------------------------------------------------------------
# one tiny conversion per source


OPEN_CLIP_COCA = dict(  # the real CLIP BPE vocabulary, so open_clip's tokenizer fits the model
    embed_dim=16, custom_text=True,  # as in open_clip's own coca_*.json
    multimodal_cfg=dict(context_length=12, vocab_size=49408, width=16, heads=2, layers=1),
    text_cfg=dict(context_length=12, vocab_size=49408, width=16, heads=2, layers=1, embed_cls=True, output_tokens=True),
    vision_cfg=dict(image_size=16, patch_size=8, width=16, head_width=8, layers=1, attentional_pool=True,
                    attn_pooler_heads=2, attn_pooler_queries=3, output_tokens=True),
)


def test_open_clip_coca(tmp_path, capsys):
    from transformers import AutoModel, AutoProcessor

    open_clip = require_reference("open_clip")
    config_path = tmp_path / "tiny_coca.json"
    config_path.write_text(json.dumps(OPEN_CLIP_COCA))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    ref = open_clip.create_model("tiny_coca", pretrained=None).eval()
    torch.nn.init.normal_(ref.text_decoder.text_projection, std=0.25)  # torch.empty upstream
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "coca.safetensors")

    out = main(["open_clip_coca", "--model-config", str(config_path), "--checkpoint",
                str(tmp_path / "coca.safetensors"), "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "verification against open_clip" in captured.out
    for output in ("image_embeds", "text_embeds", "caption_logits", "caption_loss", "contrastive_loss"):
        assert output in captured.out
    assert "conversion" in captured.err and "tensor" in captured.err  # the progress bars
    assert {"config.json", "model.safetensors", "README.md", "conversion_report.json", "processor_config.json",
            "tokenizer.json"} <= saved_files(out)
    card = check_card(out, "open_clip 3.3.0")
    assert "open_clip `tiny_coca`" in card

    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer("a photo").input_ids[0] == processor.tokenizer.bos_token_id
    images = torch.randn(2, 3, 16, 16)
    text = torch.randint(1, 49408, (2, 12))
    with torch.no_grad():
        expected = ref(images, text, output_labels=False)
        ours = model(input_ids=text, pixel_values=images)
    assert (expected["image_features"] - ours.image_embeds).abs().max() <= TOL
    assert (expected["logits"] - ours.logits).abs().max() <= TOL


COCA_PYTORCH = dict(dim=32, num_tokens=40, unimodal_depth=1, multimodal_depth=1, dim_head=8, heads=2, num_img_queries=3,
                    image_dim=24, vit=dict(image_size=16, patch_size=8, num_classes=5, dim=24, depth=1, heads=2,
                                           mlp_dim=32, dim_head=12))


def test_coca_pytorch_with_inline_kwargs_and_a_pickled_checkpoint(tmp_path, tokenizer_dir):
    from transformers import AutoModel, AutoProcessor

    from conversion.coca_pytorch import build_reference

    require_reference("coca_pytorch")
    torch.manual_seed(0)
    ref = build_reference(COCA_PYTORCH).eval()
    torch.save(ref.state_dict(), tmp_path / "coca.pt")

    out = run_cli("coca_pytorch", "--reference-kwargs", json.dumps(COCA_PYTORCH), "--checkpoint",
                  str(tmp_path / "coca.pt"), "--output-dir", str(tmp_path / "out"), "--tokenizer", tokenizer_dir,
                  "--model-name", "tiny-coca")
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= saved_files(out)
    card = check_card(out, "coca-pytorch 0.1.0")
    assert card.startswith("---\nlibrary_name: transformers\nlicense: other\n") and "# tiny-coca" in card
    assert set(json.loads((out / "conversion_report.json").read_text())["parity"]) == {
        "caption_logits", "text_latents", "image_latents", "loss"}

    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    # the tokenizer's BOS / EOS become the model's (they used to be saved as None: prompt-free captioning failed)
    for config in (model.config, model.config.text_config, model.generation_config):
        assert (config.bos_token_id, config.eos_token_id) == (processor.tokenizer.bos_token_id,
                                                              processor.tokenizer.eos_token_id) == (1, 2)
    caption = model.generate(pixel_values=torch.rand(1, 3, 16, 16), max_new_tokens=3, min_new_tokens=3)
    assert caption.shape == (1, 4) and caption[0, 0] == 1
    inputs = processor(images=[torch.rand(3, 20, 20).numpy()], text=["a red circle"], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    with torch.no_grad():
        expected = ref(inputs["input_ids"].clone(), images=inputs["pixel_values"])
        ours = model(**inputs).logits
    assert (expected - ours).abs().max() <= TOL


X_CLIP = dict(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=40, text_enc_depth=1, text_seq_len=8,
              text_heads=2, text_dim_head=16, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8,
              visual_heads=2, visual_dim_head=16, use_all_token_embeds=True)


def x_clip_reference(tmp_path, seed=0):
    """A tiny x-clip CLIP, its kwargs file and its `.pt` state dict."""
    x_clip = require_reference("x_clip")
    torch.manual_seed(seed)
    ref = x_clip.CLIP(**X_CLIP).eval()
    (tmp_path / "clip.json").write_text(json.dumps(X_CLIP))
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    return ref, str(tmp_path / "clip.json"), str(tmp_path / "clip.pt")


def test_x_clip(tmp_path, tokenizer_dir):
    from transformers import AutoModel, AutoProcessor

    ref, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    out = run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                  "--output-dir", str(tmp_path / "out"), "--tokenizer", tokenizer_dir)
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= saved_files(out)
    card = check_card(out, "x-clip 0.14.4")
    assert "`use_all_token_embeds`" in card
    parity = json.loads((out / "conversion_report.json").read_text())["parity"]
    assert {"text_embeds", "image_embeds", "loss"} <= set(parity)

    model = AutoModel.from_pretrained(out).eval()
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "XClipProcessor"
    ids, pixels = torch.randint(1, 40, (2, 8)), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        text_latents, image_latents = ref(ids, pixels, return_latents=True)[:2]
        ours = model(ids, pixels)
    assert (text_latents - ours.text_embeds).abs().max() <= TOL
    assert (image_latents - ours.image_embeds).abs().max() <= TOL


def test_x_clip_without_tokenizer_writes_x_clip_s_own_bpe_processor(tmp_path):
    """A model with the CLIP BPE vocabulary gets x-clip's own tokenizer: the reloaded processor's ids are those of
    `x_clip.tokenizer.tokenize` (no start/end tokens, padded with 0, truncated to text_seq_len)."""
    from transformers import AutoProcessor

    x_clip = require_reference("x_clip")
    kwargs = dict(X_CLIP, num_text_tokens=49408, dim_text=16, dim_image=16, text_dim_head=8, visual_dim_head=8)
    torch.manual_seed(0)
    torch.save(x_clip.CLIP(**kwargs).state_dict(), tmp_path / "clip.pt")
    out = run_cli("x_clip", "--reference-kwargs", json.dumps(kwargs), "--checkpoint", str(tmp_path / "clip.pt"),
                  "--output-dir", str(tmp_path / "out"))
    assert {"processor_config.json", "tokenizer.json"} <= saved_files(out)
    assert "x-clip's own tokenizer (OpenAI's CLIP BPE, 49408 tokens" in check_card(out, "x-clip 0.14.4")

    processor = AutoProcessor.from_pretrained(out)
    texts = ["A photo of a CAT!", "two dogs"]
    ids = processor(text=texts, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, require_reference("x_clip.tokenizer").tokenizer.tokenize(texts, context_length=8))
    assert ids[1, -1] == 0 and ids[0, 0] != processor.tokenizer.bos_token_id
    long = processor(text=["a photo of a dog in the snow " * 3], return_tensors="pt")["input_ids"]
    assert long.shape == (1, 8)
    assert processor(images=[torch.rand(3, 20, 20).numpy()], return_tensors="pt")["pixel_values"].shape == (1, 3, 16, 16)


FLAMINGO = dict(num_tokens=40, dim=32, depth=2, heads=2, dim_head=16, media_token_id=3, cross_attn_every=1,
                perceiver_num_latents=4, perceiver_depth=1, max_video_frames=2,
                vit=dict(image_size=16, patch_size=8, num_classes=5, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=32))


def test_flamingo_pytorch(tmp_path, tokenizer_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from conversion.flamingo_pytorch import build_reference

    require_reference("flamingo_pytorch")
    torch.manual_seed(0)
    ref = build_reference(FLAMINGO).eval()
    with torch.no_grad():  # open the tanh gates (zero upstream), or the cross-attention would be invisible
        for _, xattn in ref.layers:
            xattn.attn_gate.fill_(0.7)
            xattn.ff_gate.fill_(0.9)
    save_file({k: v.clone() for k, v in ref.state_dict().items()}, tmp_path / "flamingo.safetensors")  # tied
    (tmp_path / "arch.json").write_text(json.dumps(FLAMINGO))

    out = run_cli("flamingo_pytorch", "--reference-kwargs", str(tmp_path / "arch.json"), "--checkpoint",
                  str(tmp_path / "flamingo.safetensors"), "--output-dir", str(tmp_path / "out"),
                  "--tokenizer", tokenizer_dir)
    card = check_card(out, "flamingo-pytorch 0.1.2")
    assert "media token (id 3)" in card
    assert {"logits_images", "logits_text_only", "logits_video"} == set(
        json.loads((out / "conversion_report.json").read_text())["parity"])

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(text=["<image> a red circle"], images=[torch.rand(3, 16, 16).numpy()], return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == 3 and inputs["pixel_values"].shape == (1, 1, 3, 16, 16)
    with torch.no_grad():
        expected = ref(inputs["input_ids"], images=inputs["pixel_values"])
        ours = model(**inputs).logits
    assert (expected - ours).abs().max() <= TOL


def test_flamingo_media_token_must_match_the_tokenizer(tmp_path, tokenizer_dir):
    from conversion.flamingo_pytorch import build_reference

    require_reference("flamingo_pytorch")
    arch = dict(FLAMINGO, media_token_id=5)
    torch.save(build_reference(arch).state_dict(), tmp_path / "f.pt")
    with pytest.raises(SystemExit, match=r"--media-token '<image>' has id 3 .* media_token_id is 5"):
        run_cli("flamingo_pytorch", "--reference-kwargs", json.dumps(arch), "--checkpoint", str(tmp_path / "f.pt"),
                "--output-dir", str(tmp_path / "out"), "--tokenizer", tokenizer_dir)
    assert not (tmp_path / "out").exists()


def open_flamingo_helpers():
    """tests/models/open_flamingo/open_flamingo_helpers.py, imported by path: that folder is no package (it would
    shadow the `open_flamingo` reference library). The same module object as the one its own tests import."""
    import importlib.util

    name = "open_flamingo_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "models" / "open_flamingo" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_open_flamingo_released_checkpoint_with_lm_folder_and_vision_weights(tmp_path, capsys):
    """A released-style checkpoint.pt (trained tensors only) + the LM's own folder + open_clip weights + the LM's
    tokenizer -> a folder that reloads through the Auto classes and matches the reference."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    helpers = open_flamingo_helpers()
    name = "llama-every1-quickgelu"
    kind, layers, _, vision, _ = helpers.CONFIGS[name]
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(helpers.lm_config(kind, layers))
    lm.save_pretrained(tmp_path / "lm")  # before open_flamingo changes the LM in place
    helpers.lm_tokenizer().save_pretrained(tmp_path / "tokenizer")
    ref = helpers.build(name, language_model=lm)
    torch.save(helpers.trained_tensors(ref.state_dict()), tmp_path / "checkpoint.pt")
    save_file({f"visual.{k}": v.contiguous() for k, v in ref.vision_encoder.state_dict().items()},
              tmp_path / "open_clip.safetensors")

    out = main(["open_flamingo", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--language-model",
                str(tmp_path / "lm"), "--vision-checkpoint", str(tmp_path / "open_clip.safetensors"),
                "--vision-head-width", str(vision["head_width"]), "--tokenizer", str(tmp_path / "tokenizer"),
                "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "verification against open-flamingo 2.0.1" in captured.out
    assert f"{len(STAGES)}/{len(STAGES)}" in captured.err and "tensor" in captured.err  # every stage reported
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md", "conversion_report.json",
            "processor_config.json", "tokenizer.json"} <= saved_files(out)
    card = check_card(out, "open-flamingo 2.0.1")
    media, eoc = helpers.MEDIA, helpers.EOC
    assert f"`<image>` is token {media}, `<|endofchunk|>` token {eoc}" in card
    assert "(`llama`)" in card and "before every\n1 decoder layer(s)" in card
    assert set(json.loads((out / "conversion_report.json").read_text())["parity"]) == {"logits"}

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert model.generation_config.eos_token_id == eoc
    inputs = processor(text=["<image>w5 w6<|endofchunk|><image>w7", "<image>w8<|endofchunk|><image>w9 w10 w11"],
                       images=[[torch.rand(3, 40, 30).numpy() for _ in range(2)] for _ in range(2)])
    assert inputs["input_ids"][0].tolist() == [0, media, 5, 6, eoc, media, 7]  # left padding
    with torch.no_grad():
        expected = ref(inputs["pixel_values"][:, :, None], inputs["input_ids"], attention_mask=inputs["attention_mask"])
        ours = model(**inputs).logits
    assert (expected.logits - ours).abs().max() <= TOL


DALLE_VAE = dict(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)
DALLE = dict(dim=32, num_text_tokens=20, text_seq_len=5, depth=2, heads=2, dim_head=16,
             attn_types=("axial_row", "full"))


def dalle_reference(seed=0):
    dalle_pytorch = require_reference("dalle_pytorch")
    torch.manual_seed(seed)
    return dalle_pytorch.DALLE(vae=dalle_pytorch.DiscreteVAE(**DALLE_VAE), **DALLE).eval()


def test_dalle_pytorch_training_checkpoint_and_vae_state_dict(tmp_path, tokenizer_dir):
    from transformers import AutoModel, AutoProcessor

    ref = dalle_reference()
    torch.save({"hparams": DALLE, "vae_params": DALLE_VAE, "weights": ref.state_dict()}, tmp_path / "dalle.pt")
    out = run_cli("dalle_pytorch", "--checkpoint", str(tmp_path / "dalle.pt"), "--output-dir", str(tmp_path / "out"),
                  "--tokenizer", tokenizer_dir)
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= saved_files(out)
    card = check_card(out, "dalle-pytorch 1.6.6")
    assert "Attention pattern of each layer: axial_row, full." in card
    model = AutoModel.from_pretrained(out).eval()
    ids = AutoProcessor.from_pretrained(out)(text=["a blue square"])["input_ids"]
    assert ids.tolist() == [[4, 6, 8, 0, 0]]
    codes = torch.randint(0, 16, (1, model.config.image_seq_len))
    with torch.no_grad():
        assert (ref(ids.clone(), codes) - model(ids, image_ids=codes, use_cache=False).logits).abs().max() <= TOL

    # a VAE as a plain state dict with its constructor arguments inline
    save_file(ref.vae.state_dict(), tmp_path / "vae.safetensors")
    vae_out = run_cli("dalle_pytorch", "--vae-only", "--checkpoint", str(tmp_path / "vae.safetensors"),
                      "--reference-kwargs", json.dumps(DALLE_VAE), "--output-dir", str(tmp_path / "vae"))
    check_card(vae_out, "the discrete VAE of DALL-E on its own")
    vae = AutoModel.from_pretrained(vae_out)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(vae.get_codebook_indices(images), ref.vae.get_codebook_indices(images))


def test_dalle_whose_reference_fails_to_import_converts_and_says_why_unverified(tmp_path, monkeypatch, capsys):
    """dalle-pytorch installed but not importable: the conversion goes on unverified, and the console, the report and
    the card give the import error (they used to say "dalle-pytorch 1.6.6 is not installed")."""
    ref = dalle_reference()
    torch.save({"hparams": DALLE, "vae_params": DALLE_VAE, "weights": ref.state_dict()}, tmp_path / "dalle.pt")
    monkeypatch.setitem(sys.modules, "dalle_pytorch", None)  # `import dalle_pytorch` now raises ImportError
    out = run_cli("dalle_pytorch", "--checkpoint", str(tmp_path / "dalle.pt"), "--output-dir", str(tmp_path / "out"))
    printed = capsys.readouterr().out
    reason = "dalle-pytorch 1.6.6 is installed but could not be imported (ModuleNotFoundError: import of dalle_pytorch"
    assert f"verification: not run ({reason}" in printed
    assert "not installed" not in printed
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["parity"] is None and report["not_verified"].startswith(reason)
    card = check_card(out, f"Not verified at conversion time: {reason}")
    assert "was not installed" not in card


def test_unverified_reason_tells_not_installed_from_failing_import(monkeypatch):
    from conversion.common import reference_import_error

    assert reference_import_error("x_clip", "x-clip") is None
    assert reference_import_error("not_a_reference_xyz", "not-a-ref-xyz") == "not-a-ref-xyz is not installed"
    monkeypatch.setitem(sys.modules, "x_clip", None)
    assert reference_import_error("x_clip", "x-clip").startswith("x-clip 0.14.4 is installed but could not be imported")


def test_open_flamingo_unverified_reason_is_the_import_error(monkeypatch):
    from conversion import open_flamingo

    assert open_flamingo.reference_unavailable() is None
    monkeypatch.setitem(sys.modules, "open_flamingo", None)
    assert open_flamingo.reference_unavailable().startswith("open-flamingo 2.0.1 is installed but could not be")


# ---------------------------------------------------------------------------------------------------------
# failures: wrong checkpoints, failed verification, bad arguments


def test_checkpoint_with_missing_and_extra_tensors_fails_listing_them(tmp_path):
    ref, kwargs_path, _ = x_clip_reference(tmp_path)
    state_dict = ref.state_dict()
    del state_dict["to_text_latent.weight"]
    state_dict["visual_transformer.extra_head.weight"] = torch.zeros(2)
    torch.save(state_dict, tmp_path / "bad.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", str(tmp_path / "bad.pt"),
                "--output-dir", str(tmp_path / "out"))
    message = str(exit_info.value.code)
    assert "1 missing tensors: ['to_text_latent.weight']" in message
    assert "1 unexpected tensors: ['visual_transformer.extra_head.weight']" in message
    assert not (tmp_path / "out").exists()


def test_dalle_checkpoint_with_missing_and_extra_tensors_fails_listing_them(tmp_path):
    ref = dalle_reference()
    weights = ref.state_dict()
    del weights["to_logits.1.bias"]
    weights["extra"] = torch.zeros(1)
    torch.save({"hparams": DALLE, "vae_params": DALLE_VAE, "weights": weights}, tmp_path / "dalle.pt")
    with pytest.raises(SystemExit, match=r"missing tensors: \['to_logits.1.bias'\].*unexpected tensors: \['extra'\]"):
        run_cli("dalle_pytorch", "--checkpoint", str(tmp_path / "dalle.pt"), "--output-dir", str(tmp_path / "out"))


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, capsys):
    import conversion.x_clip as source

    real_convert = source.convert

    def off_by_a_little(reference):  # a converter bug: one weight slightly wrong
        model = real_convert(reference)
        with torch.no_grad():
            model.text_projection.weight[0, 0] += 1e-2
        return model

    monkeypatch.setattr(source, "convert", off_by_a_little)
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    with pytest.raises(SystemExit, match="verification failed: .*text_embeds"):
        run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                "--output-dir", str(tmp_path / "out"))
    table = capsys.readouterr().out
    assert "verification against x-clip" in table and any(
        line.split()[0] == "text_embeds" and line.split()[-1] == "NO" for line in table.splitlines()[1:])
    assert not (tmp_path / "out").exists()


def test_bad_arguments_name_what_was_expected(tmp_path, tokenizer_dir):
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    common = ["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--reference-kwargs must be a JSON object or the path of a JSON file"):
        run_cli("x_clip", "--reference-kwargs", str(tmp_path / "missing.json"), *common)
    with pytest.raises(SystemExit, match="--reference-kwargs must be a JSON object of keyword arguments, got list"):
        run_cli("x_clip", "--reference-kwargs", "[1, 2]", *common)
    small = dict(X_CLIP, num_text_tokens=8)
    torch.save(require_reference("x_clip").CLIP(**small).state_dict(), tmp_path / "small.pt")
    with pytest.raises(SystemExit, match=r"--tokenizer has 11 tokens but the model's vocabulary has only 8"):
        run_cli("x_clip", "--reference-kwargs", json.dumps(small), "--checkpoint", str(tmp_path / "small.pt"),
                "--output-dir", str(tmp_path / "out"), "--tokenizer", tokenizer_dir)
    with pytest.raises(SystemExit, match="checkpoint not found"):
        run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", str(tmp_path / "nope.pt"),
                "--output-dir", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as exit_info:  # argparse: --private without --push-to-hub
        run_cli("x_clip", "--reference-kwargs", kwargs_path, *common, "--private")
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------------------
# push to hub, up to the upload call


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(kwargs["folder_path"]).iterdir()}
        calls.append(("upload_folder", self.token, kwargs, files))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    out = run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint, "--output-dir",
                  str(tmp_path / "out"), "--push-to-hub", "me/tiny-xclip", "--private", "--token", "hf_test")

    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    _, token, repo_id, kwargs = calls[0]
    assert (token, repo_id, kwargs["private"], kwargs["exist_ok"], kwargs["repo_type"]) == (
        "hf_test", "me/tiny-xclip", True, True, "model")
    _, token, kwargs, files = calls[1]
    assert token == "hf_test" and kwargs["repo_id"] == "me/tiny-xclip" and kwargs["repo_type"] == "model"
    assert Path(kwargs["folder_path"]) == out
    assert {"config.json", "model.safetensors", "README.md", "conversion_report.json"} <= set(files)
    assert "processor_config.json" not in files  # 40 tokens: x-clip's own 49408-token tokenizer does not fit
    assert b"no --tokenizer given and the model's vocabulary (40 tokens) is smaller" in files["README.md"]
    assert b'AutoModel.from_pretrained("me/tiny-xclip")' in files["README.md"]


# ---------------------------------------------------------------------------------------------------------
# model card templates


@pytest.mark.parametrize("family", ["coca", "x_clip", "flamingo", "open_flamingo", "dalle", "dalle_vae"])
def test_templates_refuse_unfilled_and_unknown_fields(family):
    with pytest.raises(ValueError, match="unfilled fields"):
        render_model_card(f"{family}.md", model_name="m")
    with pytest.raises(ValueError, match=r"no placeholder for the fields \['not_a_field'\]"):
        render_model_card(f"{family}.md", not_a_field="x")


def test_checkpoint_whose_tied_tensors_differ_fails(tmp_path):
    """coca-pytorch ties `to_logits.1.weight` to `token_emb.weight`: loading would silently keep one of them."""
    from conversion.coca_pytorch import build_reference

    require_reference("coca_pytorch")
    kwargs = {k: v for k, v in COCA_PYTORCH.items() if k != "vit"}
    state_dict = {k: v.clone() for k, v in build_reference(kwargs).state_dict().items()}
    state_dict["to_logits.1.weight"] += 1.0
    torch.save(state_dict, tmp_path / "coca.pt")
    with pytest.raises(SystemExit, match=r"tensors the reference ties together differ: (token_emb.weight vs "
                       r"\['to_logits.1.weight'\]|to_logits.1.weight vs \['token_emb.weight'\])"):
        run_cli("coca_pytorch", "--reference-kwargs", json.dumps(kwargs), "--checkpoint", str(tmp_path / "coca.pt"),
                "--output-dir", str(tmp_path / "out"))


def test_failed_push_is_a_cli_error_naming_the_saved_folder(tmp_path, tokenizer_dir, monkeypatch):
    """An unreachable Hub used to end in a raw traceback from the HTTP client."""
    import conversion.common

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(conversion.common, "push_to_hub", offline)
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    with pytest.raises(SystemExit, match=r"error: the converted model is saved in .*out.*pushing it to 'me/tiny' "
                                         r"failed: ConnectionError"):
        run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                "--output-dir", str(tmp_path / "out"), "--tokenizer", tokenizer_dir, "--push-to-hub", "me/tiny")
    assert (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# checkpoints that weights_only refuses, reference libraries that fail to import: one-line CLI errors


class RefusedByWeightsOnly(dict):
    """A dict subclass: `torch.load(weights_only=True)` refuses to unpickle it (it could be any class)."""


@pytest.mark.parametrize("source", ["dalle_pytorch", "x_clip"])
def test_checkpoint_that_weights_only_refuses_is_a_one_line_cli_error(tmp_path, source):
    """dalle_pytorch read its checkpoint with torch.load itself and ended in a raw UnpicklingError traceback."""
    torch.save({"hparams": RefusedByWeightsOnly(dim=32), "weights": {}}, tmp_path / "unsafe.pt")
    extra = ["--reference-kwargs", json.dumps(X_CLIP)] if source == "x_clip" else []
    with pytest.raises(SystemExit) as exit_info:
        run_cli(source, *extra, "--checkpoint", str(tmp_path / "unsafe.pt"), "--output-dir", str(tmp_path / "out"))
    message = str(exit_info.value.code)
    assert message.startswith(f"python -m conversion {source}: error: refusing to load ")
    assert "unsafe.pt" in message and "weights_only=True" in message and "RefusedByWeightsOnly" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=f"{source}: error: checkpoint not found: .*missing.pt"):
        run_cli(source, *extra, "--checkpoint", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path / "out"))


def test_reference_library_that_fails_to_import_is_a_one_line_cli_error(tmp_path, monkeypatch):
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    monkeypatch.setitem(sys.modules, "x_clip", None)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                "--output-dir", str(tmp_path / "out"))
    message = str(exit_info.value.code)
    assert message.startswith("python -m conversion x_clip: error: cannot import 'x_clip'")
    assert "pip install --no-deps" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------
# the CLI as a user runs it: a fresh process, nothing from the test suite on its path


def run_fresh(*args: str, code: str | None = None, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """`python -m conversion ARGS` (or `python -c CODE ARGS`) in the repository root, without PYTHONPATH (or with
    just `pythonpath`): the process gets neither tests/ nor the stand-ins from the test process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "conversion"] if code is None else [sys.executable, "-c", code]
    return subprocess.run([*command, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def verification_rows(stdout: str, library: str) -> dict[str, str]:
    """The rows of the printed verification table: output name -> "yes" / "NO"."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"verification against {library}"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        rows[line.split()[0]] = line.split()[-1]
    return rows


def test_x_clip_cli_in_a_fresh_process_converts_and_verifies(tmp_path):
    """x-clip imports torchvision at import time: the CLI has to switch the stand-ins on itself (it used to crash
    with `ModuleNotFoundError: No module named 'torchvision'`)."""
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)  # a torch.save'd state dict
    proc = run_fresh("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                     "--output-dir", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = verification_rows(proc.stdout, "x-clip 0.14.4")
    assert {"text_embeds", "image_embeds", "loss"} <= set(rows) and set(rows.values()) == {"yes"}, proc.stdout
    parity = json.loads((tmp_path / "out" / "conversion_report.json").read_text())["parity"]
    assert parity.keys() == rows.keys() and max(parity.values()) <= TOL
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Max absolute difference between the original implementation and hf_mm" in card


def test_dalle_vae_cli_in_a_fresh_process_verifies(tmp_path):
    """dalle-pytorch imports omegaconf, youtokentome, taming and pkg_resources: the fresh CLI used to skip the
    verification ("dalle-pytorch is not installed")."""
    dalle_pytorch = require_reference("dalle_pytorch")
    torch.manual_seed(0)
    torch.save({"hparams": DALLE_VAE, "weights": dalle_pytorch.DiscreteVAE(**DALLE_VAE).state_dict()},
               tmp_path / "vae.pt")
    proc = run_fresh("dalle_pytorch", "--vae-only", "--checkpoint", str(tmp_path / "vae.pt"),
                     "--output-dir", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = verification_rows(proc.stdout, "dalle-pytorch 1.6.6")
    assert set(rows) == {"codebook_indices", "decoded_images", "reconstruction_loss"} and set(rows.values()) == {"yes"}
    assert "not verified" not in proc.stdout


def test_missing_reference_dependency_is_a_one_line_error_in_a_fresh_process(tmp_path):
    """A module that neither is installed nor has a stand-in: one line naming it, no traceback, nothing written."""
    _, kwargs_path, checkpoint = x_clip_reference(tmp_path)
    code = ("import sys; sys.modules['torchvision'] = None  # as if it had no stand-in\n"
            "from conversion.__main__ import main; main(sys.argv[1:])")
    proc = run_fresh("x_clip", "--reference-kwargs", kwargs_path, "--checkpoint", checkpoint,
                     "--output-dir", str(tmp_path / "out"), "--no-progress", code=code)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m conversion x_clip: error: cannot import 'torchvision'"), last
    assert not (tmp_path / "out").exists()


def test_importing_conversion_does_not_switch_the_stand_ins_on():
    """Only running a conversion does; importing the package or a source module leaves sys.path alone."""
    code = ("import importlib.util, sys\n"
            "import conversion.__main__, conversion.x_clip, conversion.dalle_pytorch, conversion.open_flamingo\n"
            "from conversion.reference_imports import STUBS_DIR\n"
            "assert str(STUBS_DIR) not in sys.path, sys.path\n"
            "assert importlib.util.find_spec('torchvision') is None\n")
    proc = run_fresh(code=code)
    assert proc.returncode == 0, proc.stderr


def test_the_cli_leaves_a_working_torchvision_in_place(tmp_path):
    """A user whose torchvision is installed keeps it: the CLI's `enable_reference_imports(allow_installed_torchvision
    =True)` only appends the other stand-ins behind it. The test suite's strict mode refuses it."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("INSTALLED = True\n")
    code = ("import sys, torchvision\n"
            "from conversion import reference_imports as r\n"
            "try:\n"
            "    r.enable_reference_imports()\n"
            "except RuntimeError as err:\n"
            "    assert 'a real torchvision is importable' in str(err), err\n"
            "else:\n"
            "    raise AssertionError('the strict mode accepted an installed torchvision')\n"
            "assert str(r.STUBS_DIR) not in sys.path\n"
            "r.enable_reference_imports(allow_installed_torchvision=True)\n"
            "assert sys.path[-1] == str(r.STUBS_DIR)\n"
            "import omegaconf, importlib\n"
            "assert omegaconf.__file__.startswith(str(r.STUBS_DIR)), omegaconf.__file__\n"
            "assert importlib.import_module('torchvision').INSTALLED\n")
    proc = run_fresh(code=code, pythonpath=str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_the_stand_ins_live_in_one_shipped_place():
    """conversion/reference_imports.py and conversion/reference_stubs/ are the only copy: the test suite's
    reference_imports re-exports them."""
    import conversion.reference_imports as shipped
    import reference_imports

    assert reference_imports.enable_reference_imports is shipped.enable_reference_imports
    assert reference_imports.require_reference is shipped.require_reference
    assert reference_imports.STUBS_DIR == shipped.STUBS_DIR == REPO_ROOT / "conversion" / "reference_stubs"
    assert not (TESTS_DIR / "reference_stubs").exists()
    for name in STUB_PACKAGES:
        assert (shipped.STUBS_DIR / name / "__init__.py").is_file()
    assert str(shipped.STUBS_DIR) in sys.path  # switched on by tests/conftest.py


# ---------------------------------------------------------------------------------------------------------
# the DALL-E model cards: one usage snippet per kind of checkpoint, and it runs


def card_snippet(out: Path) -> tuple[str, str]:
    """The rendered card and its one python code block, with the repo id pointing at the local folder."""
    card = (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 1, card
    repo_ids = set(re.findall(r'from_pretrained\("([^"]+)"\)', blocks[0]))
    assert repo_ids, blocks[0]
    code = blocks[0]
    for repo_id in repo_ids:
        code = code.replace(f'"{repo_id}"', repr(str(out)))
    return card, code


@pytest.mark.parametrize("tokenizer", [False, True], ids=["no_processor", "processor"])
def test_dalle_card_snippet_runs_on_the_converted_dalle(tmp_path, tokenizer_dir, tokenizer):
    from PIL import Image

    ref = dalle_reference()
    torch.save({"hparams": DALLE, "vae_params": DALLE_VAE, "weights": ref.state_dict()}, tmp_path / "dalle.pt")
    out = run_cli("dalle_pytorch", "--checkpoint", str(tmp_path / "dalle.pt"), "--output-dir", str(tmp_path / "out"),
                  *(["--tokenizer", tokenizer_dir] if tokenizer else []))
    card, code = card_snippet(out)
    assert "model.vae.get_codebook_indices" in code and "model.get_codebook_indices" not in code
    assert ("AutoProcessor.from_pretrained" in code) == tokenizer
    assert "pipeline_tag: any-to-any" in card and "Attention pattern of each layer" in card

    namespace = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        exec(compile(code, str(out / "README.md"), "exec"), namespace)
    assert len(namespace["out"].images) == 1 and isinstance(namespace["out"].images[0], Image.Image)
    assert namespace["codes"].shape == (1, 16)
    assert namespace["images"].shape == (1, 3, 16, 16)
    assert 0 <= namespace["images"].min() and namespace["images"].max() <= 1
    if tokenizer:
        assert namespace["input_ids"].tolist() == [[4, 5, 7, 0, 0]]  # "a red circle"


def test_dalle_vae_card_snippet_runs_and_advertises_only_the_vae(tmp_path):
    ref = dalle_reference()
    torch.save({"hparams": DALLE_VAE, "weights": ref.vae.state_dict()}, tmp_path / "vae.pt")
    out = run_cli("dalle_pytorch", "--vae-only", "--checkpoint", str(tmp_path / "vae.pt"),
                  "--output-dir", str(tmp_path / "out"))
    card, code = card_snippet(out)
    check_card(out, "the discrete VAE of DALL-E on its own")
    for text in ("generate_images", "any-to-any", "pipeline", "attention pattern", "KV cache", "cond_scale",
                 "processor"):
        assert text.lower() not in card.lower(), text

    namespace = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        exec(compile(code, str(out / "README.md"), "exec"), namespace)
    pixel_values = namespace["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16)
    assert torch.equal(namespace["codes"], ref.vae.get_codebook_indices(pixel_values))
    assert namespace["reconstructions"].shape == (1, 3, 16, 16)
