"""The reference libraries import and run (tiny CPU models) with the test-only stand-ins on the path,
transformers keeps working next to them, and hf_mm / conversion never import any of them."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch

from reference_imports import (
    REPO_ROOT,
    STUB_PACKAGES,
    STUBS_DIR,
    MissingReferenceError,
    enable_reference_imports,
    require_reference,
)

# ---------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def seeded():
    """Seed torch for one test without leaking the RNG state into other tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _text(batch, length, low, high, pad_tail=0):
    """Random token ids in [low, high); the first row gets `pad_tail` trailing pads (id 0)."""
    text = torch.randint(low, high, (batch, length))
    if pad_tail:
        text[0, -pad_tail:] = 0
    return text


# ---------------------------------------------------------------------------------------------------------
# the stand-ins themselves


def test_enable_reference_imports_is_idempotent():
    enable_reference_imports()
    enable_reference_imports()
    assert sys.path.count(str(STUBS_DIR)) == 1


def test_torchvision_is_the_stand_in_and_not_installed():
    torchvision = importlib.import_module("torchvision")
    assert Path(torchvision.__file__).resolve().is_relative_to(STUBS_DIR)
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("torchvision")


@pytest.mark.parametrize("name", STUB_PACKAGES)
def test_stub_packages_import(name):
    importlib.import_module(name)


def test_stand_ins_raise_when_used():
    import taming.models.vqgan
    import youtokentome
    from omegaconf import OmegaConf
    from torchvision import transforms as T
    from torchvision.ops.misc import FrozenBatchNorm2d
    from torchvision.transforms.functional import InterpolationMode, pil_to_tensor

    for use in (
        lambda: T.Resize(8),
        lambda: T.Compose([]),
        lambda: pil_to_tensor(None),
        lambda: FrozenBatchNorm2d(4),
        lambda: taming.models.vqgan.VQModel(),
        lambda: taming.models.vqgan.GumbelVQ(),
        lambda: youtokentome.BPE(model="bpe.model"),
        lambda: OmegaConf.load("config.yaml"),
    ):
        with pytest.raises(NotImplementedError, match="stand-in"):
            use()
    assert InterpolationMode.NEAREST_EXACT.value == "nearest-exact"


def test_pkg_resources_get_distribution_version():
    pkg_resources = importlib.import_module("pkg_resources")
    assert pkg_resources.get_distribution("torch").version == importlib.metadata.version("torch")


def test_require_reference_names_the_pip_command():
    with pytest.raises(MissingReferenceError, match="pip install") as excinfo:
        require_reference("open_clip_not_installed_xyz")
    assert not isinstance(excinfo.value, pytest.skip.Exception)


def test_require_reference_names_a_missing_dependency(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_reference_lib_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import missing_dependency_of_fake_reference_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingReferenceError, match="missing_dependency_of_fake_reference_xyz.*reference_stubs"):
        require_reference("fake_reference_lib_xyz")


# ---------------------------------------------------------------------------------------------------------
# every reference library imports


@pytest.mark.parametrize(
    "module, attr",
    [
        ("open_clip", "CLIP"),
        ("open_clip.coca_model", "CoCa"),
        ("coca_pytorch", "CoCa"),
        ("x_clip", "CLIP"),
        ("flamingo_pytorch", "FlamingoPaLM"),
        ("dalle_pytorch", "DALLE"),
        ("dalle_pytorch", "DiscreteVAE"),
        ("dalle_pytorch.tokenizer", "YttmTokenizer"),
        ("open_flamingo", "Flamingo"),
        ("vit_pytorch", "ViT"),
        ("vit_pytorch.extractor", "Extractor"),
        ("vit_pytorch.simple_vit_with_patch_dropout", "SimpleViT"),
        ("timm", "create_model"),
    ],
)
def test_reference_imports(module, attr):
    assert callable(getattr(require_reference(module), attr))


# ---------------------------------------------------------------------------------------------------------
# a tiny model of each runs forward on CPU (small constructor calls from docs/references.md)


def test_coca_pytorch_tiny_forward(seeded):
    CoCa = require_reference("coca_pytorch").CoCa
    SimpleViT = require_reference("vit_pytorch.simple_vit_with_patch_dropout").SimpleViT
    Extractor = require_reference("vit_pytorch.extractor").Extractor

    vit = SimpleViT(image_size=32, patch_size=8, num_classes=10, dim=64, depth=1, heads=2, mlp_dim=128, patch_dropout=0.5)
    vit = Extractor(vit, return_embeddings_only=True, detach=False)
    coca = CoCa(dim=64, img_encoder=vit, image_dim=64, num_tokens=100, unimodal_depth=2, multimodal_depth=2,
                dim_head=16, heads=4, num_img_queries=8, caption_loss_weight=1., contrastive_loss_weight=1.)
    text, images = _text(2, 9, 1, 100, pad_tail=2), torch.randn(2, 3, 32, 32)
    loss = coca(text=text, images=images, return_loss=True)
    assert loss.ndim == 0 and torch.isfinite(loss)
    coca.eval()
    with torch.no_grad():
        assert coca(text=text, images=images).shape == (2, 9, 100)
        assert coca(text=text, image_tokens=torch.randn(2, 16, 64)).shape == (2, 9, 100)


