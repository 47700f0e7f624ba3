"""Captioning through the processor: decoding generate() outputs of an open_clip-style CoCa (pad id 0 is the
ordinary CLIP BPE token "!"), empty prompts, and the image-text-to-text pipeline on both kinds of processor."""

import pytest
import torch
from transformers import pipeline

import hf_mm  # noqa: F401  (registers CoCa with the Auto classes)
import tiny_models as tm
from hf_mm.models.coca import CocaModel, CocaProcessor

from .references import tiny_coca_config

SOT, EOT, PAD = 49406, 49407, 0  # open_clip: <start_of_text>, <end_of_text>, pad id 0 (= "!")
GREEDY = dict(do_sample=False, max_new_tokens=4, min_new_tokens=4)
PIPE = dict(generate_kwargs=GREEDY)


@pytest.fixture(scope="module")
def open_clip_processor():
    return CocaProcessor.from_open_clip(image_size=16, context_length=24)


@pytest.fixture(scope="module")
def open_clip_model():
    """A tiny CoCa with open_clip's CLIP BPE vocabulary and special ids, as `conversion.open_clip_coca` writes."""
    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=24, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD)
    return CocaModel(tiny_coca_config(text_config=text)).eval()


def _images(n=1, seed=0):
    return [tm.pil_image(20, 24, seed=seed + i) for i in range(n)]


def test_the_pad_id_is_an_ordinary_token_of_the_clip_bpe(open_clip_processor):
    tokenizer = open_clip_processor.tokenizer
    assert tokenizer.decode([PAD]) == "!" and PAD not in tokenizer.all_special_ids
    assert open_clip_processor(text="")["input_ids"] == [SOT, EOT]


def test_prompt_free_caption_decodes_without_the_left_padding(open_clip_processor, open_clip_model):
    """`text=""` is `[SOT, EOT]`: generate() drops the EOT and pads on the left to keep the prompt's width, so its
    output starts with the pad id, which must not decode as "!"."""
    inputs = open_clip_processor(images=_images(), text="", return_tensors="pt")
    with torch.no_grad():
        out = open_clip_model.generate(**inputs, **GREEDY)
        plain = open_clip_model.generate(pixel_values=inputs["pixel_values"], **GREEDY)
    assert out[0, 0] == PAD and out[0, 1] == SOT  # left padding, so out[:, 2:] are the new tokens
    assert torch.equal(out[:, 1:], plain)
    expected = open_clip_processor.tokenizer.batch_decode(plain, skip_special_tokens=True)
    assert open_clip_processor.batch_decode(out, skip_special_tokens=True) == expected
    assert open_clip_processor.decode(out[0], skip_special_tokens=True) == expected[0]
    assert open_clip_processor.post_process_image_text_to_text(out) == expected
    assert open_clip_processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == \
        open_clip_processor.tokenizer.batch_decode(plain[:, 1:], skip_special_tokens=True)
    # beam search keeps the padded prompt too
    with torch.no_grad():
        beams = open_clip_model.generate(**inputs, num_beams=2, max_new_tokens=4, min_new_tokens=4)
    assert not open_clip_processor.batch_decode(beams, skip_special_tokens=True)[0].startswith("!")


def test_batched_prompts_of_different_lengths_decode_without_padding(open_clip_processor, open_clip_model):
    texts = ["", "a red circle"]
    inputs = open_clip_processor(images=_images(2), text=texts, return_tensors="pt")
    assert inputs["input_ids"][0, -1] == PAD  # the processor pads on the right, with id 0
    with torch.no_grad():
        out = open_clip_model.generate(**inputs, **GREEDY)
        alone = [open_clip_model.generate(**open_clip_processor(images=_images(2)[i], text=t, return_tensors="pt"),
                                          **GREEDY) for i, t in enumerate(texts)]
    decoded = open_clip_processor.batch_decode(out, skip_special_tokens=True)
    assert decoded == [open_clip_processor.batch_decode(a, skip_special_tokens=True)[0] for a in alone]
    assert decoded[1].startswith("a red circle")
    assert open_clip_processor.post_process_image_text_to_text(out) == decoded
    # the processor's own right-padded ids decode without the padding after <end_of_text>
    assert open_clip_processor.batch_decode(inputs["input_ids"], skip_special_tokens=True) == ["", "a red circle"]


def test_only_padding_next_to_bos_or_eos_is_dropped(open_clip_processor):
    """Left padding before a row's BOS and right padding after its EOS are dropped; a "!" anywhere else (id 0 in
    text, rows without BOS such as already-sliced new tokens) is text and stays."""
    a, red = open_clip_processor.tokenizer.convert_tokens_to_ids(["a</w>", "red</w>"])
    decode = open_clip_processor.batch_decode
    assert decode([[PAD, PAD, SOT, a, red, EOT, PAD, PAD]], skip_special_tokens=True) == ["a red"]
    assert decode([[PAD, PAD, SOT, a, red, EOT, PAD]]) == ["<start_of_text>a red <end_of_text>"]
    assert decode([[a, PAD, red]], skip_special_tokens=True) == ["a !red"]
    assert decode([[PAD, a, red]], skip_special_tokens=True) == ["!a red"]  # no BOS: untouched
    assert decode([[SOT, a, red, PAD]], skip_special_tokens=True) == ["a red !"]  # no EOS: untouched
    assert decode(torch.tensor([[PAD, SOT, a]]), skip_special_tokens=True) == ["a"]
    assert open_clip_processor.decode([PAD, SOT, a, EOT, PAD], skip_special_tokens=True) == "a"
    assert open_clip_processor.decode(torch.tensor([PAD, SOT, a]), skip_special_tokens=True) == "a"
    assert open_clip_processor.decode(PAD) == "!"


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory, open_clip_processor, open_clip_model):
    path = tmp_path_factory.mktemp("coca_open_clip")
    open_clip_model.save_pretrained(path)
    open_clip_processor.save_pretrained(path)
    return str(path)


