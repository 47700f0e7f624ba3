"""Real transformers pipelines on a small saved random CoCa, and the demo end to end (`--quick`)."""

import json
import math

import pytest
import torch
from transformers import AutoModel, AutoProcessor, pipeline

import hf_mm  # noqa: F401
from examples.coca_common import caption_processor, tiny_coca_config
from examples.synthetic_shapes import all_captions, caption_vocabulary, make_shapes_dataset
from ecosystem_helpers import saved_model_dir
from hf_mm.models.coca import CocaModel


@pytest.fixture(scope="module")
def coca_dir(tmp_path_factory):
    torch.manual_seed(0)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    model = CocaModel(tiny_coca_config(processor.tokenizer, hidden_size=32, layers=1))
    return saved_model_dir(tmp_path_factory.mktemp("coca"), model, processor)


@pytest.fixture(scope="module")
def images():
    return list(make_shapes_dataset(2, seed=1)["image"])


def test_auto_classes_reload(coca_dir):
    assert isinstance(AutoModel.from_pretrained(coca_dir), CocaModel)
    processor = AutoProcessor.from_pretrained(coca_dir)
    assert processor.tokenizer("")["input_ids"] == [processor.tokenizer.bos_token_id]


def test_zero_shot_image_classification(coca_dir, images):
    classifier = pipeline("zero-shot-image-classification", model=str(coca_dir), device="cpu")
    labels = all_captions()[:5]
    result = classifier(images[0], candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    assert math.isclose(sum(r["score"] for r in result), 1.0, rel_tol=1e-5)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    batched = classifier(images, candidate_labels=labels[:3], hypothesis_template="{} [EOS]")
    assert len(batched) == 2 and all(math.isclose(sum(r["score"] for r in b), 1.0, rel_tol=1e-5) for b in batched)


def test_image_text_to_text_prompt_free_and_prompted(coca_dir, images):
    captioner = pipeline("image-text-to-text", model=str(coca_dir), device="cpu")
    vocab = set(caption_vocabulary())
    out = captioner(images=images[0], text="", max_new_tokens=4, return_full_text=False)
    words = out[0]["generated_text"].split()
    assert 1 <= len(words) <= 4 and set(words) <= vocab

    prompted = captioner(images=images[0], text="a red", max_new_tokens=3)
    assert prompted[0]["generated_text"].startswith("a red")
    new = captioner(images=images[0], text="a red", max_new_tokens=3, return_full_text=False)
    assert len(new[0]["generated_text"].split()) <= 3


def test_generate_kwargs_pass_through(coca_dir, images):
    """Pipeline beam search equals model.generate(num_beams=2) on the same inputs."""
    captioner = pipeline("image-text-to-text", model=str(coca_dir), device="cpu")
    out = captioner(images=images[1], text="", generate_kwargs={"num_beams": 2}, max_new_tokens=5,
                    return_full_text=False)
    processor, model = captioner.processor, captioner.model
    inputs = processor(images=images[1], text="", return_tensors="pt")
    ids = model.generate(**inputs, num_beams=2, max_new_tokens=5, do_sample=False)
    expected = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert out[0]["generated_text"].strip() == expected.strip()
    assert ids.shape[1] <= inputs["input_ids"].shape[1] + 5


def test_demo_quick_end_to_end(tmp_path):
    from examples import demo

    metrics = demo.main(["--quick", "--output-dir", str(tmp_path)])
    for name in ("metrics.json", "grid.png", "loss.png", "model/config.json", "model/processor_config.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("zero_shot_accuracy", "caption_exact_match_greedy", "caption_exact_match_beam",
                "caption_token_accuracy_greedy", "caption_token_accuracy_beam", "final_train_loss"):
        assert isinstance(saved[key], float) and 0 <= saved[key] and math.isfinite(saved[key]), key
