"""examples/train_flamingo.py: Trainer steps, evaluation, resume, token-exact loss under gradient accumulation
and across 2 torchrun (gloo) processes with captions of different lengths, the paper's freezing recipe, and
captions that end with the token generate() stops at (`<|endofchunk|>` for OpenFlamingo conversions)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict

import hf_mm  # noqa: F401
from examples import train_flamingo
from examples.synthetic_shapes import make_shapes_dataset
from ecosystem_helpers import check_train_evaluate_and_resume, losses, torchrun

COMMON = ["--train-size", "32", "--eval-size", "8", "--batch-size", "8", "--eval-steps", "2", "--logging-steps", "1"]


@pytest.fixture(scope="module")
def ragged_dataset(tmp_path_factory):
    """Captions cut to 2..8 words, so micro-batches (and processes) hold different numbers of caption tokens."""
    def ragged(n, seed):
        data = make_shapes_dataset(n, seed=seed)
        return data.map(lambda row, i: {"caption": " ".join(row["caption"].split()[:2 + (i * 5) % 7])},
                        with_indices=True)

    path = tmp_path_factory.mktemp("ragged") / "data"
    DatasetDict(train=ragged(16, 0), validation=ragged(16, 1)).save_to_disk(str(path))
    return str(path)


def test_train_evaluate_and_resume(tmp_path):
    check_train_evaluate_and_resume(train_flamingo.main, tmp_path, COMMON)
    assert (tmp_path / "run" / "final" / "generation_config.json").is_file()


def test_collator_labels_only_the_caption(tmp_path):
    processor = train_flamingo.caption_processor(["a", "red", "circle"], image_size=32)
    data = make_shapes_dataset(2, seed=0)
    batch = train_flamingo.caption_collator(processor)([data[0], data[1]])
    assert batch["pixel_values"].shape == (2, 1, 3, 32, 32) and batch["return_loss"] is True
    tok = processor.tokenizer
    for ids, labels, row in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), [data[0], data[1]]):
        expected = tok(f"{processor.media_token}{row['caption']} {tok.eos_token}")["input_ids"]
        assert ids[-len(expected):] == expected and expected[:2] == [tok.bos_token_id, processor.media_token_id]
        assert labels[-len(expected):] == [-100, -100, *expected[2:]]
        assert all(label == -100 for label in labels[:-len(expected)])  # left padding



def open_flamingo_helpers():
    """tests/models/open_flamingo/open_flamingo_helpers.py, imported by path (that folder is no package: it would
    shadow the `open_flamingo` reference library); the same module object its own tests import."""
    name = "open_flamingo_helpers"
    if name not in sys.modules:
        path = Path(__file__).parent / "models" / "open_flamingo" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def open_flamingo_folder(tmp_path_factory):
    """What `python -m conversion open_flamingo` saves, tiny: a Llama Flamingo whose config has `eoc_token_id`, whose
    generation config stops at `<|endofchunk|>` (not the LM's EOS), and OpenFlamingo's tokenizer (`build_processor`
    adds `<|endofchunk|>` and `<image>` to the LM's)."""
    from conversion.open_flamingo import build_processor
    from tiny_models import build

    helpers = open_flamingo_helpers()
    model = build("open_flamingo", text_config=helpers.lm_config("llama"), media_token_id=helpers.MEDIA,
                  eoc_token_id=helpers.EOC)
    model.generation_config.eos_token_id = helpers.EOC  # as conversion.open_flamingo.convert sets it
    processor = build_processor(helpers.lm_tokenizer(), model.config.vision_config.image_size)
    assert (processor.media_token_id, processor.tokenizer.convert_tokens_to_ids("<|endofchunk|>")) == (
        helpers.MEDIA, helpers.EOC)
    path = tmp_path_factory.mktemp("open-flamingo") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_open_flamingo_captions_end_with_the_token_generate_stops_at(tmp_path, open_flamingo_folder):
    """--model <OpenFlamingo conversion>: captions are OpenFlamingo's `<image>caption<|endofchunk|>`, the token
    generate() stops at (generation_config.eos_token_id), labelled; not the LM's EOS, which generate() would
    never stop at after fine-tuning."""
    from PIL import Image

    helpers = open_flamingo_helpers()
    args = train_flamingo.parse_args(["--model", open_flamingo_folder, "--output-dir", str(tmp_path),
                                      "--train-size", "8", "--eval-size", "8", "--freeze-pretrained",
                                      "--train-input-embeddings"])
    trainer = train_flamingo.build_trainer(args)
    stop = trainer.model.generation_config.eos_token_id
    assert stop == helpers.EOC
    rows = [{"image": Image.new("RGB", (20, 24), (200, 10, 10)), "caption": "w5 w6"},
            {"image": Image.new("RGB", (24, 20), (10, 10, 200)), "caption": "w7"}]
    batch = trainer.data_collator(rows)
    media, eos = helpers.MEDIA, trainer.processing_class.tokenizer.eos_token_id
    assert batch["input_ids"].tolist() == [[media, 5, 6, stop], [0, media, 7, stop]]  # left padded
    assert batch["labels"].tolist() == [[-100, 5, 6, stop], [-100, -100, 7, stop]]
    assert eos not in batch["input_ids"]


def test_from_scratch_captions_still_end_with_eos(tmp_path):
    """Without --model (no eoc_token_id): `[BOS] <image> caption [EOS]`, as before; generate() stops at [EOS]."""
    args = train_flamingo.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "8"])
    trainer = train_flamingo.build_trainer(args)
    tok = trainer.processing_class.tokenizer
    assert trainer.model.generation_config.eos_token_id == tok.eos_token_id
    data = make_shapes_dataset(2, seed=0)
    batch = trainer.data_collator([data[0], data[1]])
    expected = train_flamingo.caption_collator(trainer.processing_class)([data[0], data[1]])
    assert all(torch.equal(batch[k], expected[k]) for k in ("input_ids", "attention_mask", "labels", "pixel_values"))
    assert batch["input_ids"][:, -1].tolist() == [tok.eos_token_id] * 2


