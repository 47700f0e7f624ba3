"""CocaModel converted from open_clip CoCa matches it (fp32, max abs diff <= 1e-4) on several configs."""

import pytest
import torch
from conversion.common import UnmappedTensorsError
from conversion.open_clip_coca import convert
from reference_imports import require_reference

from .references import OPEN_CLIP_CONFIGS, open_clip_reference

TOL = 1e-4


def _inputs(image_size, vocab, ctx, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, image_size, image_size, generator=g)
    text = torch.randint(3, vocab, (3, ctx), generator=g)
    text[1, ctx - 3:] = 0  # right padding, open_clip's pad id 0
    text[2, ctx // 2:] = 0
    return images, text


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", sorted(OPEN_CLIP_CONFIGS))
def test_outputs_match_open_clip(name, masked):
    """Right-padded text, with `attention_mask` or without one (padding is then `input_ids != pad_token_id`, as
    open_clip derives it)."""
    ref, image_size, vocab, ctx = open_clip_reference(name)
    model = convert(ref, bos_token_id=1, eos_token_id=2)
    images, text = _inputs(image_size, vocab, ctx)
    mask = (text != 0).long() if masked else None
    with torch.no_grad():
        ref_out = ref(images, text, output_labels=False)
        ours = model(input_ids=text, pixel_values=images, attention_mask=mask)
    assert (ref_out["image_features"] - ours.image_embeds).abs().max() <= TOL
    assert (ref_out["text_features"] - ours.text_embeds).abs().max() <= TOL
    ref_logits = ref_out["logit_scale"] * ref_out["image_features"] @ ref_out["text_features"].t()
    assert (ref_logits - ours.logits_per_image).abs().max() <= TOL * ref_out["logit_scale"]
    assert torch.equal(ours.logits_per_text, ours.logits_per_image.t())
    # every position, padded ones included (open_clip's legacy CLS/pad mask is reproduced)
    assert (ref_out["logits"] - ours.logits).abs().max() <= TOL


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", ["attn_pool", "no_pooler_coca_base"])
def test_loss_matches_open_clip_coca_loss(name, masked):
    loss_mod = require_reference("open_clip.loss")
    ref, image_size, vocab, ctx = open_clip_reference(name)
    model = convert(ref, bos_token_id=1, eos_token_id=2, caption_loss_weight=2.0, contrastive_loss_weight=1.0)
    images, text = _inputs(image_size, vocab, ctx, seed=2)
    with torch.no_grad():
        out = ref(images, text)  # output_labels=True: logits over text[:, :-1], labels text[:, 1:]
        clip_loss, caption_loss = loss_mod.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(
            out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"])
        mask = (text != 0).long() if masked else None
        ours = model(input_ids=text, pixel_values=images, attention_mask=mask, return_loss=True)
    assert abs(ours.caption_loss * 2.0 - caption_loss) <= TOL
    assert abs(ours.contrastive_loss - clip_loss) <= TOL
    assert abs(ours.loss - (clip_loss + caption_loss)) <= TOL


def test_every_source_tensor_is_accounted_for():
    ref, *_ = open_clip_reference("attn_pool")
    sd = ref.state_dict()
    sd["visual.extra_unknown"] = torch.zeros(1)
    from conversion.common import StateDictConverter
    from conversion.open_clip_coca import build_config, convert_state_dict
    from hf_mm.models.coca import CocaModel

    config = build_config(ref, bos_token_id=1, eos_token_id=2)
    conv = StateDictConverter(sd)
    convert_state_dict(conv, config)
    with pytest.raises(UnmappedTensorsError, match="visual.extra_unknown"):
        conv.finish(CocaModel(config))
    del sd["visual.extra_unknown"], sd["text.ln_final.bias"]
    conv = StateDictConverter(sd)
    with pytest.raises(UnmappedTensorsError, match="text.ln_final.bias"):
        convert_state_dict(conv, config)


UNSUPPORTED = {  # open_clip options hf_mm does not reproduce: refused, never converted into a different model
    "vision pool_type avg": (dict(vision_cfg=dict(pool_type="avg", attentional_pool=False)), "pool_type='avg'"),
    "vision final_ln_after_pool": (dict(vision_cfg=dict(final_ln_after_pool=True, attentional_pool=False)),
                                   "final_ln_after_pool"),
    "text proj_bias": (dict(text_cfg=dict(proj_bias=True)), "proj_bias"),
    "text proj_type none": (dict(text_cfg=dict(proj_type="none")), "proj_type='none'"),
    # open_clip's decoder ignores multimodal norm/act kwargs: a text tower with other ones differs from it
    "text norm eps": (dict(text_cfg=dict(norm_kwargs=dict(eps=1e-3))), "several eps"),
    "text gelu tanh": (dict(text_cfg=dict(act_kwargs=dict(approximate="tanh"))), "decoder's MLP activation"),
    "vision eps with a pooler": (dict(vision_cfg=dict(norm_kwargs=dict(eps=1e-3))), "several eps"),
    "text no_causal_mask": (dict(text_cfg=dict(no_causal_mask=True)), "no_causal_mask"),
    # open_clip's decoder always has mlp_ratio 4; hf_mm's shares the text tower's feed-forward width
    "text mlp_ratio": (dict(text_cfg=dict(mlp_ratio=2.0)), "text mlp_ratio"),
    "decoder layer scale only": (dict(multimodal_cfg=dict(ls_init_value=0.3)), "ls_init_value"),
    "text layer scale only": (dict(text_cfg=dict(ls_init_value=0.3)), "ls_init_value"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_open_clip_options_are_refused(case):
    import copy

    coca_model = require_reference("open_clip.coca_model")
    changes, message = UNSUPPORTED[case]
    kwargs = copy.deepcopy(OPEN_CLIP_CONFIGS["attn_pool"])
    for tower, values in changes.items():
        kwargs[tower].update(values)
    torch.manual_seed(0)
    ref = coca_model.CoCa(**kwargs).eval()
    with pytest.raises(ValueError, match=message):
        convert(ref, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("name", ["attn_pool", "quick_gelu_layer_scale"])
def test_text_embedding_does_not_depend_on_how_far_the_batch_is_padded(name):
    """open_clip's tokenizer pads every text to the context, so its CLS sits at the last position and (legacy
    mask) sees the first pad. A processor or pipeline pads to the longest text of the batch: the embeddings must
    still be open_clip's (they used to move by ~0.1 with the padded length)."""
    ref, image_size, vocab, ctx = open_clip_reference(name)
    model = convert(ref, bos_token_id=1, eos_token_id=2)
    _, text = _inputs(image_size, vocab, ctx)
    text[0, ctx - 2:] = 0  # the longest text leaves 2 pads
    with torch.no_grad():
        expected = ref.encode_text(text)
        for width in (ctx - 2, ctx - 1, ctx):  # padded to the longest text (no pad in row 0), one more, the context
            ids = text[:, :width]
            for mask in ((ids != 0).long(), None):  # without a mask, padding is `input_ids != pad_token_id`
                ours = model.get_text_features(input_ids=ids, attention_mask=mask)
                assert (ours - expected).abs().max() <= TOL, (width, mask)
