"""Cases for tests/distributed_check.py: CoCa's contrastive loss gathered across processes."""

import torch

from hf_mm.models.coca import CocaConfig, CocaModel


def make_model_contrastive():
    torch.manual_seed(0)
    config = CocaConfig(
        text_config=dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=8, bos_token_id=1, eos_token_id=2),
        multimodal_config=dict(num_hidden_layers=1),
        vision_config=dict(image_size=8, patch_size=4, hidden_size=16, num_attention_heads=2,
                           num_hidden_layers=1, intermediate_size=32),
        attn_pooler_queries=3, attn_pooler_heads=2, projection_dim=8,
    )
    return CocaModel(config).double()  # float64: the comparison tests the algebra, not fp32 rounding


def make_batch_contrastive(n, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(input_ids=torch.randint(3, 50, (n, 6), generator=g), pixel_values=torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64))


def loss_contrastive(model, batch):
    return model(**batch, return_loss=True).contrastive_loss
