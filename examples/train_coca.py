"""Fine-tune (or train) CoCa with `datasets` + a data collator + `Trainer`: caption + contrastive losses.

One process:     python -m examples.train_coca --output-dir runs/coca --max-steps 200
Two processes:   torchrun --nproc_per_node 2 -m examples.train_coca --output-dir runs/coca --max-steps 200
Resume:          ... --resume            (from the last checkpoint in --output-dir)

The loss is `config.caption_loss_weight * caption + config.contrastive_loss_weight * contrastive`
(override with --caption-loss-weight / --contrastive-loss-weight). `CocaModel.accepts_loss_kwargs = False`,
so Trainer averages the per-micro-batch mean loss over gradient-accumulation steps itself. Under DDP every
process gathers all processes' embeddings (autograd-aware) for the contrastive loss and DDP averages the
gradients, so 2 processes x batch b train like 1 process x batch 2b. For an exact contrastive eval_loss,
make the eval set a multiple of processes x batch size: Accelerate pads the last eval batches by repeating
examples (`even_batches`), and a repeated example is a false negative for the contrastive loss.
Without --model, a tiny CoCa is trained from scratch on the synthetic shapes data (examples/synthetic_shapes).
"""

from __future__ import annotations

from transformers import AutoModel, AutoProcessor, Trainer

import hf_mm  # noqa: F401  (registers CoCa with the Auto classes)
from hf_mm.models.coca import CocaModel

from .coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config
from .synthetic_shapes import caption_vocabulary
from .training_common import build_trainer as build_common_trainer, run_training, training_parser

LOSS_WEIGHTS = ("caption_loss_weight", "contrastive_loss_weight")


def parse_args(argv=None):
    return training_parser(__doc__, LOSS_WEIGHTS).parse_args(argv)


def load_model_and_processor(args):
    if args.model:
        return AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    return CocaModel(tiny_coca_config(processor.tokenizer)), processor


def build_trainer(args) -> Trainer:
    return build_common_trainer(args, load_model_and_processor, CocaCaptionCollator, LOSS_WEIGHTS)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run_training(args, build_trainer(args))


if __name__ == "__main__":
    main()
