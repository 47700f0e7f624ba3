"""The real zero-shot-image-classification pipeline on a small saved random x-clip (loaded from its folder)."""

import math

import pytest
import torch
from transformers import AutoModelForZeroShotImageClassification, pipeline

import hf_mm  # noqa: F401
import tiny_models
from conversion.x_clip import x_clip_processor
from examples.synthetic_shapes import all_captions, caption_vocabulary, make_shapes_dataset
from ecosystem_helpers import saved_model_dir
from examples.train_x_clip import caption_processor, tiny_x_clip_config
from hf_mm.clip_bpe import CLIP_BPE_VOCAB_SIZE
from hf_mm.models.x_clip import XClipModel
from reference_imports import require_reference


@pytest.fixture(scope="module")
def x_clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    model = XClipModel(tiny_x_clip_config(processor.tokenizer, hidden_size=32, layers=1))
    return saved_model_dir(tmp_path_factory.mktemp("x_clip"), model, processor)


@pytest.fixture(scope="module")
def images():
    return list(make_shapes_dataset(2, seed=1)["image"])


@pytest.mark.parametrize("options", [{}, {"hypothesis_template": "{}"}])
def test_scores_are_the_models_softmax(x_clip_dir, images, options):
    classifier = pipeline("zero-shot-image-classification", model=str(x_clip_dir), device="cpu")
    assert type(classifier.model) is XClipModel
    labels = all_captions()[:5]
    result = classifier(images[0], candidate_labels=labels, **options)
    assert sorted(r["label"] for r in result) == sorted(labels)
    scores = [r["score"] for r in result]
    assert math.isclose(sum(scores), 1.0, rel_tol=1e-5) and scores == sorted(scores, reverse=True)

    # the same numbers straight from the model: softmax over logits_per_image of the templated labels
    template = options.get("hypothesis_template", "This is a photo of {}.")
    model = AutoModelForZeroShotImageClassification.from_pretrained(x_clip_dir).eval()
    inputs = classifier.tokenizer([template.format(label) for label in labels], padding=True, return_tensors="pt")
    pixels = classifier.image_processor(images[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      pixel_values=pixels).logits_per_image.softmax(-1)[0]
    expected = {label: p.item() for label, p in zip(labels, probs)}
    for r in result:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-6)
    assert max(scores) - min(scores) > 1e-4  # the labels really are told apart


def test_batched_images(x_clip_dir, images):
    classifier = pipeline("zero-shot-image-classification", model=str(x_clip_dir), device="cpu")
    labels = all_captions()[5:8]
    batched = classifier(images, candidate_labels=labels, hypothesis_template="{}")
    assert len(batched) == 2
    for image, result in zip(images, batched):
        assert math.isclose(sum(r["score"] for r in result), 1.0, rel_tol=1e-5)
        single = classifier(image, candidate_labels=labels, hypothesis_template="{}")
        expected = {r["label"]: r["score"] for r in single}
        assert {r["label"]: r["score"] for r in result} == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text_encode_without_mask", [False, True])
def test_converted_x_clip_pipeline_tokenizes_like_its_processor(tmp_path, images, text_encode_without_mask):
    """The pipeline loads only the tokenizer the converter saves: its ids (no start/end tokens, padded with 0,
    truncated to text_seq_len) and so its scores are those of the model's own processor, long labels included
    (`text_encode_without_mask` makes the padded ids reach the encoder)."""
    require_reference("x_clip")
    torch.manual_seed(0)
    config = tiny_models.x_clip_config(
        text_config=dict(vocab_size=CLIP_BPE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         head_dim=16, max_position_embeddings=12),
        text_encode_without_mask=text_encode_without_mask,
    )
    processor = x_clip_processor(config)
    saved_model_dir(tmp_path, XClipModel(config), processor)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")
    labels = ["cat", "a small red circle", "word " * 30]
    result = classifier(images[0], candidate_labels=labels)

    texts = [f"This is a photo of {label}." for label in labels]
    inputs = processor(text=texts, images=images[0], return_tensors="pt")
    assert torch.equal(classifier.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"], inputs["input_ids"])
    assert inputs["input_ids"].shape[1] == 12 and inputs["input_ids"][0, -1] == 0
    with torch.no_grad():
        probs = classifier.model(**inputs).logits_per_image.softmax(-1)[0]
    assert {r["label"]: r["score"] for r in result} == pytest.approx(
        {label: p.item() for label, p in zip(labels, probs)}, abs=1e-6)
