"""CoCa processor: open_clip's image preprocessing without torchvision, and a CLIP BPE tokenizer.

`CocaImageProcessor` reproduces open_clip's eval transform (`Resize(size, bicubic)` on the shortest side,
`CenterCrop(size)`, `ToTensor`, `Normalize(CLIP mean/std)`) with torchvision's rounding rules on PIL.
`CocaProcessor.from_open_clip` pairs it with the CLIP BPE tokenizer of `hf_mm.clip_bpe` under open_clip's
conventions: `<start_of_text> text <end_of_text>`, padded with id 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessorPil, ProcessorMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import to_py_obj

from ...clip_bpe import OPEN_CLIP_SPECIAL_TOKENS, clip_tokenizer_from_bpe, fill_padding


class CocaImageProcessor(CLIPImageProcessorPil):
    """open_clip preprocessing. `images -> pixel_values (b, 3, size, size)`."""

    model_input_names = ["pixel_values"]

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """Shortest side to `size.shortest_edge`, other side `int(size * long / short)` (torchvision's rule)."""
        if not size.shortest_edge:
            return super().resize(image, size, resample=resample, **kwargs)
        _, h, w = image.shape
        target = size.shortest_edge
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(target * long / short)
        new_w, new_h = (target, new_long) if w <= h else (new_long, target)
        pil = Image.fromarray(np.moveaxis(image, 0, -1).astype(np.uint8)) if image.dtype == np.uint8 else None
        if pil is None:
            return super().resize(image, type(size)(height=new_h, width=new_w), resample=resample, **kwargs)
        out = pil.resize((new_w, new_h), resample=Image.BICUBIC if resample is None else int(resample))
        return np.moveaxis(np.asarray(out), -1, 0)

    def center_crop(self, image: np.ndarray, size, **kwargs) -> np.ndarray:
        """torchvision's `center_crop`: offsets `round((H - h) / 2)`; smaller images are zero-padded first."""
        th, tw = size.height, size.width
        _, h, w = image.shape
        if h < th or w < tw:
            pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
            image = np.pad(image, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)))
            _, h, w = image.shape
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return image[:, top:top + th, left:left + tw]


class CocaProcessor(ProcessorMixin):
    """`processor(images=..., text=...)` -> `pixel_values`, `input_ids`, `attention_mask` (a tokenizer's
    `token_type_ids` are dropped).

    Text is padded to the longest sequence (open_clip pads to the context length: pass
    `padding="max_length"` for identical ids); captions decode with `batch_decode(..., skip_special_tokens=True)`.

    `decode`, `batch_decode` and `post_process_image_text_to_text` (what the image-text-to-text pipeline calls)
    drop a row's padding first: the pad ids it starts with when a BOS follows them (`CocaModel.generate` left-pads
    the prompts) and the pad ids it ends with when they follow an EOS (a processor's right padding, generate()'s
    filler after a row has finished). open_clip pads with id 0, an ordinary token of the CLIP BPE ("!") that
    `skip_special_tokens` keeps. Rows without BOS (e.g. the new tokens `out[:, n:]`) keep their start as it is,
    and a pad id anywhere else is text.
    """

    def __init__(self, image_processor=None, tokenizer=None, text_pad_id: int | None = None, **kwargs):
        self.text_pad_id = text_pad_id
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        if text is not None:
            kwargs.setdefault("padding", True)
            kwargs.setdefault("truncation", True)
        out = super().__call__(images=images, text=text, **kwargs)
        out.pop("token_type_ids", None)  # BERT-style tokenizers add them; CoCa (and its generate()) takes none
        if self.text_pad_id is not None and "attention_mask" in out:
            fill_padding(out, self.text_pad_id)
        return out

    # -- decoding ------------------------------------------------------------------------------------------
    @property
    def _padding_id(self) -> int | None:
        """The id padding carries: `text_pad_id` when set (open_clip's 0), else the tokenizer's pad id."""
        return self.text_pad_id if self.text_pad_id is not None else getattr(self.tokenizer, "pad_token_id", None)

    def strip_padding(self, token_ids):
        """`token_ids` (one sequence or a batch: tensor, array or lists) -> python lists without each row's
        leading pad ids when BOS follows them and trailing pad ids when they follow EOS (see the class docstring)."""
        token_ids = to_py_obj(token_ids)
        if not isinstance(token_ids, (list, tuple)) or not token_ids:
            return token_ids
        if isinstance(token_ids[0], (list, tuple)):
            return [self._strip_row(list(row)) for row in token_ids]
        return self._strip_row(list(token_ids))

    def _strip_row(self, row: list[int]) -> list[int]:
        pad = self._padding_id
        if pad is None:
            return row
        bos, eos = getattr(self.tokenizer, "bos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)
        start, end = 0, len(row)
        while start < end and row[start] == pad:
            start += 1
        if start == end or bos is None or row[start] != bos or bos == pad:
            start = 0
        stop = end
        while stop > start and row[stop - 1] == pad:
            stop -= 1
        if stop == start or eos is None or row[stop - 1] != eos or eos == pad:
            stop = end
        return row[start:stop]

    def decode(self, token_ids, *args, **kwargs):
        """The tokenizer's `decode` (one sequence or a batch) after `strip_padding`."""
        return super().decode(self.strip_padding(token_ids), *args, **kwargs)

    def batch_decode(self, sequences, *args, **kwargs):
        """The tokenizer's `batch_decode` after `strip_padding`."""
        return super().batch_decode(self.strip_padding(sequences), *args, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """`generate()` output `(b, n)` or `(n,)` -> text, without the padding (what the image-text-to-text
        pipeline decodes both the prompts and the generated sequences with)."""
        return super().post_process_image_text_to_text(self.strip_padding(generated_outputs),
                                                       skip_special_tokens=skip_special_tokens, **kwargs)

    @classmethod
    def from_open_clip(cls, image_size: int = 224, context_length: int = 76, bpe_path: str | Path | None = None):
        """Build from the BPE file shipped inside the installed open_clip (conversion time)."""
        if bpe_path is None:
            import importlib.util

            spec = importlib.util.find_spec("open_clip")
            if spec is None:
                raise ValueError("pass bpe_path: open_clip (which ships the CLIP BPE file) is not installed")
            bpe_path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
        image_processor = CocaImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
        )
        tokenizer = clip_tokenizer_from_bpe(bpe_path, context_length, OPEN_CLIP_SPECIAL_TOKENS)
        return cls(image_processor, tokenizer, text_pad_id=0)


__all__ = ["CocaImageProcessor", "CocaProcessor"]
