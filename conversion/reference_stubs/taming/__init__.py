"""Import-only stand-in for ``taming`` (taming-transformers), imported by dalle_pytorch.vae for VQGanVAE."""
