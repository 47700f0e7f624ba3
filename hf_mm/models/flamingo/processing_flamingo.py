"""Flamingo processor: interleaved image-text prompts -> `input_ids` with media tokens + `pixel_values`.

`pixel_values` is `(batch, num_media, C, H, W)`; each prompt must hold as many media tokens as it has images.
A prompt with no media token gets one per image prepended.
"""

from transformers import BatchFeature, ProcessorMixin

# image-processor arguments a call may pass next to the tokenizer's (as transformers' processors accept them)
IMAGE_KWARGS = ("size", "crop_size", "do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")


class FlamingoProcessor(ProcessorMixin):
    """`(image_processor, tokenizer)`; the tokenizer must know `media_token` as a single (special) token."""

    def __init__(self, image_processor=None, tokenizer=None, media_token: str = "<image>", **kwargs):
        self.media_token = media_token
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def media_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.media_token)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """
        text: a prompt or a list of prompts, `media_token` marking where each image goes.
        images: one image, a list of images (one prompt), one image per prompt, or a list of lists (one list per
            prompt).
        Returns `input_ids (b, n)`, `attention_mask (b, n)` and, with images, `pixel_values (b, t, C, H, W)`;
        a tokenizer's `token_type_ids` are dropped.
        """
        if text is None:
            raise ValueError("text is required (use '' for an image-only prompt)")
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = self._group_images(images, len(texts))
        if per_prompt is not None:
            texts = [self._place_media_tokens(t, len(imgs), i) for i, (t, imgs) in enumerate(zip(texts, per_prompt))]
        image_kwargs = {**kwargs.pop("images_kwargs", {}), **{k: kwargs.pop(k) for k in IMAGE_KWARGS if k in kwargs}}
        kwargs.setdefault("padding", True)
        encoding = self.tokenizer(texts, return_tensors=return_tensors, **kwargs)
        data = dict(encoding)
        data.pop("token_type_ids", None)  # BERT-style tokenizers add them; Flamingo (and its generate()) takes none
        if per_prompt is not None:
            counts = {len(imgs) for imgs in per_prompt}
            if len(counts) > 1:
                raise ValueError(f"every prompt of a batch must have the same number of images, got {sorted(counts)}")
            flat = [img for imgs in per_prompt for img in imgs]
            pixel_values = self.image_processor(flat, return_tensors="pt", **image_kwargs)["pixel_values"]
            data["pixel_values"] = pixel_values.reshape(len(texts), counts.pop(), *pixel_values.shape[1:])
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _group_images(images, batch: int):
        if images is None:
            return None
        if not isinstance(images, (list, tuple)):
            images = [images]
        nested = [isinstance(x, (list, tuple)) for x in images]
        if batch == 1 and not any(nested):
            return [list(images)]
        if len(images) == batch and not any(nested):  # one image per prompt (how pipelines batch)
            return [[x] for x in images]
        if len(images) != batch or not all(nested):
            raise ValueError(f"images must be one image per prompt or one list of images per prompt ({batch} prompts), "
                             f"got {len(images)} entries")
        return [list(x) for x in images]

    def _place_media_tokens(self, text: str, num_images: int, index: int) -> str:
        found = text.count(self.media_token)
        if found == 0:
            return self.media_token * num_images + text
        if found != num_images:
            raise ValueError(
                f"prompt {index} has {found} {self.media_token!r} tokens but {num_images} images were given"
            )
        return text

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
