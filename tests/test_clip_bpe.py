"""hf_mm.clip_bpe: one builder for open_clip's gzipped and x-clip's plain-text CLIP BPE files, whose vocabularies
differ only in the names of the start/end tokens; bad arguments name what was expected."""

import gzip
import shutil

import pytest

from hf_mm.clip_bpe import (
    CLIP_BPE_VOCAB_SIZE, OPEN_CLIP_SPECIAL_TOKENS, OPENAI_CLIP_SPECIAL_TOKENS, bpe_vocab_and_merges,
    clip_tokenizer_from_bpe,
)
from reference_imports import require_reference


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """x-clip's plain-text BPE file and the same bytes gzipped (open_clip's format)."""
    plain = require_reference("x_clip.tokenizer").default_bpe()
    zipped = tmp_path_factory.mktemp("bpe") / "bpe_simple_vocab_16e6.txt.gz"
    with open(plain, "rb") as src, gzip.open(zipped, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return plain, zipped


def test_gzipped_and_plain_files_give_one_vocabulary_up_to_the_special_token_names(bpe_files):
    plain, zipped = bpe_files
    openai_vocab, openai_merges = bpe_vocab_and_merges(plain, OPENAI_CLIP_SPECIAL_TOKENS)
    open_clip_vocab, open_clip_merges = bpe_vocab_and_merges(zipped, OPEN_CLIP_SPECIAL_TOKENS)
    assert openai_merges == open_clip_merges and len(openai_vocab) == len(open_clip_vocab) == CLIP_BPE_VOCAB_SIZE
    for (start, end), vocab in ((OPENAI_CLIP_SPECIAL_TOKENS, openai_vocab), (OPEN_CLIP_SPECIAL_TOKENS, open_clip_vocab)):
        assert (vocab[start], vocab[end]) == (49406, 49407)
    assert {t: i for t, i in openai_vocab.items() if i < 49406} == {t: i for t, i in open_clip_vocab.items() if i < 49406}

    tokenizer = clip_tokenizer_from_bpe(zipped, 7, OPEN_CLIP_SPECIAL_TOKENS)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.model_max_length) == ("<start_of_text>",
                                                                                       "<end_of_text>", 7)
    ids = tokenizer("a photo of a cat", truncation=True)["input_ids"]
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 7


@pytest.mark.parametrize("special_tokens", [("<s>",), ("<s>", "<s>"), "<s></s>", ("<s>", "")])
def test_bad_special_tokens(bpe_files, special_tokens):
    with pytest.raises(ValueError, match=r"special_tokens must be two different non-empty strings \(start, end\)"):
        bpe_vocab_and_merges(bpe_files[0], special_tokens)


def test_bad_context_length(bpe_files):
    with pytest.raises(ValueError, match="context_length must be a positive int, got 0"):
        clip_tokenizer_from_bpe(bpe_files[0], 0, OPENAI_CLIP_SPECIAL_TOKENS)
