"""SimCLR-style image augmentations for x-clip's visual SSL, in plain torch (no torchvision).

Each module maps `pixel_values (b, c, H, W)` (float, 0..1 before normalisation) to the same shape, drawing
one set of random parameters per call (as torchvision does for a batched tensor), drawn from torch's global
generator (as torchvision does), so `torch.manual_seed` makes them reproducible.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def uniform(low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high))


def chance(p: float) -> bool:
    """True with probability `p`."""
    return float(torch.rand(1)) < p


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, broadcast back to the input's channel count: `(b, c, H, W) -> (b, c, H, W)`."""
    if x.shape[1] != 3:
        return x
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return luma.expand_as(x)


def rotate_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of RGB images by `shift` turns (a rotation of the chroma plane in YIQ space)."""
    if x.shape[1] != 3:
        return x
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = torch.tensor(2 * torch.pi * shift)
    cos, sin = float(torch.cos(angle)), float(torch.sin(angle))
    rotation = x.new_tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("oc,bchw->bohw", matrix, x)


class ColorJitter(nn.Module):
    """Random brightness, contrast, saturation (factors in `1 ± strength`) and hue (shift in `± hue`)."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float):
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = [self._brightness, self._contrast, self._saturation, self._hue]
        for i in torch.randperm(len(ops)).tolist():
            x = ops[i](x)
        return x

    @staticmethod
    def _factor(strength: float) -> float:
        return uniform(max(0.0, 1 - strength), 1 + strength)

    def _brightness(self, x):
        return (x * self._factor(self.brightness)).clamp(0, 1)

    def _contrast(self, x):
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return (mean + self._factor(self.contrast) * (x - mean)).clamp(0, 1)

    def _saturation(self, x):
        gray = grayscale(x)
        return (gray + self._factor(self.saturation) * (x - gray)).clamp(0, 1)

    def _hue(self, x):
        return rotate_hue(x, uniform(-self.hue, self.hue)).clamp(0, 1)


class RandomApply(nn.Module):
    """Applies `module` with probability `p`."""

    def __init__(self, module: nn.Module, p: float):
        super().__init__()
        self.module, self.p = module, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) if chance(self.p) else x


class RandomGrayscale(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grayscale(x) if chance(self.p) else x


class RandomHorizontalFlip(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if chance(self.p) else x


class GaussianBlur(nn.Module):
    """Depthwise Gaussian blur with a `kernel_size` kernel and sigma drawn from `sigma = (low, high)`."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float]):
        super().__init__()
        self.kernel_size, self.sigma = kernel_size, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = uniform(*self.sigma)
        half = (self.kernel_size - 1) / 2
        coords = torch.linspace(-half, half, self.kernel_size, dtype=x.dtype, device=x.device)
        kernel_1d = torch.softmax(-(coords**2) / (2 * sigma**2), dim=0)
        kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(x.shape[1], 1, -1, -1)
        padded = F.pad(x, (int(half),) * 4, mode="reflect")
        return F.conv2d(padded, kernel, groups=x.shape[1])


class RandomResizedCrop(nn.Module):
    """Crop a random area (`scale` of the image, aspect `ratio`) and resize it to `size x size` (bilinear)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__()
        self.size, self.scale, self.ratio = size, scale, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        for _ in range(10):
            area = h * w * uniform(*self.scale)
            aspect = math.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
                break
        else:  # fall back to the whole image
            top, left, ch, cw = 0, 0, h, w
        crop = x[..., top:top + ch, left:left + cw]
        return F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean_values, self.std_values = tuple(mean), tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def reset_buffers(self) -> None:
        """Refill `mean` / `std` (not saved in checkpoints; called by `_init_weights` after loading)."""
        self.mean.copy_(torch.tensor(self.mean_values).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(self.std_values).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


def default_ssl_augmentation(image_size: int, channels: int = 3) -> nn.Sequential:
    """x-clip's `get_default_aug` (BYOL/SimCLR recipe) without torchvision."""
    rgb = channels == 3
    return nn.Sequential(
        RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.3) if channels in (1, 3) else nn.Identity(),
        RandomGrayscale(p=0.2) if rgb else nn.Identity(),
        RandomHorizontalFlip(),
        RandomApply(GaussianBlur(3, (1.0, 2.0)), p=0.2),
        RandomResizedCrop(image_size),
        Normalize(IMAGENET_MEAN, IMAGENET_STD) if rgb else nn.Identity(),
    )
