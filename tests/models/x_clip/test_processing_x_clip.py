"""XClipProcessor: x-clip's own token ids from its BPE file, padding/truncation, images, bad input, and the
save -> AutoProcessor round trip in a fresh process."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

import hf_mm  # noqa: F401  (registers the Auto classes)
from hf_mm.clip_bpe import CLIP_BPE_VOCAB_SIZE, OPENAI_CLIP_SPECIAL_TOKENS, clip_tokenizer_from_bpe
from hf_mm.models.x_clip import XClipConfig, XClipModel
from hf_mm.models.x_clip.processing_x_clip import XClipProcessor
from reference_imports import require_reference

ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["A photo of a CAT!", "two dogs, playing   in the snow.", "x-clip's tokenizer 123"]


@pytest.fixture(scope="module")
def x_clip_tokenizer():
    return require_reference("x_clip.tokenizer").tokenizer


@pytest.fixture(scope="module")
def processor():
    """CLIP BPE from x-clip's own vocabulary file, 16 px images, pad id 0, the tokenizer's start/end tokens."""
    bpe = require_reference("x_clip.tokenizer").default_bpe()
    tokenizer = clip_tokenizer_from_bpe(bpe, 12, OPENAI_CLIP_SPECIAL_TOKENS)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return XClipProcessor(image_processor, tokenizer, text_pad_id=0)


@pytest.fixture(scope="module")
def x_clip_ids_processor(processor):
    """The same, with x-clip's ids by default: no start/end tokens (what the converter writes)."""
    return XClipProcessor(processor.image_processor, processor.tokenizer, text_pad_id=0, add_special_tokens=False)


def image(seed, shape=(30, 21, 3)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_token_ids_equal_x_clip_tokenize(processor, x_clip_ids_processor, x_clip_tokenizer):
    """x-clip encodes without start/end tokens and pads with 0; `add_special_tokens=False` (the processor's default
    or the call's argument) reproduces it exactly, over the same 49408-token vocabulary."""
    tokenizer = processor.tokenizer
    assert len(tokenizer) == CLIP_BPE_VOCAB_SIZE == x_clip_tokenizer.vocab_size
    assert tokenizer.get_vocab() == x_clip_tokenizer.encoder
    ours = x_clip_ids_processor(text=TEXTS, return_tensors="pt")
    expected = x_clip_tokenizer.tokenize(TEXTS, context_length=12)
    assert torch.equal(ours["input_ids"], expected)
    assert torch.equal(ours["attention_mask"].bool(), expected != 0)  # none of these texts contains "!" mid-row
    assert set(ours) == {"input_ids", "attention_mask"}  # no token_type_ids
    assert torch.equal(processor(text=TEXTS, add_special_tokens=False, return_tensors="pt")["input_ids"], expected)
    with_special = x_clip_ids_processor(text=TEXTS, add_special_tokens=True, return_tensors="pt")["input_ids"]
    assert (with_special[:, 0] == tokenizer.bos_token_id).all()  # the call's argument wins over the default


def test_padding_truncation_and_images(processor):
    out = processor(images=[image(0), image(1)], text=["a cat", "a photo of a dog in the snow " * 3],
                    return_tensors="pt")
    assert out["input_ids"].shape == (2, 12)  # truncated to model_max_length (= text_seq_len)
    tok = processor.tokenizer
    assert out["input_ids"][0, :5].tolist() == [tok.bos_token_id, *tok("a cat", add_special_tokens=False)["input_ids"],
                                               tok.eos_token_id, 0]  # padded with 0, not the pad token
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1] + [0] * 8
    assert out["pixel_values"].shape == (2, 3, 16, 16)
    single = processor.image_processor(image(1), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values"][1:], single)
    longest = processor(text=["a cat", "a photo of a dog"], return_tensors="pt", padding="max_length")
    assert longest["input_ids"].shape == (2, 12)


def test_processor_output_feeds_the_model(processor):
    torch.manual_seed(0)
    config = XClipConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, head_dim=16, max_position_embeddings=12),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           head_dim=16, patch_dropout=0.0),
        projection_dim=16,
    )
    model = XClipModel(config).eval()
    inputs = processor(images=[image(0), image(1)], text=["a cat", "a dog on the grass"], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)


