"""PEFT LoRA on the CoCa multimodal decoder (q_proj / v_proj of `decoder_layers`)."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model

import hf_mm  # noqa: F401
from examples.coca_common import CocaCaptionCollator, caption_processor, tiny_coca_config
from examples.synthetic_shapes import caption_vocabulary, make_shapes_dataset
from ecosystem_helpers import base_weights, train_adapters
from hf_mm.models.coca import CocaModel

TARGET = r"decoder_layers\.\d+\.(self|cross)_block\.attn\.(q_proj|v_proj)"


def test_lora_on_decoder_trains_only_adapters_and_round_trips(tmp_path):
    torch.manual_seed(0)
    processor = caption_processor(caption_vocabulary(), image_size=32)
    model = CocaModel(tiny_coca_config(processor.tokenizer, hidden_size=32, layers=1))
    data = make_shapes_dataset(8, seed=0)
    batch = CocaCaptionCollator(processor)([data[i] for i in range(8)])
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "base")

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGET, init_lora_weights=False))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "decoder_layers" in n for n in trainable)
    assert {n.split(".attn.")[1].split(".")[0] for n in trainable} == {"q_proj", "v_proj"}

    first, last = train_adapters(peft_model, batch, steps=3)
    assert last < first
    merged_keys = base_weights(peft_model)
    for name, value in base_state.items():  # the frozen base is untouched
        torch.testing.assert_close(merged_keys[name], value)

    inputs = processor(images=data[0]["image"], text="", return_tensors="pt")
    peft_model.eval()
    ids = peft_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(CocaModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded.generate(**inputs, max_new_tokens=4, do_sample=False), ids)
