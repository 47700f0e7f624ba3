"""Fine-tune (or train) x-clip CLIP with `datasets` + a data collator + `Trainer`: contrastive + side losses.

One process:     python -m examples.train_x_clip --output-dir runs/x_clip --max-steps 200
Two processes:   torchrun --nproc_per_node 2 -m examples.train_x_clip --output-dir runs/x_clip --max-steps 200
Resume:          ... --resume            (from the last checkpoint in --output-dir)
x-clip options:  ... --config-overrides '{"use_mlm": true, "decoupled_contrastive_learning": true}'   (from scratch)
LiT:             ... --model DIR --lit   (locked image tower: it runs without gradients; text tower + projections train)

--config-overrides takes a JSON object of XClipConfig fields (unknown ones are an error); a `text_config` /
`vision_config` object is merged into the tiny tower's settings (a `model_type` in it replaces the tower). --lit
cannot be combined with `use_visual_ssl`: x-clip's SimSiam/SimCLR pass trains the image tower whatever
`freeze_image_encoder` says. The locked tower stays in train mode, as in x-clip: its parameters never change, but
patch dropout (--patch-dropout) and any dropout stay active, so its features are random in training.

The loss is x-clip's: `contrastive * (1 - text_ssl_w - image_ssl_w - multiview_w) + mlm * text_ssl_w +
visual_ssl * image_ssl_w + multiview * multiview_w + sim_reg * sim_reg_w` (weights of the active terms only;
override them with --text-ssl-loss-weight etc.). `XClipModel.accepts_loss_kwargs = False`, so under gradient
accumulation Trainer averages the micro-batch losses. Under DDP each process gathers every process's latents
(autograd-aware) and DDP averages gradients, so 2 processes x batch b train like 1 process x batch 2b; that
needs `vision_config.patch_dropout = 0` (the default here; each process draws its own dropout otherwise) and no
MLM / visual SSL (random masks and augmentations). For an exact eval_loss make the eval set a multiple of
processes x batch size (Accelerate repeats examples to even out the last batches: false negatives).
Without --model, a tiny x-clip is trained from scratch on the synthetic shapes data (examples/synthetic_shapes).
"""

from __future__ import annotations

from functools import partial

from transformers import AutoModel, AutoProcessor, CLIPImageProcessorPil, Trainer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import hf_mm  # noqa: F401  (registers x-clip with the Auto classes)
from hf_mm.models.x_clip import XClipConfig, XClipModel, XClipTextConfig, XClipVisionConfig
from hf_mm.models.x_clip.processing_x_clip import XClipProcessor
from hf_mm.models.x_clip.tokenization_x_clip import XClipBackendTokenizer

from .synthetic_shapes import caption_vocabulary
from .training_common import (
    ImageCaptionCollator, build_trainer as build_common_trainer, json_object, merge_config_overrides, run_training,
    training_parser, word_tokenizer,
)

LOSS_WEIGHTS = ("text_ssl_loss_weight", "image_ssl_loss_weight", "multiview_loss_weight", "sim_reg_loss_weight")


def parse_args(argv=None):
    parser = training_parser(__doc__, LOSS_WEIGHTS)
    parser.add_argument("--config-overrides", type=json_object, default={},
                        help="JSON object of XClipConfig fields for a model from scratch, e.g. '{\"use_mlm\": true}' "
                             "(unknown fields are an error; text_config / vision_config objects are merged)")
    parser.add_argument("--patch-dropout", type=float, default=0.0, help="vision patch dropout (from scratch)")
    parser.add_argument("--lit", action="store_true",
                        help="locked-image tuning: forward(freeze_image_encoder=True), the image tower's parameters "
                             "never change (it stays in train mode, as in x-clip: patch dropout stays active); "
                             "not with use_visual_ssl, whose pass would train the tower")
    return parser.parse_args(argv)


def caption_processor(words: list[str], image_size: int = 32, max_length: int = 16) -> XClipProcessor:
    """`XClipProcessor` = `CLIPImageProcessorPil` at `image_size` px + a word-level tokenizer of `words`. The
    tokenizer (`XClipBackendTokenizer`) truncates to `max_length` by default, like the processor, so that the saved
    model's zero-shot pipeline (which loads only the tokenizer) accepts labels longer than the context."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    return XClipProcessor(image_processor,
                          word_tokenizer(words, max_length=max_length, tokenizer_class=XClipBackendTokenizer))


def tiny_x_clip_config(tokenizer, image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, layers: int = 2,
                       patch_dropout: float = 0.0, **overrides) -> XClipConfig:
    """An x-clip small enough to train on a CPU in minutes; MLM (if enabled) masks with an extra vocabulary row.
    `overrides`: XClipConfig fields (unknown ones raise); `text_config` / `vision_config` dicts are merged."""
    heads = max(hidden_size // 32, 1)
    tower = dict(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                 head_dim=hidden_size // heads)
    config = dict(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **tower),
        vision_config=dict(image_size=image_size, patch_size=patch_size, patch_dropout=patch_dropout, **tower),
        projection_dim=hidden_size, mlm_mask_token_id=len(tokenizer),
        mlm_mask_ignore_token_ids=[tokenizer.bos_token_id, tokenizer.eos_token_id],
        visual_ssl_projection_hidden_size=4 * hidden_size,
    )
    config = merge_config_overrides(config, overrides, XClipConfig,
                                    {"text_config": XClipTextConfig, "vision_config": XClipVisionConfig})
    return XClipConfig(**config)


def load_model_and_processor(args):
    if args.model:
        if args.config_overrides:
            raise ValueError("--config-overrides only applies to a model from scratch (without --model)")
        return AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    config = tiny_x_clip_config(processor.tokenizer, patch_dropout=args.patch_dropout, **args.config_overrides)
    return XClipModel(config), processor


def load_checked_model_and_processor(args):
    model, processor = load_model_and_processor(args)
    if args.lit and getattr(model.config, "use_visual_ssl", False):
        raise ValueError("--lit promises a locked image tower, but the model has use_visual_ssl=True: x-clip's "
                         "SimSiam/SimCLR pass trains the image tower whatever freeze_image_encoder says. Drop --lit "
                         "or turn use_visual_ssl off")
    return model, processor


def build_trainer(args) -> Trainer:
    forward_kwargs = {"freeze_image_encoder": True} if args.lit else None
    collator = partial(ImageCaptionCollator, forward_kwargs=forward_kwargs)
    return build_common_trainer(args, load_checked_model_and_processor, collator, LOSS_WEIGHTS)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run_training(args, build_trainer(args))


if __name__ == "__main__":
    main()
