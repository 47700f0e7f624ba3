"""Import-only stand-in for ``youtokentome``, imported by dalle_pytorch.tokenizer (YttmTokenizer)."""

from enum import Enum

from conversion.reference_imports import standin_class


class OutputType(Enum):
    ID = 1
    SUBWORD = 2


BPE = standin_class(f"{__name__}.BPE")

__all__ = ["BPE", "OutputType"]
