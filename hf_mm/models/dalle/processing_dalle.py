"""DALL-E processor: pads/truncates text to `text_seq_len` with id 0 (DALL-E's per-position padding) and turns
generated images into PIL images for the any-to-any pipeline."""

import torch
from PIL import Image
from transformers import ProcessorMixin


def to_pil_images(images: torch.Tensor) -> list:
    """`(b, c, H, W)` in [0, 1] -> list of PIL images."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]


class DalleProcessor(ProcessorMixin):
    """`__call__(text=...)` -> `{"input_ids": (b, text_seq_len)}` with 0 at padding positions."""

    def __init__(self, tokenizer=None, text_seq_len: int = 256, **kwargs):
        self.text_seq_len = text_seq_len
        super().__init__(tokenizer, **kwargs)

    def __call__(self, text=None, images=None, return_tensors="pt", **kwargs):
        if text is None:
            raise ValueError("DalleProcessor needs `text` (a string or a list of strings)")
        if images is not None:
            raise ValueError("DalleProcessor takes only text; priming images go to generate(init_image=...)")
        texts = [text] if isinstance(text, str) else list(text)
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.text_seq_len)
        input_ids = torch.zeros(len(texts), self.text_seq_len, dtype=torch.long)
        for row, ids in enumerate(encoded["input_ids"]):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        from transformers import BatchFeature

        return BatchFeature({"input_ids": input_ids}, tensor_type=return_tensors)

    def post_process_multimodal_output(self, generated_outputs, skip_special_tokens=True, generation_mode=None, **kwargs):
        """`generated_outputs`: decoded images `(b, c, H, W)` -> PIL images. DALL-E outputs only images, so text
        mode (the any-to-any pipeline's default) is refused rather than decoding image codes as words."""
        if generation_mode != "image":
            raise ValueError(
                f"DALL-E generates images, not text (generation_mode={generation_mode!r}): pass "
                "generation_mode='image' to each any-to-any pipeline call"
            )
        return to_pil_images(generated_outputs)
