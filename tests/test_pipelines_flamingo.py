"""The real image-text-to-text pipeline on a small saved random Flamingo (loaded from its folder): prompt-free
and prompted captioning, generate kwargs passed through, batches."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

import hf_mm  # noqa: F401
from examples.synthetic_shapes import caption_vocabulary, make_shapes_dataset
from ecosystem_helpers import saved_model_dir
from examples.train_flamingo import caption_processor, tiny_flamingo
from hf_mm.models.flamingo import FlamingoForConditionalGeneration
from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor


@pytest.fixture(scope="module")
def flamingo_dir(tmp_path_factory):
    torch.manual_seed(0)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    model = tiny_flamingo(processor, hidden_size=32)
    with torch.no_grad():  # open the tanh gates (0 at init) so the image changes the text
        for block in model.model.cross_attn_layers.values():
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(1.0)
    return saved_model_dir(tmp_path_factory.mktemp("flamingo"), model, processor)


@pytest.fixture(scope="module")
def captioner(flamingo_dir):
    return pipeline("image-text-to-text", model=str(flamingo_dir), device="cpu")


@pytest.fixture(scope="module")
def images():
    return list(make_shapes_dataset(2, seed=1)["image"])


def direct(captioner, image, text, **generate_kwargs):
    """What the model itself generates for (image, text): the new tokens and their decoded text."""
    inputs = captioner.processor(images=image, text=text, return_tensors="pt")
    ids = captioner.model.generate(**inputs, do_sample=False, **generate_kwargs)[:, inputs["input_ids"].shape[1]:]
    return ids[0], captioner.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_loads_flamingo_and_its_processor(captioner, flamingo_dir):
    assert type(captioner.model) is FlamingoForConditionalGeneration
    assert type(captioner.processor) is FlamingoProcessor
    assert type(AutoModelForImageTextToText.from_pretrained(flamingo_dir)) is FlamingoForConditionalGeneration
    processor = AutoProcessor.from_pretrained(flamingo_dir)
    assert processor(text="")["input_ids"].tolist() == [[processor.tokenizer.bos_token_id]]
    assert processor(images=make_shapes_dataset(1)["image"][0], text="")["input_ids"].tolist() == [
        [processor.tokenizer.bos_token_id, processor.media_token_id]]


def test_prompt_free_captioning(captioner, images):
    vocab = set(caption_vocabulary())
    out = captioner(images=images[0], text="", max_new_tokens=4, return_full_text=False)
    words = out[0]["generated_text"].split()
    assert 1 <= len(words) <= 4 and set(words) <= vocab
    ids, expected = direct(captioner, images[0], "", max_new_tokens=4)
    assert out[0]["generated_text"].strip() == expected
    media = captioner.processor.media_token_id
    assert media not in ids.tolist()  # the generation config suppresses <image>
    full = captioner(images=images[0], text="", max_new_tokens=4)
    assert full[0]["generated_text"].strip() == expected


def test_prompted_captioning(captioner, images):
    prompted = captioner(images=images[0], text="a red", max_new_tokens=3)
    assert prompted[0]["generated_text"].startswith("a red")
    new = captioner(images=images[0], text="a red", max_new_tokens=3, return_full_text=False)
    assert new[0]["generated_text"].strip() == direct(captioner, images[0], "a red", max_new_tokens=3)[1]
    assert prompted[0]["generated_text"].split() == ["a", "red", *new[0]["generated_text"].split()]
    # an explicit media token where the image goes gives the same as the implicit one in front
    explicit = captioner(images=images[0], text="<image>a red", max_new_tokens=3, return_full_text=False)
    assert explicit[0]["generated_text"] == new[0]["generated_text"]


def test_generate_kwargs_pass_through(captioner, images):
    """Beam search and max_new_tokens reach model.generate: the pipeline equals generate(num_beams=2)."""
    out = captioner(images=images[1], text="", generate_kwargs={"num_beams": 2}, max_new_tokens=5,
                    return_full_text=False)
    ids, expected = direct(captioner, images[1], "", num_beams=2, max_new_tokens=5)
    assert out[0]["generated_text"].strip() == expected and len(ids) <= 5
    short = captioner(images=images[1], text="", generate_kwargs={"num_beams": 2}, max_new_tokens=1,
                      return_full_text=False)
    assert len(short[0]["generated_text"].split()) <= 1


def test_batched_images_and_prompts(captioner, images):
    outputs = captioner(images=images, text=["", "a blue"], max_new_tokens=3, return_full_text=False)
    assert len(outputs) == 2
    for image, text, out in zip(images, ["", "a blue"], outputs):
        single = captioner(images=image, text=text, max_new_tokens=3, return_full_text=False)
        assert (out[0] if isinstance(out, list) else out)["generated_text"] == single[0]["generated_text"]
