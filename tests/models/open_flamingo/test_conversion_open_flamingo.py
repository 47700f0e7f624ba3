"""`convert_checkpoint`: files in (checkpoint.pt, LM folder with an offline tokenizer) -> model + processor out."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import hf_mm  # noqa: F401
from conversion.open_flamingo import convert_checkpoint

from open_flamingo_helpers import (
    CONFIGS, EOC, MEDIA, build, few_shot_prompt, lm_config, lm_tokenizer, pair, trained_tensors, vision_x,
)

NAME = "llama-every1-quickgelu"


def _image(seed, size=(40, 30)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def test_files_to_model_and_processor(tmp_path):
    ref, _ = pair(NAME)
    torch.save(ref.state_dict(), tmp_path / "checkpoint.pt")
    lm_dir = tmp_path / "lm"
    lm_config(CONFIGS[NAME][0], CONFIGS[NAME][1]).save_pretrained(lm_dir)  # config only: the checkpoint is full
    lm_tokenizer().save_pretrained(lm_dir)
    model, processor, report = convert_checkpoint(tmp_path / "checkpoint.pt", lm_dir, vision_head_width=24)
    assert report["parity"]["logits"] <= 1e-4
    assert (model.config.media_token_id, model.config.eoc_token_id) == (MEDIA, EOC)  # OpenFlamingo's order
    assert model.generation_config.eos_token_id == EOC

    out_dir = tmp_path / "converted"
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(out_dir).eval()
    processor = AutoProcessor.from_pretrained(out_dir)
    prompts = ["<image>w5 w6<|endofchunk|><image>w7", "<image>w8<|endofchunk|><image>w9 w10 w11"]
    inputs = processor(text=prompts, images=[[_image(0), _image(1)], [_image(2), _image(3)]])
    assert inputs["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert inputs["input_ids"][0].tolist() == [0, MEDIA, 5, 6, EOC, MEDIA, 7]  # left padding
    assert model.generation_config.suppress_tokens == [MEDIA]  # saved; the LM config has no pad token
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with torch.no_grad():
        expected = ref.generate(inputs["pixel_values"][:, :, None], inputs["input_ids"],
                                attention_mask=inputs["attention_mask"], max_new_tokens=4, min_new_tokens=4,
                                suppress_tokens=[MEDIA], pad_token_id=0)
    assert torch.equal(generated, expected)
    assert processor.batch_decode(generated[:, 7:])[0].count("w") == 4


def _resized_reference(kind, tmp_path):
    """The LM as published (vocab 98 = its tokenizer, saved with weights) and open_flamingo's `Flamingo` around it
    after the factory's `resize_token_embeddings(len(tokenizer))` (100 rows: `<|endofchunk|>`, `<image>`)."""
    from transformers import AutoModelForCausalLM

    config = lm_config(kind, CONFIGS[NAME][1])
    config.vocab_size = EOC
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(tmp_path / "lm")
    lm_tokenizer().save_pretrained(tmp_path / "lm")
    lm.resize_token_embeddings(EOC + 2, mean_resizing=False)
    return build(NAME, language_model=lm)


def test_vocab_size_comes_from_the_resized_embeddings(tmp_path):
    ref = _resized_reference("llama", tmp_path)
    assert not ref.lang_encoder.config.tie_word_embeddings  # the untied head was resized as well
    torch.save(ref.state_dict(), tmp_path / "checkpoint.pt")
    model, processor, report = convert_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "lm", vision_head_width=24)
    assert model.config.text_config.vocab_size == 100 and report["parity"]["logits"] <= 1e-4
    ids, px = few_shot_prompt(), vision_x(NAME)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, pixel_values=px).logits, ref(px, ids).logits,
                                   atol=1e-4, rtol=1e-4)


def test_embeddings_and_head_of_different_vocab_sizes_are_rejected(tmp_path):
    """A checkpoint.pt holding only the trained tensors: its resized embeddings (100 rows) do not fit the LM folder's
    head (98 rows), whose resized rows were never saved."""
    ref = _resized_reference("llama", tmp_path)
    torch.save(trained_tensors(ref.state_dict()), tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"input embeddings and output head disagree on the vocab size: .*100.*98"):
        convert_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "lm", vision_head_width=24)
