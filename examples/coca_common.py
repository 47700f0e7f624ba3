"""Pieces shared by the CoCa examples (demo, train_coca): a caption processor, a tiny config, a data collator."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from hf_mm.models.coca import CocaConfig, CocaImageProcessor, CocaProcessor

from .training_common import ImageCaptionCollator, word_tokenizer


def caption_processor(words: list[str], image_size: int = 32) -> CocaProcessor:
    """`CocaProcessor` = `CocaImageProcessor` at `image_size` px + `word_tokenizer(words)`."""
    image_processor = CocaImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    return CocaProcessor(image_processor, word_tokenizer(words))


def tiny_coca_config(tokenizer: PreTrainedTokenizerFast, image_size: int = 32, patch_size: int = 8,
                     hidden_size: int = 64, layers: int = 2, **overrides) -> CocaConfig:
    """A CoCa small enough to train on a CPU in minutes (open_clip layout, `hidden_size`-wide everywhere)."""
    heads = max(hidden_size // 32, 1)
    config = dict(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden_size, max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, padding_mask_style="open_clip",
        ),
        multimodal_config=dict(num_hidden_layers=layers),
        vision_config=dict(
            image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=4 * hidden_size,
        ),
        attn_pooler_queries=(image_size // patch_size) ** 2 + 1, attn_pooler_heads=heads,
        projection_dim=hidden_size, logit_scale_init_value=10.0,
    )
    config.update(overrides)
    return CocaConfig(**config)


def tokenizer_appends_eos(tokenizer) -> bool:
    """Whether `tokenizer(text)` already ends with the EOS token (open_clip's CLIP tokenizer appends
    `<end_of_text>`; the examples' word tokenizer and most causal-LM tokenizers append nothing)."""
    if tokenizer.eos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def caption_template(tokenizer) -> str:
    """`"{} " + eos_token`, or `"{}"` when the tokenizer ends every text with EOS itself (or has none): each
    training caption ends with exactly one EOS."""
    if tokenizer.eos_token is None or tokenizer_appends_eos(tokenizer):
        return "{}"
    return "{} " + tokenizer.eos_token


class CocaCaptionCollator(ImageCaptionCollator):
    """Rows `{"image": PIL, "caption": str}` -> `pixel_values`, `input_ids` (`[BOS] caption [EOS]`, one EOS: added
    only when the tokenizer does not append it itself), `attention_mask`, `labels` (= input_ids, -100 at padding;
    the model shifts them), `return_loss`."""

    def __init__(self, processor: CocaProcessor, image_column: str = "image", text_column: str = "caption"):
        super().__init__(processor, image_column, text_column, text_template=caption_template(processor.tokenizer),
                         labels=True)
