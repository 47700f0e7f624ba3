"""examples/train_x_clip.py: Trainer steps, evaluation, resume, loss weights, gradient accumulation, and a
2-process torchrun (gloo) run whose losses equal a 1-process run on the same data."""

import json

import pytest
import torch

import hf_mm  # noqa: F401
from examples import train_x_clip
from examples.training_common import ImageCaptionCollator
from examples.synthetic_shapes import make_shapes_dataset
from ecosystem_helpers import check_train_evaluate_and_resume, losses, torchrun

COMMON = ["--train-size", "32", "--eval-size", "8", "--batch-size", "8", "--eval-steps", "2", "--logging-steps", "1"]


def test_train_evaluate_and_resume(tmp_path):
    check_train_evaluate_and_resume(train_x_clip.main, tmp_path, COMMON)


def first_batch(trainer, n=8):
    data = make_shapes_dataset(n, seed=0)
    return trainer.data_collator([data[i] for i in range(n)])


@pytest.mark.parametrize("overrides, flags, expected", [
    # sim-reg needs pooled latents; its weight adds on top of the contrastive loss
    ({}, ["--sim-reg-loss-weight", "0.5"], lambda o: o.contrastive_loss + 0.5 * o.sim_reg_loss),
    # an active side loss takes its weight out of the contrastive term
    ({"use_mlm": True}, ["--text-ssl-loss-weight", "0.3"], lambda o: 0.7 * o.contrastive_loss + 0.3 * o.mlm_loss),
])
def test_loss_weights_from_the_command_line_are_honoured(tmp_path, overrides, flags, expected):
    args = train_x_clip.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "8",
                                    "--config-overrides", json.dumps(overrides), *flags])
    trainer = train_x_clip.build_trainer(args)
    name, value = flags[0][2:].replace("-", "_"), float(flags[1])
    assert getattr(trainer.model.config, name) == value
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.model(**first_batch(trainer))
    assert out.contrastive_loss > 0 and (out.sim_reg_loss if out.mlm_loss is None else out.mlm_loss) > 0
    torch.testing.assert_close(out.loss, expected(out))
    with pytest.raises(ValueError, match="must be >= 0"):
        train_x_clip.build_trainer(train_x_clip.parse_args(["--output-dir", str(tmp_path), *flags[:1], "-1"]))


def test_gradient_accumulation_logs_the_mean_of_micro_batch_losses(tmp_path):
    """batch 4 x GA 2: the logged step loss is the mean of the two micro-batch losses (not their sum). x-clip's
    contrastive loss depends on the batch composition, so it differs from batch 8 x GA 1 by design."""
    args = train_x_clip.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "4",
                                    "--max-steps", "1", "--logging-steps", "1", "--batch-size", "4",
                                    "--gradient-accumulation-steps", "2"])
    trainer = train_x_clip.build_trainer(args)
    micro = []
    trainer.model.register_forward_hook(lambda m, i, out: micro.append(out.loss.item()) if m.training else None)
    trainer.train()
    assert len(micro) == 2 and abs(micro[0] - micro[1]) > 1e-4
    assert losses(trainer.state.log_history)[1] == pytest.approx(sum(micro) / 2, rel=1e-5)


def test_lit_trains_the_text_side_and_never_the_image_tower(tmp_path):
    args = train_x_clip.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "4",
                                    "--max-steps", "2", "--logging-steps", "1", "--batch-size", "4", "--lit"])
    trainer = train_x_clip.build_trainer(args)
    assert first_batch(trainer, 2)["freeze_image_encoder"] is True
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n.split(".")[0] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert "text_model" in changed and "vision_model" not in changed
    assert any(n.startswith("vision_model.") for n in before)


def test_collator_rows_to_model_inputs():
    processor = train_x_clip.caption_processor(["a", "red", "circle"], image_size=32)
    data = make_shapes_dataset(2, seed=0)
    batch = ImageCaptionCollator(processor)([data[0], data[1]])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "return_loss"}
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["return_loss"] is True
    assert batch["input_ids"][0].tolist() == processor.tokenizer(data[0]["caption"])["input_ids"]


