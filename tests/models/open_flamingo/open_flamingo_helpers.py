"""Tiny OpenFlamingo references (open_flamingo 2.0.1 around tiny random HF LMs) and their hf_mm conversions.

This folder has no __init__.py on purpose: as a package it would shadow the `open_flamingo` reference library.
"""

import functools

import torch
from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig, OPTConfig

from reference_imports import require_reference

VOCAB, EOC, MEDIA = 100, 98, 99  # the last two ids: the tokens OpenFlamingo adds to the tokenizer


def lm_config(kind: str, layers: int = 2):
    """A tiny random causal-LM config of one of the five families (hidden 64, vocab 100)."""
    if kind == "llama":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "gpt_neox":
        return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=64)
    if kind == "opt":
        return OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, ffn_dim=128, num_attention_heads=4,
                         max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    if kind == "gptj":
        return GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, rotary_dim=8, n_positions=64,
                          bos_token_id=1, eos_token_id=2)
    if kind == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, n_positions=64, bos_token_id=1,
                          eos_token_id=2)
    raise ValueError(kind)


def lm_tokenizer():
    """A word-level LM tokenizer of 98 tokens (no `<image>` / `<|endofchunk|>` yet), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(3, EOC)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]")


# name -> (LM kind, LM layers, cross_attn_every_n_layers, open_clip vision_cfg, quick_gelu); vary every knob the
# converter reads. final_ln_after_pool=True is open_clip < 2.23's token output (what the checkpoints need).
CONFIGS = {
    "llama-every1-quickgelu": ("llama", 2, 1, dict(image_size=32, patch_size=8, width=48, head_width=24, layers=1,
                                                  final_ln_after_pool=True), True),
    "gpt_neox-every2": ("gpt_neox", 4, 2, dict(image_size=16, patch_size=4, width=32, head_width=16, layers=2,
                                               final_ln_after_pool=True), False),
    "opt-every2-normed-tokens": ("opt", 2, 2, dict(image_size=32, patch_size=16, width=48, head_width=16, layers=1,
                                                   final_ln_after_pool=False), True),
    "gptj-every1": ("gptj", 2, 1, dict(image_size=16, patch_size=8, width=32, head_width=32, layers=1,
                                       ls_init_value=0.5, final_ln_after_pool=True), False),
}


def open_gates(reference, seed: int = 0) -> None:
    """Non-zero tanh gates (zero gates would hide the cross-attention)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in reference.lang_encoder.gated_cross_attn_layers:
            if layer is not None:
                layer.attn_gate.copy_(torch.rand(1, generator=gen) + 0.5)
                layer.ff_gate.copy_(torch.rand(1, generator=gen) + 0.5)


def build(name: str, seed: int = 0, language_model=None):
    """The reference `Flamingo` (eval, open gates) of CONFIGS[name]."""
    require_reference("open_flamingo")
    from conversion.open_flamingo import build_reference

    kind, layers, every, vision, quick_gelu = CONFIGS[name]
    torch.manual_seed(seed)
    ref = build_reference(lm_config(kind, layers), vision, every, MEDIA, EOC, quick_gelu=quick_gelu,
                          language_model=language_model).eval()
    open_gates(ref, seed)
    return ref


def convert_reference(name: str, ref, state_dict=None, **kwargs):
    from conversion.open_flamingo import convert

    kind, layers, _, vision, quick_gelu = CONFIGS[name]
    return convert(ref.state_dict() if state_dict is None else state_dict, lm_config(kind, layers),
                   media_token_id=MEDIA, eoc_token_id=EOC, vision_head_width=vision["head_width"],
                   quick_gelu=quick_gelu, normalize_patch_tokens=not vision["final_ln_after_pool"], **kwargs)


def trained_tensors(state_dict: dict) -> dict:
    """What a released checkpoint.pt holds: the tensors training changed (perceiver, cross-attention, embeddings,
    as open_flamingo's `filter_state_dict_to_trainable` keeps), each under its first name."""
    return {k: v for k, v in state_dict.items()
            if (k.startswith("perceiver.") or "gated_cross_attn_layer." in k or "embed" in k)
            and not k.startswith("lang_encoder.gated_cross_attn_layers.")}


@functools.lru_cache(maxsize=None)
def pair(name: str):
    ref = build(name)
    return ref, convert_reference(name, ref)


def few_shot_prompt(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """`<image> text <|endofchunk|> <image> text` (length 12): a one-shot interleaved prompt."""
    ids = torch.randint(3, EOC, (batch, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, 5], ids[:, 6] = MEDIA, EOC, MEDIA
    return ids


def vision_x(name: str, batch: int = 2, num_media: int = 2, seed: int = 1) -> torch.Tensor:
    """OpenFlamingo's `(b, T_img, F=1, C, H, W)`."""
    size = CONFIGS[name][3]["image_size"]
    return torch.randn(batch, num_media, 1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def left_padded(ids: torch.Tensor, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Row 1 shortened by `pad` tokens and left-padded (id 0); returns ids and the attention mask."""
    ids = ids.clone()
    mask = torch.ones_like(ids)
    ids[1, pad:] = ids[1, :-pad].clone()
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask
