"""FlamingoProcessor: media tokens + pixel_values for interleaved prompts, AutoProcessor round trip."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, CLIPImageProcessorPil, PreTrainedTokenizerFast

import hf_mm  # noqa: F401
from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor

from .helpers import tiny_model

WORDS = ["[PAD]", "[BOS]", "[EOS]", "<image>", "a", "cat", "dog", "and", "photo", "of"]


def _processor():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image>", behavior="isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                        eos_token="[EOS]", additional_special_tokens=["<image>"], padding_side="left")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return FlamingoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8))


def test_interleaved_prompts():
    proc = _processor()
    out = proc(text=["<image> a cat and <image> a dog", "<image> a photo of <image> a cat"],
               images=[[_image(0), _image(1)], [_image(2), _image(3)]])
    assert out["pixel_values"].shape == (2, 2, 3, 16, 16)
    assert out["input_ids"].tolist()[0] == [3, 4, 5, 7, 3, 4, 6]
    assert (out["input_ids"] == proc.media_token_id).sum(-1).tolist() == [2, 2]
    single = proc.image_processor([_image(1)], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(out["pixel_values"][0, 1], single)


def test_media_tokens_inserted_when_missing_and_padding():
    proc = _processor()
    out = proc(text=["a cat", "a photo of a dog"], images=[[_image(0)], [_image(1)]])
    assert out["input_ids"][0].tolist() == [0, 0, 0, 3, 4, 5]
    assert out["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1]
    assert out["input_ids"][1, 0].item() == 3


def test_mismatched_media_count_raises():
    proc = _processor()
    with pytest.raises(ValueError, match="2 '<image>' tokens but 1 images"):
        proc(text="<image> a <image> cat", images=[_image(0)])
    with pytest.raises(ValueError, match="same number of images"):
        proc(text=["a", "cat"], images=[[_image(0)], [_image(1), _image(2)]])


def test_processor_feeds_generate_and_round_trips(tmp_path):
    proc = _processor()
    model = tiny_model()
    inputs = proc(text=["<image> a cat and <image>", "<image> a <image> dog"],
                  images=[[_image(0), _image(1)], [_image(2), _image(3)]])
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 2
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, FlamingoProcessor)
    again = loaded(text=["<image> a cat and <image>", "<image> a <image> dog"],
                   images=[[_image(0), _image(1)], [_image(2), _image(3)]])
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(again["pixel_values"], inputs["pixel_values"])


def test_image_processor_arguments_are_honoured():
    """They used to go to the tokenizer only and be ignored for the images."""
    proc = _processor()
    big = dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    assert proc(text="a", images=_image(0), **big)["pixel_values"].shape == (1, 1, 3, 24, 24)
    assert proc(text="a", images=_image(0), images_kwargs=big)["pixel_values"].shape == (1, 1, 3, 24, 24)
    assert proc(text="a", images=_image(0))["pixel_values"].shape == (1, 1, 3, 16, 16)


def test_media_tokens_without_media_are_refused():
    """A prompt marking an image that was not given used to run silently as text only."""
    model = tiny_model()
    ids = torch.tensor([[model.config.media_token_id, 4, 5]])
    with pytest.raises(ValueError, match="0 media given per sample.*pass pixel_values"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="0 media given per sample"):
        model.generate(input_ids=ids, max_new_tokens=2)
    assert model(input_ids=ids[:, 1:]).logits.shape[:2] == (1, 2)  # text only, no media token: fine


def test_token_type_ids_of_bert_style_tokenizers_are_dropped(tmp_path):
    """A tokenizer returning `token_type_ids` made `model.generate(**processor(...))` fail ("model_kwargs are not
    used by the model"); the processor returns only what Flamingo takes."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[CLS]", "[SEP]", "<image>", "a", "cat", "[UNK]", "[MASK]"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"), additional_special_tokens=["<image>"])
    assert "token_type_ids" in tokenizer("a cat")
    proc = FlamingoProcessor(image_processor=_processor().image_processor, tokenizer=tokenizer)
    inputs = proc(text=["<image> a cat", "<image> a"], images=[_image(0), _image(1)])
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    assert tiny_model().generate(**inputs, max_new_tokens=2, do_sample=False).shape == (2, 7)
