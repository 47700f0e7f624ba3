"""x-clip cases for tests/distributed_check.py (loaded by file path inside each spawned process)."""

import torch

from hf_mm.models.x_clip import XClipConfig, XClipModel

TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16, max_position_embeddings=8)
VISION = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
              patch_dropout=0.0)
OPTIONS = {
    "default": {},
    "filip": dict(use_all_token_embeds=True),
    "dcl": dict(decoupled_contrastive_learning=True),
    "filip_dcl_extra": dict(use_all_token_embeds=True, decoupled_contrastive_learning=True, extra_latent_projection=True),
    "extra_simreg": dict(extra_latent_projection=True, sim_reg_loss_weight=0.5),
    "multiview": dict(decoupled_contrastive_learning=True),
}


def _model(name):
    torch.manual_seed(0)
    return XClipModel(XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16, **OPTIONS[name]))


def _batch(n, seed, views=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, 8), generator=g)
    ids[::2, 5:] = 0  # padding, so FILIP's masked means matter
    batch = dict(input_ids=ids, pixel_values=torch.randn(n, 3, 16, 16, generator=g))
    if views:
        batch["aug_input_ids"] = (torch.randint(1, 50, (n, 8), generator=g),)
        batch["aug_pixel_values"] = (torch.randn(n, 3, 16, 16, generator=g),)
    return batch


def _loss(model, batch):
    return model(**batch, return_loss=True).loss


for _name in OPTIONS:
    globals()[f"make_model_{_name}"] = lambda _n=_name: _model(_n)
    globals()[f"make_batch_{_name}"] = lambda n, seed, _n=_name: _batch(n, seed, views=_n == "multiview")
    globals()[f"loss_{_name}"] = _loss


# FILIP with texts padded per rank (a processor pads to the longest text of its own batch): rank 0's rows are
# all short, so it trims its padding columns and its token latents are shorter than rank 1's
def make_model_filip_per_rank_padding():
    return _model("filip")


def make_batch_filip_per_rank_padding(n, seed):
    batch = _batch(n, seed)
    batch["input_ids"][:3, 5:] = 0
    return batch


def loss_filip_per_rank_padding(model, batch):
    length = int((batch["input_ids"] != 0).any(dim=0).nonzero().max()) + 1
    return _loss(model, dict(batch, input_ids=batch["input_ids"][:, :length]))