def test_bad_input(processor):
    with pytest.raises(ValueError, match="needs text .* images, or both"):
        processor()
    with pytest.raises(TypeError, match="text must be a string or a list of strings, got int"):
        processor(text=3)
    with pytest.raises(ValueError, match="text_pad_id must be a non-negative int"):
        XClipProcessor(processor.image_processor, processor.tokenizer, text_pad_id=-1)
    with pytest.raises(ValueError, match="add_special_tokens must be True, False or None, got 'no'"):
        XClipProcessor(processor.image_processor, processor.tokenizer, add_special_tokens="no")


def test_round_trips_through_auto_processor_in_a_fresh_process(x_clip_ids_processor, tmp_path):
    processor = x_clip_ids_processor
    XClipConfig(text_config=dict(vocab_size=len(processor.tokenizer), max_position_embeddings=12),
                vision_config=dict(image_size=16, patch_size=8)).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image(3, (19, 27, 3)).save(tmp_path / "image.png")
    texts = ["a red circle", "a small blue square left of a circle!"]
    expected = processor(images=Image.open(tmp_path / "image.png"), text=texts, return_tensors="pt")
    script = textwrap.dedent(f"""
        import torch, hf_mm
        from PIL import Image
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r})
        assert type(processor).__name__ == "XClipProcessor", processor
        assert processor.text_pad_id == 0 and processor.add_special_tokens is False, processor
        out = processor(images=Image.open({str(tmp_path / 'image.png')!r}), text={texts!r}, return_tensors="pt")
        torch.save(dict(out), {str(tmp_path / 'processed.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "processed.pt", weights_only=True)
    assert set(got) == set(expected)
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(got[key], expected[key]), key
    assert expected["input_ids"][0, -1] == 0  # the padded row really exercises text_pad_id


def test_x_clip_tokenizer_alone_gives_x_clip_s_ids_and_reloads(x_clip_tokenizer, tmp_path):
    """`XClipTokenizer` (what the converter saves) needs no processor: no start/end tokens, padding with 0 (also via
    `pad`), truncation to model_max_length unless `truncation=False`; AutoTokenizer reloads it as such."""
    from transformers import AutoTokenizer

    from hf_mm.models.x_clip.tokenization_x_clip import XClipTokenizer

    bpe = require_reference("x_clip.tokenizer").default_bpe()
    tokenizer = clip_tokenizer_from_bpe(bpe, 8, OPENAI_CLIP_SPECIAL_TOKENS, XClipTokenizer)
    XClipConfig().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is XClipTokenizer and reloaded.pad_token_id == 0
    texts = TEXTS + ["a photo of a dog in the snow " * 3]
    expected = x_clip_tokenizer.tokenize(texts, context_length=8, truncate_text=True)
    for tok in (tokenizer, reloaded):
        assert torch.equal(tok(texts, padding=True, return_tensors="pt")["input_ids"], expected)
        assert len(tok(texts[-1], truncation=False)["input_ids"]) > 8
        assert tok.pad({"input_ids": [[5, 6], [7]]})["input_ids"] == [[5, 6], [7, 0]]
    with pytest.raises(ValueError, match="text_pad_id must be a non-negative int, got -1"):
        clip_tokenizer_from_bpe(bpe, 8, OPENAI_CLIP_SPECIAL_TOKENS, XClipTokenizer, text_pad_id=-1)


def test_text_pad_id_is_written_for_every_tensor_type(processor):
    """It used to be applied to torch outputs only (numpy and lists kept the tokenizer's pad id)."""
    padded = XClipProcessor(processor.image_processor, processor.tokenizer, text_pad_id=5)
    out = padded(text=TEXTS, return_tensors="pt")
    expected, mask = out["input_ids"], out["attention_mask"]
    assert (mask == 0).any() and bool((expected[mask == 0] == 5).all())
    assert torch.equal(torch.as_tensor(padded(text=TEXTS, return_tensors="np")["input_ids"]), expected)
    assert torch.equal(torch.tensor(padded(text=TEXTS)["input_ids"]), expected)
