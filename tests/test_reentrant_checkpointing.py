"""Reentrant activation checkpointing with LoRA inside a frozen vision tower.

Reentrant checkpointing only back-propagates into a checkpointed segment whose inputs require grad. transformers'
`enable_input_require_grads` hooks the token embeddings of every PreTrainedModel; hf_mm's vision towers are plain
modules, so `HfMmPreTrainedModel` hooks their patch embeddings too. Without that, the vision tower's LoRA weights
silently got no gradient.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import tiny_models as tm


def lora_gradients(family: str, checkpointing: bool) -> dict[str, torch.Tensor | None]:
    model = tm.build(family).train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = tm.inputs(family, model)
    if family == "flamingo":
        kwargs = dict(labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    else:
        kwargs = dict(return_loss=True)
    peft_model(**batch, **kwargs).loss.backward()
    return {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["coca", "flamingo", "x_clip"])
def test_vision_lora_gets_the_same_gradients_under_reentrant_checkpointing(family):
    plain = lora_gradients(family, checkpointing=False)
    checkpointed = lora_gradients(family, checkpointing=True)
    assert any("vision_model" in name for name in plain)
    assert plain.keys() == checkpointed.keys()
    missing = sorted(name for name, grad in checkpointed.items() if grad is None)
    assert not missing, f"no gradient under reentrant checkpointing: {missing}"
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_disable_input_require_grads_removes_the_vision_hooks():
    model = tm.build("coca").requires_grad_(False)
    pixels = torch.randn(1, 3, 16, 16)
    model.enable_input_require_grads()
    model.enable_input_require_grads()  # twice: the first call's hooks are replaced, not kept beside
    assert len(model._require_grads_hooks) == 2  # token embedding + the vision tower's patch embedding
    assert model.vision_model.patch_embedding(pixels).requires_grad
    model.disable_input_require_grads()
    assert not model.vision_model.patch_embedding(pixels).requires_grad
    tokens = torch.tensor([[1, 5, 6]])
    assert not model.get_input_embeddings()(tokens).requires_grad
