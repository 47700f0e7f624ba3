"""Import-only stand-in for ``omegaconf``, imported by dalle_pytorch.vae (only VQGanVAE uses it)."""

from conversion.reference_imports import standin_class, standin_function


class OmegaConf:
    """Every method raises NotImplementedError; there is no config system here."""

    load = staticmethod(standin_function(f"{__name__}.OmegaConf.load"))
    create = staticmethod(standin_function(f"{__name__}.OmegaConf.create"))
    merge = staticmethod(standin_function(f"{__name__}.OmegaConf.merge"))
    to_container = staticmethod(standin_function(f"{__name__}.OmegaConf.to_container"))
    to_yaml = staticmethod(standin_function(f"{__name__}.OmegaConf.to_yaml"))

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "stand-in: omegaconf.OmegaConf is an import-only stand-in from conversion/reference_stubs")


DictConfig = standin_class(f"{__name__}.DictConfig")
ListConfig = standin_class(f"{__name__}.ListConfig")

__all__ = ["OmegaConf", "DictConfig", "ListConfig"]