def test_gradient_accumulation_gives_the_big_batch_loss(tmp_path, ragged_dataset):
    """batch 4 x GA 2 logs the loss of batch 8 x GA 1: caption-token sum over both micro-batches / token count
    (Trainer's num_items_in_batch), not the mean of two per-micro-batch means (captions differ in length)."""
    args = ["--dataset", ragged_dataset, "--max-steps", "1", "--logging-steps", "1", "--eval-steps", "1"]
    one = train_flamingo.main(["--output-dir", str(tmp_path / "ga1"), "--batch-size", "8", *args])
    two = train_flamingo.main(["--output-dir", str(tmp_path / "ga2"), "--batch-size", "4",
                               "--gradient-accumulation-steps", "2", *args])
    assert losses(two["log_history"])[1] == pytest.approx(losses(one["log_history"])[1], rel=1e-5)


def test_freeze_pretrained_trains_only_perceiver_and_cross_attention(tmp_path):
    args = train_flamingo.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "8",
                                      "--freeze-pretrained"])
    model = train_flamingo.build_trainer(args).model
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"perceiver", "cross_attn_layers"}
    assert not model.lm_head.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    args.train_input_embeddings = True
    model = train_flamingo.build_trainer(args).model
    assert model.model.embed_tokens.weight.requires_grad


def test_torchrun_two_processes_match_one(tmp_path, ragged_dataset):
    """2 processes x batch 8 (gloo, torchrun) log the losses of 1 process x batch 16 within rel 1e-4.

    Captions differ in length, so the processes hold different token counts: the loss is exact only because
    the token count is summed over processes (average_tokens_across_devices). The tolerance covers float32
    reductions in another order (and their effect through one Adam step)."""
    args = ["--dataset", ragged_dataset, "--max-steps", "2", "--logging-steps", "1", "--save-steps", "2",
            "--eval-steps", "2"]
    one = train_flamingo.main(["--output-dir", str(tmp_path / "one"), "--batch-size", "16", *args])
    two = torchrun("examples.train_flamingo", ["--batch-size", "8", *args], tmp_path / "two")
    assert sorted(losses(two["log_history"])) == [1, 2]
    assert losses(two["log_history"]) == pytest.approx(losses(one["log_history"]), rel=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)
