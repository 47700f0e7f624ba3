"""OpenAI CLIP's byte-level BPE as a transformers `CLIPTokenizer`, built from the merges file a reference ships.

open_clip (CoCa) and x-clip ship the same merges (open_clip gzipped, x-clip as plain text) and derive the same
vocabulary from them: the 256 byte characters, the same with `</w>`, one token per merge, then the start and end
tokens (ids 49406 and 49407), 49408 tokens in all. They differ only in the names of those two tokens: open_clip's
`<start_of_text>` / `<end_of_text>`, OpenAI's (and x-clip's) `<|startoftext|>` / `<|endoftext|>`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from transformers import CLIPTokenizer

OPEN_CLIP_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
OPENAI_CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
CLIP_BPE_NUM_MERGES = 49152 - 256 - 2
CLIP_BPE_VOCAB_SIZE = 2 * 256 + CLIP_BPE_NUM_MERGES + 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _check_special_tokens(special_tokens) -> tuple[str, str]:
    if (not isinstance(special_tokens, (tuple, list)) or len(special_tokens) != 2
            or not all(isinstance(t, str) and t for t in special_tokens) or special_tokens[0] == special_tokens[1]):
        raise ValueError("special_tokens must be two different non-empty strings (start, end), e.g. "
                         f"{OPEN_CLIP_SPECIAL_TOKENS} or {OPENAI_CLIP_SPECIAL_TOKENS}, got {special_tokens!r}")
    return tuple(special_tokens)


def bpe_vocab_and_merges(bpe_path: str | Path, special_tokens: tuple[str, str],
                         num_merges: int = CLIP_BPE_NUM_MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges CLIP's `SimpleTokenizer` derives from its BPE file (gzipped or plain text), with
    `special_tokens = (start, end)` as the last two ids."""
    start, end = _check_special_tokens(special_tokens)
    data = Path(bpe_path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic: open_clip's bpe_simple_vocab_16e6.txt.gz
        data = gzip.decompress(data)
    merges = [tuple(line.split()) for line in data.decode("utf-8").split("\n")[1:num_merges + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [start, end]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer_from_bpe(bpe_path: str | Path, context_length: int, special_tokens: tuple[str, str],
                            tokenizer_class: type[CLIPTokenizer] = CLIPTokenizer, **kwargs) -> CLIPTokenizer:
    """`CLIPTokenizer` (or the `tokenizer_class` subclass, built with `kwargs`) with CLIP's ids (start 49406, end
    49407), truncating to `context_length` tokens.

    The end token doubles as unknown and pad token; a processor with `text_pad_id=0` rewrites padding to the
    references' id 0 (also the "!" token, so it cannot be the tokenizer's own pad token).
    """
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(f"context_length must be a positive int, got {context_length!r}")
    vocab, merges = bpe_vocab_and_merges(bpe_path, special_tokens)
    start, end = special_tokens
    return tokenizer_class(vocab=vocab, merges=merges, bos_token=start, eos_token=end, unk_token=end, pad_token=end,
                           model_max_length=context_length, **kwargs)


def fill_padding(encoding, pad_id: int):
    """Write `pad_id` at the padded positions (`attention_mask` 0) of a tokenizer output holding torch tensors,
    numpy arrays or lists: the references pad with 0, which CLIP's BPE also uses for "!"."""
    ids, mask = encoding["input_ids"], encoding["attention_mask"]
    if hasattr(ids, "masked_fill"):
        encoding["input_ids"] = ids.masked_fill(mask == 0, pad_id)
    elif isinstance(ids, np.ndarray):
        encoding["input_ids"] = np.where(np.asarray(mask) == 0, pad_id, ids)
    else:
        single = bool(ids) and not isinstance(ids[0], list)
        rows, masks = ([ids], [mask]) if single else (ids, mask)
        padded = [[t if m else pad_id for t, m in zip(r, mr)] for r, mr in zip(rows, masks)]
        encoding["input_ids"] = padded[0] if single else padded
    return encoding


__all__ = ["CLIP_BPE_VOCAB_SIZE", "OPENAI_CLIP_SPECIAL_TOKENS", "OPEN_CLIP_SPECIAL_TOKENS", "bpe_vocab_and_merges",
           "bytes_to_unicode", "clip_tokenizer_from_bpe", "fill_padding"]