def test_pipeline_prompt_free_caption_has_no_leading_padding(open_clip_dir, open_clip_processor, open_clip_model):
    captioner = pipeline("image-text-to-text", model=open_clip_dir, device="cpu")
    image = _images()[0]
    with torch.no_grad():
        plain = open_clip_model.generate(pixel_values=open_clip_processor(images=image, return_tensors="pt")
                                         ["pixel_values"], **GREEDY)
    expected = open_clip_processor.tokenizer.decode(plain[0], skip_special_tokens=True)
    full = captioner(images=image, text="", **PIPE)
    new = captioner(images=image, text="", return_full_text=False, **PIPE)
    assert full[0]["generated_text"] == expected and new[0]["generated_text"] == expected
    prompted = captioner(images=image, text="a red", **PIPE)[0]["generated_text"]
    prompted_new = captioner(images=image, text="a red", return_full_text=False, **PIPE)[0]["generated_text"]
    assert prompted.startswith("a red") and not prompted.startswith("a red a red")
    assert prompted == "a red" + prompted_new


def test_pipeline_batched_prompts_of_different_lengths(open_clip_dir):
    captioner = pipeline("image-text-to-text", model=open_clip_dir, device="cpu")
    images, texts = _images(2), ["", "a red circle"]
    batched = captioner(images=images, text=texts, **PIPE)
    alone = [captioner(images=i, text=t, **PIPE)[0]["generated_text"] for i, t in zip(images, texts)]
    assert [b["generated_text"] for b in batched] == alone
    assert not alone[0].startswith("!") and alone[1].startswith("a red circle")
    new = captioner(images=images, text=texts, return_full_text=False, **PIPE)
    assert [b["generated_text"] for b in new] == [alone[0], alone[1][len("a red circle"):]]


# -- empty prompts (tokenizers that add no BOS) ----------------------------------------------------------
@pytest.fixture(scope="module")
def no_bos():
    """coca-pytorch conversions with a `--tokenizer` that adds no BOS: `text=""` encodes to no ids at all."""
    processor = tm.processor("coca")
    assert processor(text="")["input_ids"] == []
    return tm.build("coca").eval(), processor


def test_an_empty_prompt_is_no_prompt(no_bos):
    model, processor = no_bos
    inputs = processor(images=_images(), text="", return_tensors="pt")
    assert inputs["input_ids"].shape == (1, 0)
    with torch.no_grad():
        plain = model.generate(pixel_values=inputs["pixel_values"], **GREEDY)
        assert torch.equal(model.generate(**inputs, **GREEDY), plain)
        beams = dict(num_beams=2, max_new_tokens=4, min_new_tokens=4)
        assert torch.equal(model.generate(**inputs, **beams),
                           model.generate(pixel_values=inputs["pixel_values"], **beams))
        assert torch.equal(model.generate(inputs["input_ids"], pixel_values=inputs["pixel_values"], **GREEDY), plain)
    assert plain[0, 0] == model.config.text_config.bos_token_id


def test_an_empty_row_in_a_batch_starts_from_bos(no_bos):
    model, processor = no_bos
    texts = ["", "a red"]
    inputs = processor(images=_images(2), text=texts, return_tensors="pt")
    assert inputs["attention_mask"][0].sum() == 0
    bos, pad = model.config.text_config.bos_token_id, model.config.text_config.pad_token_id
    ids, mask = model.caption_prompt(inputs["input_ids"], inputs["attention_mask"])
    assert ids[0].tolist() == [pad, bos] and mask[0].tolist() == [0, 1]
    with torch.no_grad():
        out = model.generate(**inputs, **GREEDY)
        alone = model.generate(pixel_values=inputs["pixel_values"][:1], **GREEDY)
    assert torch.equal(out[0, 1:], alone[0])


def test_an_empty_prompt_without_a_bos_token_id_is_a_clear_error(no_bos):
    _, processor = no_bos
    model = tm.build("coca").eval()
    model.config.text_config.bos_token_id = model.generation_config.bos_token_id = None
    for texts in (["", ""], ["", "a red"]):
        inputs = processor(images=_images(2), text=texts, return_tensors="pt")
        with pytest.raises(ValueError, match="empty prompt.*bos_token_id"):
            model.generate(**inputs, **GREEDY)
    assert model.generate(**processor(images=_images(1), text="a red", return_tensors="pt"), **GREEDY).shape == (1, 6)


def test_pipeline_with_an_empty_prompt_and_no_bos(no_bos, tmp_path):
    model, processor = no_bos
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    captioner = pipeline("image-text-to-text", model=str(tmp_path), device="cpu")
    image = _images()[0]
    with torch.no_grad():
        plain = model.generate(pixel_values=processor(images=image, return_tensors="pt")["pixel_values"], **GREEDY)
    expected = processor.tokenizer.decode(plain[0], skip_special_tokens=True)
    assert captioner(images=image, text="", **PIPE)[0]["generated_text"] == expected
    assert captioner(images=image, text="", return_full_text=False, **PIPE)[0]["generated_text"] == expected
