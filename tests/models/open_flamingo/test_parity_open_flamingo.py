"""Parity with open-flamingo 2.0.1 through `conversion/open_flamingo.py`, on tiny random LMs of four families.

open_flamingo on transformers 5 (what breaks, and how these tests step around it):
- `generate()` raises `TypeError: FlamingoLMMixin.forward() missing ... 'attention_mask'` whenever the mask has no
  padding (transformers 5 drops all-ones masks): the reference generates only with a padded mask; elsewhere
  hf_mm is compared with a naive full-recompute greedy decode through the reference's forward.
- GPT-2 LMs fail in every call (`GPT2Model` calls its blocks positionally, `FlamingoLayer.forward` takes
  keywords): its parity test swaps in a positional-arguments `FlamingoLayer.forward` for the reference.
"""

import pytest
import torch

from conversion.common import UnmappedTensorsError, max_abs_diff

from open_flamingo_helpers import (
    CONFIGS, EOC, MEDIA, build, convert_reference, few_shot_prompt, left_padded, pair, trained_tensors, vision_x,
)

TOL = 1e-4
NAMES = list(CONFIGS)


@pytest.fixture(scope="module", params=NAMES)
def converted(request):
    return (request.param, *pair(request.param))


@torch.no_grad()
def test_logits_few_shot_with_left_padding(converted):
    name, ref, model = converted
    ids, mask = left_padded(few_shot_prompt())
    px = vision_x(name)
    diff = max_abs_diff(model(input_ids=ids, pixel_values=px, attention_mask=mask).logits,
                        ref(px, ids, attention_mask=mask).logits)
    assert diff <= TOL, f"{name}: max abs diff {diff}"


@torch.no_grad()
def test_logits_three_images_no_mask(converted):
    name, ref, model = converted
    ids = torch.randint(3, EOC, (2, 14), generator=torch.Generator().manual_seed(5))
    ids[:, [1, 6, 10]], ids[:, [5, 9]] = MEDIA, EOC
    px = vision_x(name, num_media=3, seed=7)
    diff = max_abs_diff(model(input_ids=ids, pixel_values=px[:, :, 0]).logits, ref(px, ids).logits)
    assert diff <= TOL, f"{name}: max abs diff {diff}"


def _greedy(model, **kw):
    return model.generate(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0,
                          **kw)


@torch.no_grad()
def test_greedy_tokens_equal_reference_generate_with_padded_mask(converted):
    name, ref, model = converted
    ids, mask = left_padded(few_shot_prompt(seed=2))
    px = vision_x(name, seed=3)
    suppressed = model.generation_config.suppress_tokens  # hf_mm's default: <image> (and pad); open_flamingo has none
    assert MEDIA in suppressed
    theirs = ref.generate(px, ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, eos_token_id=None,
                          pad_token_id=0, suppress_tokens=suppressed)
    ours = _greedy(model, input_ids=ids, attention_mask=mask, pixel_values=px)
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_greedy_without_padding_where_reference_generate_fails(converted):
    """transformers 5 drops the all-ones mask, open_flamingo then fails; compare with a naive reference decode."""
    name, ref, model = converted
    ids, px = few_shot_prompt(seed=4), vision_x(name, seed=5)
    with pytest.raises(TypeError, match="attention_mask"):
        ref.generate(px, ids, max_new_tokens=2)
    ref.lang_encoder.clear_conditioned_layers()
    ref.lang_encoder._use_cached_vision_x = False  # the failed call left its media cached
    seq = ids
    for _ in range(6):
        logits = ref(px, seq).logits[:, -1]
        logits[:, model.generation_config.suppress_tokens] = -float("inf")
        seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(_greedy(model, input_ids=ids, pixel_values=px), seq)


