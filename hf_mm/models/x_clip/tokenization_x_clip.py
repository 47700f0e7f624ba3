"""x-clip's own tokenizer (`x_clip.tokenizer.tokenize`) as a transformers tokenizer that needs no processor.

OpenAI's CLIP BPE (`CLIPTokenizer`'s vocabulary, merges and text normalisation) without start/end tokens, padded
with `text_pad_id` (0, which the BPE also uses for "!", so it cannot be the tokenizer's own pad token) and
truncated to `model_max_length` (the model's `text_seq_len`) unless a call passes `truncation`. Saved with a
converted model, it gives the ids of the model's `XClipProcessor` to callers that load only the tokenizer, such as
the zero-shot-image-classification pipeline.

`XClipBackendTokenizer` gives any other `tokenizers` tokenizer (e.g. the training examples' word-level one) the same
truncation default, so that a saved model's pipeline handles long labels as its `XClipProcessor` does.
"""

from transformers import CLIPTokenizer, TokenizersBackend


class TruncatesByDefault:
    """Truncate to `model_max_length` unless a call passes `truncation` (the model's context length is a hard limit,
    x-clip's `truncate_text`); `truncation=False` still opts out."""

    def _get_padding_truncation_strategies(self, padding=False, truncation=None, max_length=None, *args, **kwargs):
        return super()._get_padding_truncation_strategies(
            padding, True if truncation is None else truncation, max_length, *args, **kwargs
        )


class XClipBackendTokenizer(TruncatesByDefault, TokenizersBackend):
    """A fast tokenizer over any `tokenizers.Tokenizer` (`tokenizer_object=` or a saved `tokenizer.json`) that, like
    `XClipProcessor`, truncates to `model_max_length` unless a call passes `truncation`. Callers that load only the
    tokenizer (the zero-shot-image-classification pipeline) then give the processor's ids for long texts."""


class XClipTokenizer(TruncatesByDefault, CLIPTokenizer):
    """`tokenizer(texts, padding=True)` -> x-clip's `input_ids (b, n)` (no start/end tokens, `text_pad_id` at padded
    positions, at most `model_max_length` tokens) and `attention_mask (b, n)`.

    text_pad_id: the id written at padded positions (`pad_token_id`); x-clip's `text_pad_id`, 0 by default.
    """

    def __init__(self, *args, text_pad_id: int = 0, **kwargs):
        if isinstance(text_pad_id, bool) or not isinstance(text_pad_id, int) or text_pad_id < 0:
            raise ValueError(f"text_pad_id must be a non-negative int, got {text_pad_id!r}")
        super().__init__(*args, text_pad_id=text_pad_id, **kwargs)
        self.text_pad_id = text_pad_id
        self.update_post_processor()  # add_bos_token / add_eos_token are False: x-clip adds no start/end tokens

    @property
    def pad_token_id(self) -> int:
        return self.text_pad_id


__all__ = ["XClipBackendTokenizer", "XClipTokenizer"]
