"""Stand-in for ``torchvision.datasets``: the dataset classes timm.data.dataset_factory imports."""

from conversion.reference_imports import standin_class

_CLASSES = ("CIFAR10", "CIFAR100", "FashionMNIST", "ImageFolder", "KMNIST", "MNIST")
for _name in _CLASSES:
    globals()[_name] = standin_class(f"{__name__}.{_name}")
del _name

__all__ = list(_CLASSES)