@torch.no_grad()
def test_gpt2_language_model_with_positional_flamingo_layer(monkeypatch):
    """open_flamingo's FlamingoLayer cannot take GPT-2's positional block arguments; the stand-in forward below
    passes them through (otherwise open_flamingo's code), then hf_mm must match it."""
    from open_flamingo.src.flamingo_lm import FlamingoLayer
    from transformers import AutoModelForCausalLM

    from open_flamingo_helpers import MEDIA as media, lm_config, open_gates
    from conversion.open_flamingo import build_reference, convert

    vision = dict(image_size=16, patch_size=8, width=32, head_width=16, layers=1, final_ln_after_pool=True)
    torch.manual_seed(0)
    ref = build_reference(lm_config("gpt2"), vision, 1, media, EOC, quick_gelu=False).eval()
    open_gates(ref)
    ids, px = few_shot_prompt(), torch.randn(2, 2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="positional argument"):
        ref(px, ids)
    original = FlamingoLayer.forward

    def positional_forward(self, lang_x, *args, **kwargs):
        lang_x = self.gated_cross_attn_layer(lang_x, self.vis_x, media_locations=self.media_locations,
                                             use_cached_media=self.use_cached_media) \
            if self.gated_cross_attn_layer is not None else lang_x
        return self.decoder_layer(lang_x, *args, **kwargs)

    monkeypatch.setattr(FlamingoLayer, "forward", positional_forward)
    model = convert(ref.state_dict(), lm_config("gpt2"), media_token_id=media, eoc_token_id=EOC,
                    vision_head_width=16, quick_gelu=False)
    assert model.lm_head.weight is model.model.language_model.wte.weight  # GPT-2 ties its head
    diff = max_abs_diff(model(input_ids=ids, pixel_values=px).logits, ref(px, ids).logits)
    assert diff <= TOL and original is not positional_forward


def test_every_tensor_accounted_for():
    name = NAMES[0]
    ref, _ = pair(name)
    state = ref.state_dict()
    assert len(state) == 172 and len({t.data_ptr() for t in state.values()}) == 132  # three names per module
    report = {}
    convert_reference(name, ref, report=report)
    assert report["unused_vision_tensors"] == ["vision_encoder.proj", "vision_encoder.ln_post.weight",
                                               "vision_encoder.ln_post.bias"]
    for key, match in (("lang_encoder.old_decoder_blocks.1.mlp.up_proj.weight", "expected to equal"),
                       ("lang_encoder.gated_cross_attn_layers.0.attn.to_q.weight", "expected to equal")):
        broken = dict(state)
        broken[key] = broken[key] + 1
        with pytest.raises(UnmappedTensorsError, match=match):
            convert_reference(name, ref, broken)
    with pytest.raises(UnmappedTensorsError, match="stray"):
        convert_reference(name, ref, {**state, "lang_encoder.stray": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if not k.startswith("vision_encoder.")}
    with pytest.raises(UnmappedTensorsError, match="vision_state_dict"):
        convert_reference(name, ref, missing)


@torch.no_grad()
def test_released_checkpoint_plus_language_model_and_vision_weights(tmp_path):
    """Released checkpoint.pt files hold only what training changed (`trained_tensors`); the LM and the CLIP tower
    come from their own files."""
    from transformers import AutoModelForCausalLM

    from conversion.common import load_checkpoint

    from open_flamingo_helpers import lm_config

    name = "gpt_neox-every2"
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(lm_config("gpt_neox", 4))
    lm_state = {k: v.clone() for k, v in lm.state_dict().items()}  # HF names, before open_flamingo wraps the layers
    ref = build(name, language_model=lm)
    full = ref.state_dict()
    trained = trained_tensors(full)
    torch.save(trained, tmp_path / "checkpoint.pt")
    clip_state = {f"visual.{k}": v for k, v in ref.vision_encoder.state_dict().items()}
    clip_state["text_projection"] = torch.zeros(2)  # a whole CLIP state dict: only visual.* is read
    report = {}
    model = convert_reference(name, ref, load_checkpoint(tmp_path / "checkpoint.pt"),
                              language_model_state_dict=lm_state, vision_state_dict=clip_state, report=report)
    assert report["tensors"]["checkpoint"] == len(trained) < len(full) // 2
    ids, px = few_shot_prompt(), vision_x(name)
    assert max_abs_diff(model(input_ids=ids, pixel_values=px).logits, ref(px, ids).logits) <= TOL
