"""DALL-E with PEFT (LoRA on the embeddings, LoRA + reentrant gradient checkpointing) and accelerate offloading."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import tiny_models as tm


def test_lora_on_the_embedding_modules_changes_the_loss_and_trains():
    model = tm.build("dalle").train()
    batch = tm.inputs("dalle", model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["embed_text", "embed_image"],
                                                  init_lora_weights=False))
    loss = peft_model(**batch, return_loss=True).loss
    loss.backward()
    lora = {n: p.grad for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(lora) == 4 and all(g is not None and g.abs().sum() > 0 for g in lora.values())
    with peft_model.disable_adapter(), torch.no_grad():
        assert abs(peft_model(**batch, return_loss=True).loss.item() - loss.item()) > 1e-6


def lora_gradients(overrides: dict, checkpointing: bool) -> dict[str, torch.Tensor | None]:
    model = tm.build("dalle", **overrides).train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model(**tm.inputs("dalle", model), return_loss=True).loss.backward()
    return {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides", [{}, dict(share_input_output_emb=True)], ids=["own-tables", "shared"])
def test_lora_gets_the_same_gradients_under_reentrant_checkpointing(overrides):
    """Reentrant checkpointing needs the embeddings' output to require grad (`enable_input_require_grads`)."""
    plain = lora_gradients(overrides, checkpointing=False)
    checkpointed = lora_gradients(overrides, checkpointing=True)
    assert plain and plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


@pytest.mark.parametrize("overrides", [{}, dict(share_input_output_emb=True)], ids=["own-tables", "shared"])
def test_disk_offloaded_model_runs(tmp_path, overrides):
    model = tm.build("dalle", **overrides)
    model.save_pretrained(tmp_path / "model")
    offloaded = type(model).from_pretrained(tmp_path / "model", device_map="auto", max_memory={"cpu": "30KB"},
                                            offload_folder=tmp_path / "offload").eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    batch = tm.inputs("dalle", model)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**batch).logits, model(**batch).logits)
