"""Small reference CoCa models (open_clip and coca-pytorch) and their hf_mm conversions, for the tests."""

import torch
from reference_imports import require_reference

OPEN_CLIP_CONFIGS = {
    # name: (CoCa kwargs, image size, vocab)
    "attn_pool": dict(
        embed_dim=32,
        multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2),
        text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2, embed_cls=True, output_tokens=True),
        vision_cfg=dict(image_size=32, patch_size=8, width=48, head_width=24, layers=2, attentional_pool=True,
                        attn_pooler_heads=2, attn_pooler_queries=8, output_tokens=True),
    ),
    "quick_gelu_layer_scale": dict(
        embed_dim=24, quick_gelu=True,
        multimodal_cfg=dict(context_length=10, vocab_size=73, width=24, heads=4, layers=1, ls_init_value=0.5),
        text_cfg=dict(context_length=10, vocab_size=73, width=24, heads=3, layers=3, embed_cls=True,
                      output_tokens=True, ls_init_value=0.5),
        vision_cfg=dict(image_size=24, patch_size=6, width=32, head_width=16, layers=1, attentional_pool=True,
                        attn_pooler_heads=3, attn_pooler_queries=5, output_tokens=True, ls_init_value=0.5),
    ),
    "vision_norm_eps_gelu_tanh": dict(  # vision norm_kwargs / act_kwargs, read off the modules by the converter
        embed_dim=32,
        multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=1),
        text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=1, embed_cls=True, output_tokens=True),
        vision_cfg=dict(image_size=16, patch_size=8, width=32, head_width=16, layers=1, attentional_pool=False,
                        output_tokens=True, norm_kwargs=dict(eps=1e-3), act_kwargs=dict(approximate="tanh")),
    ),
    "no_pooler_coca_base": dict(
        embed_dim=40,
        multimodal_cfg=dict(context_length=16, vocab_size=120, width=32, heads=2, layers=2),
        text_cfg=dict(context_length=16, vocab_size=120, width=32, heads=4, layers=1, embed_cls=True, output_tokens=True),
        vision_cfg=dict(image_size=36, patch_size=12, width=32, head_width=16, layers=2, attentional_pool=False,
                        output_tokens=True),
    ),
}


def open_clip_reference(name: str, seed: int = 0):
    """A random open_clip CoCa with the decoder projection initialised (open_clip leaves it uninitialised)."""
    coca_model = require_reference("open_clip.coca_model")
    torch.manual_seed(seed)
    kwargs = OPEN_CLIP_CONFIGS[name]
    ref = coca_model.CoCa(**kwargs).eval()
    width = kwargs["multimodal_cfg"]["width"]
    torch.nn.init.normal_(ref.text_decoder.text_projection, std=width**-0.5)
    return ref, kwargs["vision_cfg"]["image_size"], kwargs["text_cfg"]["vocab_size"], kwargs["text_cfg"]["context_length"]


COCA_PYTORCH_CONFIGS = {
    # name: (CoCa kwargs, vit kwargs or None)
    "encoder_free": (dict(dim=64, num_tokens=100, unimodal_depth=1, multimodal_depth=1, dim_head=16, heads=4,
                          num_img_queries=8, image_dim=40), None),
    "vit_encoder": (dict(dim=32, num_tokens=80, unimodal_depth=2, multimodal_depth=2, dim_head=8, heads=2,
                         num_img_queries=4, image_dim=48, caption_loss_weight=2.0, contrastive_loss_weight=0.5),
                    dict(image_size=32, patch_size=8, num_classes=10, dim=48, depth=1, heads=2, mlp_dim=96, dim_head=24)),
    "wide_ff": (dict(dim=48, num_tokens=150, unimodal_depth=3, multimodal_depth=1, dim_head=12, heads=6,
                     num_img_queries=6, ff_mult=2, pad_id=1), None),
}


def coca_pytorch_reference(name: str, seed: int = 0):
    coca_pytorch = require_reference("coca_pytorch")
    kwargs, vit_kwargs = COCA_PYTORCH_CONFIGS[name]
    torch.manual_seed(seed)
    kwargs = dict(kwargs)
    if vit_kwargs is not None:
        vit = require_reference("vit_pytorch").ViT(**vit_kwargs)
        extractor = require_reference("vit_pytorch.extractor").Extractor
        kwargs["img_encoder"] = extractor(vit, return_embeddings_only=True, detach=False)
    return coca_pytorch.CoCa(**kwargs).eval(), vit_kwargs


def tiny_coca_config(**overrides):
    from hf_mm.models.coca import CocaConfig

    cfg = dict(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=24, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        multimodal_config=dict(num_hidden_layers=2),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_attention_heads=2,
                           num_hidden_layers=1, intermediate_size=64),
        attn_pooler_queries=5, attn_pooler_heads=2, projection_dim=16,
    )
    cfg.update(overrides)
    return CocaConfig(**cfg)
