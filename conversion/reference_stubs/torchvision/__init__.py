"""Import-only stand-in for ``torchvision`` (conversion/reference_stubs).

torchvision must never be installed in this project (the registry build is CUDA-only and breaks
``import transformers``). open_clip, timm, x_clip, vit_pytorch and dalle_pytorch import it at module
import time, so this stand-in provides just the names they evaluate on import. Every transform, op
and I/O function raises ``NotImplementedError("stand-in: ...")`` when used.
"""

__version__ = "0.0.0+reference.stub"

from . import datasets, io, ops, transforms  # noqa: E402,F401  (the real package imports these eagerly too)
