"""Parity with flamingo-pytorch 0.1.2 (`FlamingoPaLM` + vit-pytorch `ViT`) through `conversion/flamingo_pytorch.py`."""

import pytest
import torch

from conversion.common import UnmappedTensorsError, max_abs_diff

from .helpers import REFERENCE_CONFIGS, converted_pair, media_prompt, pixels

TOL = 1e-4
CONFIGS = list(REFERENCE_CONFIGS)


@pytest.fixture(scope="module", params=CONFIGS)
def pair(request):
    ref, model = converted_pair(request.param)
    return request.param, ref, model


def _prompt(name, length=12):
    # "all-media" mode: lucidrains lets text before the first medium attend uniformly to every latent (its mask
    # leaves such rows fully masked); hf_mm has it attend to nothing. Start those prompts with a medium.
    first = 0 if not REFERENCE_CONFIGS[name].get("only_attend_immediate_media", True) else 2
    return media_prompt(name, 2, length, (first, 7))


@torch.no_grad()
def test_logits_with_images(pair):
    name, ref, model = pair
    ids, px = _prompt(name), pixels(name, 2, 2)
    diff = max_abs_diff(model(input_ids=ids, pixel_values=px).logits, ref(ids, images=px))
    assert diff <= TOL, f"{name}: images max abs diff {diff}"


@torch.no_grad()
def test_logits_with_videos(pair):
    name, ref, model = pair
    frames = REFERENCE_CONFIGS[name]["max_video_frames"]
    ids, video = _prompt(name), pixels(name, 2, 2, frames, seed=3)
    diff = max_abs_diff(model(input_ids=ids, pixel_values=video).logits, ref(ids, videos=video))
    assert diff <= TOL, f"{name}: videos max abs diff {diff}"


@torch.no_grad()
def test_logits_text_only(pair):
    name, ref, model = pair
    ids = media_prompt(name, 2, 10, ())
    diff = max_abs_diff(model(input_ids=ids).logits, ref(ids))
    assert diff <= TOL, f"{name}: text-only max abs diff {diff}"


@torch.no_grad()
def test_text_before_first_media_matches_reference_in_immediate_mode():
    name = CONFIGS[0]
    ref, model = converted_pair(name)
    ids, px = media_prompt(name, 2, 12, (5,)), pixels(name, 2, 1)
    ours = model(input_ids=ids, pixel_values=px).logits
    assert torch.isfinite(ours).all()
    assert max_abs_diff(ours, ref(ids, images=px)) <= TOL


@torch.no_grad()
def test_image_embeds_path_where_reference_crashes(pair):
    """The reference's `embeds=` path raises NameError; hf_mm's `image_embeds` equals the pixel path."""
    name, ref, model = pair
    ids, px = _prompt(name), pixels(name, 2, 2)
    with pytest.raises(NameError):
        ref(ids, embeds=torch.zeros(2, 2, 5, REFERENCE_CONFIGS[name]["dim"]))
    embeds = model.model.get_image_features(px)
    diff = max_abs_diff(model(input_ids=ids, image_embeds=embeds).logits, ref(ids, images=px))
    assert diff <= TOL


@torch.no_grad()
def test_greedy_generate_equals_naive_reference_decode(pair):
    name, ref, model = pair
    ids, px = _prompt(name, 8), pixels(name, 2, 2)
    seq = ids
    for _ in range(6):
        nxt = ref(seq, images=px)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat((seq, nxt), dim=1)
    # the reference never picks what hf_mm suppresses by default (<image>, pad): the same greedy path
    assert model.generation_config.suppress_tokens == [REFERENCE_CONFIGS[name]["media_token_id"], 0]
    assert not torch.isin(seq[:, 8:], torch.tensor(model.generation_config.suppress_tokens)).any()
    ours = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours, seq)


def test_every_tensor_is_accounted_for():
    name = CONFIGS[0]
    from .helpers import build_reference
    from conversion.flamingo_pytorch import convert

    ref = build_reference(name)
    state = ref.state_dict()
    state["layers.0.0.fn.norm.beta"] = torch.ones_like(state["layers.0.0.fn.norm.beta"])
    with pytest.raises(UnmappedTensorsError, match="beta"):
        convert(ref, state)
    state = ref.state_dict()
    state["stray.weight"] = torch.zeros(1)
    with pytest.raises(UnmappedTensorsError, match="stray"):
        convert(ref, state)


def test_trainable_parameters_after_freezing_match_paper_recipe():
    name = CONFIGS[0]
    ref, model = converted_pair(name)
    ids, px = _prompt(name), pixels(name, 2, 2)
    ref(ids, images=px)  # the reference freezes as a side effect of a flamingo-mode forward
    ref_trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen implicitly
    model(input_ids=ids, pixel_values=px)
    assert all(p.requires_grad for p in model.parameters())  # forward never freezes
    model.freeze_pretrained()
    ours = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # hf_mm also trains the video-frame time embedding, which belongs to the perceiver (the paper's recipe)
    assert ours == ref_trainable + model.model.perceiver.frame_position_embedding.numel()
    assert not any(p.requires_grad for p in model.model.vision_model.parameters())
    assert not model.model.embed_tokens.weight.requires_grad


def test_non_square_vit_images_are_rejected():
    """hf_mm's vision tower is square: a ViT built for (16, 8) images is refused with a message saying so, from its
    kwargs (build_reference) or, for an instance, from its non-square patch count."""
    from flamingo_pytorch import FlamingoPaLM
    from vit_pytorch.extractor import Extractor
    from vit_pytorch.vit import ViT

    from conversion.flamingo_pytorch import build_reference, convert

    arch = dict(REFERENCE_CONFIGS[CONFIGS[0]])
    vit = dict(arch.pop("vit"), image_size=(32, 16))
    with pytest.raises(ValueError, match=r"image_size=\(32, 16\): only square images are supported"):
        build_reference(dict(arch, vit=vit))
    ref = FlamingoPaLM(img_encoder=Extractor(ViT(**vit), return_embeddings_only=True), **arch)
    with pytest.raises(UnmappedTensorsError, match="only square images are supported: the ViT has 8 patches"):
        convert(ref)