def test_torchrun_two_processes_match_one(tmp_path):
    """2 processes x batch 8 (gloo, torchrun) log the losses of 1 process x batch 16 within rel 1e-4.

    Both see the same 16 examples per step and the loss gathers every process's latents, so the values are the
    same sums reduced in a different order; 1e-4 leaves room for that float32 reordering (and its effect through
    two Adam steps) while catching any real difference (a per-process loss over 8 pairs differs by >1e-2)."""
    # eval: 16 = 2 ranks x 8, so Accelerate's even_batches adds no duplicated (false-negative) pairs
    args = ["--train-size", "16", "--eval-size", "16", "--max-steps", "2", "--logging-steps", "1",
            "--save-steps", "2", "--eval-steps", "2"]
    one = train_x_clip.main(["--output-dir", str(tmp_path / "one"), "--batch-size", "16", *args])
    two = torchrun("examples.train_x_clip", ["--batch-size", "8", *args], tmp_path / "two")
    assert sorted(losses(two["log_history"])) == [1, 2]
    assert losses(two["log_history"]) == pytest.approx(losses(one["log_history"]), rel=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


# ------------------------------------------------------------------------- LiT with a side loss on the locked tower
def test_lit_refuses_visual_ssl_which_would_train_the_locked_image_tower(tmp_path):
    """x-clip's SimSiam/SimCLR pass encodes the images with gradients whatever `freeze_image_encoder` says (the
    reference does the same), so `--lit` cannot keep its promise with `use_visual_ssl`: a clear error instead."""
    args = train_x_clip.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "4", "--lit",
                                    "--config-overrides", json.dumps({"use_visual_ssl": True})])
    with pytest.raises(ValueError, match="--lit.*use_visual_ssl"):
        train_x_clip.build_trainer(args)


# ------------------------------------------------------------------------------------------- --config-overrides
def overridden_config(tmp_path, overrides: str):
    args = train_x_clip.parse_args(["--output-dir", str(tmp_path), "--train-size", "8", "--eval-size", "4",
                                    "--config-overrides", overrides])
    return train_x_clip.build_trainer(args).model.config


def test_config_overrides_reject_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"use_mlmm.*use_mlm"):
        overridden_config(tmp_path, '{"use_mlmm": true}')
    with pytest.raises(ValueError, match=r"text_config.*num_layers.*num_hidden_layers"):
        overridden_config(tmp_path, '{"text_config": {"num_layers": 1}}')


def test_config_overrides_merge_into_the_sub_configs(tmp_path):
    default = overridden_config(tmp_path, "{}")
    config = overridden_config(tmp_path, '{"text_config": {"num_hidden_layers": 1}, "vision_config": {"patch_size": 16}}')
    assert config.text_config.num_hidden_layers == 1 and config.vision_config.patch_size == 16
    for name in ("vocab_size", "pad_token_id", "eos_token_id", "max_position_embeddings", "hidden_size"):
        assert getattr(config.text_config, name) == getattr(default.text_config, name), name
    assert config.vision_config.image_size == default.vision_config.image_size == 32
    assert config.vision_config.hidden_size == default.vision_config.hidden_size


@pytest.mark.parametrize("overrides", ["[1, 2]", '"use_mlm"', "3", "{not json"])
def test_config_overrides_must_be_a_json_object(tmp_path, capsys, overrides):
    with pytest.raises(SystemExit):
        train_x_clip.parse_args(["--output-dir", str(tmp_path), "--config-overrides", overrides])
    assert "--config-overrides" in capsys.readouterr().err


# ------------------------------------------------------------------------- the saved tokenizer truncates (pipeline)
def test_saved_processor_and_pipeline_truncate_long_labels_like_the_processor(tmp_path):
    from transformers import AutoTokenizer, pipeline

    from examples.synthetic_shapes import caption_vocabulary
    from hf_mm.models.x_clip import XClipModel

    torch.manual_seed(0)
    processor = train_x_clip.caption_processor(caption_vocabulary(), image_size=32)
    model = XClipModel(train_x_clip.tiny_x_clip_config(processor.tokenizer, hidden_size=32, layers=1)).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    long = " ".join(caption_vocabulary()[:5] * 6)
    context = model.config.text_config.max_position_embeddings
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer(long)["input_ids"]) == context
    assert tokenizer(long)["input_ids"] == processor(text=[long])["input_ids"][0]
    assert len(tokenizer(long, truncation=False)["input_ids"]) > context  # still possible to opt out
    image = make_shapes_dataset(1, seed=1)["image"][0]
    result = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")(
        image, candidate_labels=["red circle", long], hypothesis_template="{}")
    inputs = processor(text=["red circle", long], images=[image], return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(-1)[0]
    scores = {r["label"]: r["score"] for r in result}
    assert scores["red circle"] == pytest.approx(probs[0].item(), abs=1e-5)
    assert scores[long] == pytest.approx(probs[1].item(), abs=1e-5)
