"""Fine-tune (or train) Flamingo for captioning with `datasets` + a data collator + `Trainer`.

One process:     python -m examples.train_flamingo --output-dir runs/flamingo --max-steps 200
Two processes:   torchrun --nproc_per_node 2 -m examples.train_flamingo --output-dir runs/flamingo --max-steps 200
Resume:          ... --resume            (from the last checkpoint in --output-dir)
Paper recipe:    ... --model DIR --freeze-pretrained   (train only the perceiver and the gated cross-attention)
OpenFlamingo's:  ... --model DIR --freeze-pretrained --train-input-embeddings   (+ the LM's input embeddings)

Each example is `[BOS] <image> caption [EOS]`; the loss is next-token cross-entropy over the caption and `[EOS]`
(`labels` are -100 at padding, BOS and the media token). A caption ends with the token the model's `generate()`
stops at: for a `--model` with an end-of-chunk token that generation stops at (`config.eoc_token_id` in
`generation_config.eos_token_id`, as OpenFlamingo conversions save them) that is `<|endofchunk|>`, in OpenFlamingo's
own format `<image>caption<|endofchunk|>`; otherwise the tokenizer's `[EOS]`. `FlamingoForConditionalGeneration` takes Trainer's
`num_items_in_batch`, so the loss is the sum over the caption tokens of all micro-batches (and, under DDP, of
all processes) divided by their count: gradient accumulation and 2 processes give the loss of one big batch,
also when captions differ in length. The saved model generates captions prompt-free: `text=""` encodes to
`[BOS] <image>`, and its generation config never emits `<image>`, `[PAD]` or `[BOS]`.
Without --model, a tiny Flamingo is trained from scratch on the synthetic shapes data (examples/synthetic_shapes).
"""

from __future__ import annotations

from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessorPil, Trainer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import hf_mm  # noqa: F401  (registers Flamingo with the Auto classes)
from hf_mm.models.flamingo import FlamingoConfig, FlamingoForConditionalGeneration
from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor

from .synthetic_shapes import caption_vocabulary
from .training_common import (
    ImageCaptionCollator, build_trainer as build_common_trainer, run_training, training_parser, word_tokenizer,
)

MEDIA_TOKEN = "<image>"


def parse_args(argv=None):
    parser = training_parser(__doc__)
    parser.add_argument("--freeze-pretrained", action="store_true",
                        help="freeze the vision tower and the language model (paper recipe)")
    parser.add_argument("--train-input-embeddings", action="store_true",
                        help="with --freeze-pretrained: keep the LM's input embeddings trainable (OpenFlamingo's recipe)")
    return parser.parse_args(argv)


def caption_processor(words: list[str], image_size: int = 32, max_length: int = 32) -> FlamingoProcessor:
    """`FlamingoProcessor` = `CLIPImageProcessorPil` at `image_size` px + a word-level tokenizer that knows
    `<image>` and pads on the left (for batched generation)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    tokenizer = word_tokenizer(words, max_length=max_length, extra_special_tokens=(MEDIA_TOKEN,), padding_side="left")
    return FlamingoProcessor(image_processor, tokenizer, media_token=MEDIA_TOKEN)


def tiny_flamingo(processor: FlamingoProcessor, image_size: int = 32, patch_size: int = 8, hidden_size: int = 64,
                  layers: int = 2, **overrides) -> FlamingoForConditionalGeneration:
    """A Flamingo small enough to train on a CPU in minutes (built-in PaLM decoder, cross-attention after every
    layer), with a generation config for prompt-free captioning."""
    tok = processor.tokenizer
    heads = max(hidden_size // 32, 1)
    config = dict(
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                           num_hidden_layers=1, num_attention_heads=heads, head_dim=hidden_size // heads,
                           intermediate_size=2 * hidden_size),
        perceiver_config=dict(num_latents=8, num_hidden_layers=1, num_attention_heads=heads,
                              head_dim=hidden_size // heads),
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=heads, head_dim=hidden_size // heads, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        media_token_id=processor.media_token_id, cross_attn_every=1,
    )
    config.update(overrides)
    model = FlamingoForConditionalGeneration(FlamingoConfig(**config))
    set_caption_generation_config(model, processor)
    return model


def set_caption_generation_config(model, processor: FlamingoProcessor) -> None:
    """Stop at `[EOS]`; never generate the media token, padding or BOS (they are inputs, not caption words)."""
    tok = processor.tokenizer
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = tok.eos_token_id, tok.pad_token_id, tok.bos_token_id
    gen.suppress_tokens = [processor.media_token_id, tok.pad_token_id, tok.bos_token_id]


def load_model_and_processor(args):
    if args.model:
        model = AutoModelForImageTextToText.from_pretrained(args.model)
        processor = AutoProcessor.from_pretrained(args.model)
    else:
        processor = caption_processor(caption_vocabulary(), image_size=32)
        model = tiny_flamingo(processor)
    if args.freeze_pretrained:
        model.freeze_pretrained(train_input_embeddings=args.train_input_embeddings)
    return model, processor


def caption_end_token(model) -> str | None:
    """The end-of-chunk token to end captions with, or None for the tokenizer's EOS.

    OpenFlamingo conversions set `config.eoc_token_id` (`<|endofchunk|>`) and stop `generate()` there
    (`generation_config.eos_token_id`): captions must end with it, or the fine-tuned model learns a terminator
    generation does not stop at. Models without one (the tiny from-scratch Flamingo) end captions with EOS."""
    eoc = getattr(model.config, "eoc_token_id", None)
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, (list, tuple)) else [stops]
    return eoc if eoc is not None and eoc in stops else None


def caption_collator(processor: FlamingoProcessor, image_column: str = "image", text_column: str = "caption",
                     end_token_id: int | None = None) -> ImageCaptionCollator:
    """Rows -> `[BOS] <image> caption [EOS]` ids (left padded), `pixel_values (b, 1, C, H, W)`, `labels`.

    `end_token_id` (e.g. `<|endofchunk|>`'s, from `caption_end_token(model)`): end each caption with that token
    instead, in OpenFlamingo's format `<image>caption<|endofchunk|>`.
    `labels` are -100 at BOS too: after left padding BOS is not at position 0, and the shifted loss would
    otherwise ask the model to predict it from a pad position (and count it in `num_items_in_batch`)."""
    tok = processor.tokenizer
    if end_token_id is None:
        template = "{} " + tok.eos_token
    else:
        end = tok.convert_ids_to_tokens(end_token_id)
        if end is None or tok(end, add_special_tokens=False)["input_ids"] != [end_token_id]:
            raise ValueError(f"end_token_id {end_token_id} ({end!r}) is not a single token of the processor's "
                             "tokenizer: the model and the tokenizer do not match")
        template = "{}" + end
    return ImageCaptionCollator(processor, image_column, text_column, text_template=template, labels=True,
                                ignore_token_ids=(tok.bos_token_id, processor.media_token_id), images_per_text=True)


def build_trainer(args) -> Trainer:
    loaded = {}

    def load(args):
        loaded["model"], processor = load_model_and_processor(args)
        return loaded["model"], processor

    def collator(processor, image_column, text_column):  # called after load(): the end token is the model's
        return caption_collator(processor, image_column, text_column, caption_end_token(loaded["model"]))

    return build_common_trainer(args, load, collator)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run_training(args, build_trainer(args))


if __name__ == "__main__":
    main()
