"""Processor of hf_mm's x-clip: a tokenizer plus a PIL-backend image processor (no torchvision).

x-clip's own tokenizer is OpenAI's CLIP BPE without start/end tokens, padded with id 0: `XClipTokenizer` over
x-clip's BPE file (`hf_mm.clip_bpe`) gives the same ids by itself (what the converter saves, so that the
zero-shot-image-classification pipeline, which loads only the tokenizer, agrees with this processor); a
`CLIPTokenizer` does with `add_special_tokens=False` and `text_pad_id=0` (tested). Any other tokenizer works too;
the model masks padding with the `attention_mask` given here. Images go through `CLIPImageProcessorPil` (resize,
centre crop, rescale, normalise) to `pixel_values (b, c, H, W)`.
"""

from transformers import BatchFeature, ProcessorMixin

from ...clip_bpe import fill_padding


class XClipProcessor(ProcessorMixin):
    """`processor(text=[...], images=[...], return_tensors="pt")` -> `input_ids (b, n)`, `attention_mask (b, n)`,
    `pixel_values (b, c, H, W)`.

    Texts are padded to the longest one and truncated to `tokenizer.model_max_length` (set it to the model's
    `text_seq_len`) unless `padding` / `truncation` say otherwise; `token_type_ids` are dropped (x-clip has none).
    text_pad_id: written at padded positions (x-clip pads with 0, which CLIP's BPE also uses for "!", so it
        cannot be the tokenizer's own pad token), whatever `return_tensors`; None keeps the tokenizer's pad id.
    add_special_tokens: the default of the tokenizer call's `add_special_tokens` (False for x-clip's own ids, which
        have no start/end tokens); None keeps the tokenizer's default. Saved with the processor.
    """

    def __init__(self, image_processor=None, tokenizer=None, text_pad_id: int | None = None,
                 add_special_tokens: bool | None = None, **kwargs):
        if text_pad_id is not None and (not isinstance(text_pad_id, int) or text_pad_id < 0):
            raise ValueError(f"text_pad_id must be a non-negative int or None, got {text_pad_id!r}")
        if add_special_tokens is not None and not isinstance(add_special_tokens, bool):
            raise ValueError(f"add_special_tokens must be True, False or None, got {add_special_tokens!r}")
        self.text_pad_id = text_pad_id
        self.add_special_tokens = add_special_tokens
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("XClipProcessor needs text (a string or a list of strings), images, or both")
        if text is not None:
            if not (isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text))):
                raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
            kwargs.setdefault("padding", True)
            kwargs.setdefault("truncation", True)
            if self.add_special_tokens is not None:
                kwargs.setdefault("add_special_tokens", self.add_special_tokens)
        out = super().__call__(images=images, text=text, **kwargs)
        out.pop("token_type_ids", None)
        if self.text_pad_id is not None and "attention_mask" in out:  # torch, numpy or lists alike
            fill_padding(out, self.text_pad_id)
        return out

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["XClipProcessor"]
