"""Processor of hf_mm's x-clip: a CLIP BPE tokenizer plus a PIL-backend image processor (no torchvision).

x-clip's own tokenizer is OpenAI's CLIP BPE with pad id 0; `CLIPTokenizer` covers it. Images go through
`CLIPImageProcessorPil` (resize, centre crop, rescale, normalise) to `pixel_values (b, c, H, W)`.
"""

from transformers import ProcessorMixin


class XClipProcessor(ProcessorMixin):
    """`processor(text=[...], images=[...], padding="max_length", max_length=text_seq_len, return_tensors="pt")`
    -> `input_ids (b, n)`, `attention_mask (b, n)`, `pixel_values (b, c, H, W)`."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)


__all__ = ["XClipProcessor"]