def test_x_clip_tiny_forward(seeded):
    CLIP = require_reference("x_clip").CLIP
    clip = CLIP(dim_text=64, dim_image=64, dim_latent=32, num_text_tokens=100, text_enc_depth=1, text_seq_len=16,
                text_heads=2, text_dim_head=16, visual_enc_depth=1, visual_heads=2, visual_dim_head=16,
                visual_image_size=32, visual_patch_size=8, visual_patch_dropout=0.)
    text, images = _text(3, 16, 1, 100, pad_tail=3), torch.randn(3, 3, 32, 32)
    clip.train()
    loss = clip(text, images, return_loss=True)
    assert loss.ndim == 0 and torch.isfinite(loss)
    clip.eval()
    with torch.no_grad():
        assert clip(text, images).shape == (3,)


def test_flamingo_pytorch_tiny_forward(seeded):
    FlamingoPaLM = require_reference("flamingo_pytorch").FlamingoPaLM
    vit_pytorch = require_reference("vit_pytorch")
    Extractor = require_reference("vit_pytorch.extractor").Extractor

    vit = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=10, dim=64, depth=1, heads=2, mlp_dim=128,
                          dropout=0.1, emb_dropout=0.1)
    vit = Extractor(vit, return_embeddings_only=True)
    model = FlamingoPaLM(num_tokens=100, dim=64, depth=4, heads=4, dim_head=16, img_encoder=vit, media_token_id=3,
                         cross_attn_every=2, perceiver_num_latents=8, perceiver_depth=1, max_video_frames=4).eval()
    text = _text(2, 12, 4, 100)
    text[:, 0] = text[:, 6] = 3
    with torch.no_grad():
        assert model(text).shape == (2, 12, 100)
        assert model(text, images=torch.randn(2, 2, 3, 32, 32)).shape == (2, 12, 100)


def test_dalle_pytorch_tiny_forward(seeded):
    dalle_pytorch = require_reference("dalle_pytorch")
    vae = dalle_pytorch.DiscreteVAE(image_size=32, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=16,
                                    num_resnet_blocks=1)
    dalle = dalle_pytorch.DALLE(dim=64, vae=vae, num_text_tokens=50, text_seq_len=8, depth=2, heads=2, dim_head=16)
    text, images = _text(2, 8, 1, 50, pad_tail=2), torch.rand(2, 3, 32, 32)
    loss = dalle(text.clone(), images, return_loss=True)  # clone: the reference may mutate `text` in place
    assert loss.ndim == 0 and torch.isfinite(loss)
    with torch.no_grad():
        assert dalle(text.clone(), images).shape == (2, 72, 90)
        assert vae(images, return_loss=True).ndim == 0
        assert vae.get_codebook_indices(images).shape == (2, 64)


def test_open_clip_coca_tiny_forward(seeded):
    CoCa = require_reference("open_clip.coca_model").CoCa
    model = CoCa(
        embed_dim=32,
        multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2),
        text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2, embed_cls=True,
                      output_tokens=True),
        vision_cfg=dict(image_size=32, patch_size=8, width=48, head_width=24, layers=2, attentional_pool=True,
                        attn_pooler_heads=2, attn_pooler_queries=8, output_tokens=True),
    ).eval()
    torch.nn.init.normal_(model.text_decoder.text_projection, std=32 ** -0.5)  # torch.empty upstream
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), _text(2, 12, 1, 100, pad_tail=3))
    assert out["image_features"].shape == (2, 32) and out["text_features"].shape == (2, 32)
    assert out["logits"].shape == (2, 11, 100) and torch.isfinite(out["logits"]).all()


def test_open_clip_clip_tiny_forward(seeded):
    open_clip = require_reference("open_clip")
    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=48, head_width=24, layers=1),
                           text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=1)).eval()
    with torch.no_grad():
        image_features, text_features, logit_scale = model(torch.randn(2, 3, 32, 32), _text(2, 12, 1, 100))
    assert image_features.shape == (2, 32) and text_features.shape == (2, 32) and logit_scale.ndim == 0


