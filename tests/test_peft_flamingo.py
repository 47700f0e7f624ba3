"""PEFT LoRA on Flamingo's gated cross-attention (q/k/v/o projections of `cross_attn_layers`): only the adapters
train, the base stays frozen and untouched, and the adapter round-trips through save/load (and merges)."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import hf_mm  # noqa: F401
from examples.synthetic_shapes import caption_vocabulary, make_shapes_dataset
from examples.train_flamingo import caption_collator, caption_processor, tiny_flamingo
from ecosystem_helpers import base_weights, train_adapters
from hf_mm.models.flamingo import FlamingoForConditionalGeneration

TARGET = r"model\.cross_attn_layers\.\d+\.attn\.(q_proj|k_proj|v_proj|o_proj)"


@pytest.fixture
def setup(tmp_path_factory):  # get_peft_model edits the model in place: one per test
    torch.manual_seed(0)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    model = tiny_flamingo(processor, hidden_size=32)
    with torch.no_grad():  # open the tanh gates: at 0 the cross-attention (and its adapters) would not act
        for block in model.model.cross_attn_layers.values():
            block.attn_gate.fill_(1.0)
    path = tmp_path_factory.mktemp("flamingo_base")
    model.save_pretrained(path)
    data = make_shapes_dataset(8, seed=0)
    batch = caption_collator(processor)([data[i] for i in range(8)])
    batch.pop("return_loss")
    return processor, model, path, batch, data


def test_lora_on_cross_attention_trains_only_adapters_and_round_trips(setup, tmp_path):
    processor, model, base_dir, batch, data = setup
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base_logits = model(**batch).logits

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGET))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".cross_attn_layers." in n for n in trainable)
    assert {n.split(".attn.")[1].split(".")[0] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(trainable) == 2 * 4 * len(model.model.cross_attn_layers)  # lora_A + lora_B per projection
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        torch.testing.assert_close(peft_model(**batch).logits, base_logits)

    first, last = train_adapters(peft_model, batch)
    assert last < first
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(**batch)
    assert all(p.abs().max() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)  # every adapter moved
    base_now = base_weights(peft_model)
    assert set(base_now) == set(base_state)
    for name, value in base_state.items():  # the frozen base (gates included) is untouched
        assert torch.equal(base_now[name], value), name

    inputs = processor(images=data[0]["image"], text="", return_tensors="pt")
    ids = peft_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(FlamingoForConditionalGeneration.from_pretrained(base_dir),
                                         tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, tuned.logits)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=4, do_sample=False), ids)
    merged = reloaded.merge_and_unload()
    assert type(merged) is FlamingoForConditionalGeneration
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, tuned.logits, atol=1e-5, rtol=1e-5)
