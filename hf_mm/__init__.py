"""hf_mm: CoCa, x-clip CLIP, Flamingo and DALL-E as Hugging Face transformers models.

Importing the package registers every model, config and processor with transformers' Auto classes.
"""

__version__ = "0.1.0"

from . import layers  # noqa: F401
from .registration import register_all

register_all()