def test_open_flamingo_tiny_forward(seeded):
    open_clip = require_reference("open_clip")
    Flamingo = require_reference("open_flamingo").Flamingo
    FlamingoLMMixin = require_reference("open_flamingo.src.flamingo_lm").FlamingoLMMixin
    extend_instance = require_reference("open_flamingo.src.utils").extend_instance
    from transformers import LlamaConfig, LlamaForCausalLM

    clip = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=48, head_width=24, layers=1),
                          text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    clip.visual.output_tokens = True
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("model.layers")
    model = Flamingo(clip, lm, eoc_token_id=99, media_token_id=98, vis_dim=48, cross_attn_every_n_layers=1).eval()

    lang_x = _text(2, 10, 0, 90)
    lang_x[:, 0] = lang_x[:, 5] = 98
    lang_x[:, 4] = 99
    attention_mask = torch.ones_like(lang_x)
    attention_mask[1, -1] = 0  # HF 5.x drops all-ones masks, which open_flamingo cannot handle (references.md 6b)
    with torch.no_grad():
        out = model(torch.randn(2, 2, 1, 3, 32, 32), lang_x, attention_mask=attention_mask, labels=lang_x)
    assert out.logits.shape == (2, 10, 100) and torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------------------
# transformers still works with the stand-ins importable


def test_transformers_does_not_see_the_torchvision_stand_in():
    from transformers.utils import import_utils

    assert importlib.util.find_spec("torchvision") is not None  # the stand-in is importable...
    assert not import_utils.is_torchvision_available()  # ...but transformers still says "not installed"
    assert not import_utils.is_torchvision_v2_available()
    assert not import_utils.is_timm_available()
    import datasets.config

    assert not datasets.config.TORCHVISION_AVAILABLE


def test_transformers_llama_tiny_forward(seeded):
    from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        assert model(torch.randint(0, 100, (2, 7))).logits.shape == (2, 7, 100)
    assert type(AutoModel.from_config(config)).__name__ == "LlamaModel"


def test_transformers_clip_image_processor_and_pipeline_import():
    import numpy as np
    from transformers import CLIPImageProcessor, pipeline  # noqa: F401

    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    pixel_values = processor(images=np.zeros((20, 24, 3), dtype=np.uint8), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16)


# ---------------------------------------------------------------------------------------------------------
# hf_mm and conversion never import torchvision, the stand-ins or any reference library

# stand-ins (tests/reference_stubs) and packages that cannot be installed here
NEVER_IMPORTED = frozenset({*STUB_PACKAGES, "dall_e", "_reference_standin", "reference_imports"})
# reference libraries (requirements-references.txt) and their lucidrains-only helpers
REFERENCE_LIBRARIES = frozenset({
    "open_clip", "open_clip_train", "coca_pytorch", "x_clip", "flamingo_pytorch", "dalle_pytorch", "open_flamingo",
    "vit_pytorch", "timm", "rotary_embedding_torch", "einops_exts", "axial_positional_embedding",
})
FORBIDDEN_IMPORTS = NEVER_IMPORTED | REFERENCE_LIBRARIES
SCANNED_DIRS = ("hf_mm", "conversion")


def forbidden_imports(source: str, filename: str = "<source>", forbidden=FORBIDDEN_IMPORTS,
                      top_level_only: bool = False) -> list[str]:
    """`import x`, `from x import y`, `importlib.import_module("x")` and `__import__("x")` of forbidden names
    (with `top_level_only`, only the statements that run when the module is imported)."""
    found = []
    tree = ast.parse(source, filename)
    for node in (tree.body if top_level_only else ast.walk(tree)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            func_name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if func_name in ("import_module", "__import__"):
                names = [node.args[0].value]
        found += [f"{filename}:{node.lineno}: {name}" for name in names
                  if name.split(".", 1)[0] in forbidden]
    return found


def test_forbidden_import_detector_catches_every_form():
    source = "\n".join([
        "import os, torchvision.transforms as T",
        "from open_clip.coca_model import CoCa",
        "def f():",
        "    import timm",
        "    return importlib.import_module('x_clip'), __import__('taming.models')",
        "from . import open_clip",  # relative: hf_mm's own module, allowed
        "import open_clip_like_but_different",  # different top-level name, allowed
    ])
    names = sorted(hit.split(": ", 1)[1] for hit in forbidden_imports(source))
    assert names == sorted(["torchvision.transforms", "open_clip.coca_model", "timm", "x_clip", "taming.models"])


def _hits(directory: str, **kwargs) -> list[str]:
    files = sorted((REPO_ROOT / directory).rglob("*.py"))
    assert files, f"no .py files found under {directory}"
    return [hit for path in files
            for hit in forbidden_imports(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)), **kwargs)]


def test_hf_mm_never_imports_reference_libraries_or_stand_ins():
    hits = _hits("hf_mm")
    assert not hits, "hf_mm must not import torchvision, the stand-ins or the reference libraries:\n  " + "\n  ".join(hits)


def test_conversion_imports_reference_libraries_only_where_it_verifies():
    """conversion/ may build the reference model inside its CLI functions (to load and verify an original
    checkpoint), but importing `conversion` must never import a reference library, and never a stand-in."""
    hits = _hits("conversion", forbidden=NEVER_IMPORTED) + _hits("conversion", forbidden=REFERENCE_LIBRARIES,
                                                                 top_level_only=True)
    assert not hits, "conversion/ imports at module level:\n  " + "\n  ".join(hits)
