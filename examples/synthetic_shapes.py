"""A synthetic image-caption dataset: two coloured shapes side by side, drawn with PIL.

Each image shows two objects, one in the left half and one in the right half (jittered position and size);
its caption names them left to right, e.g. "a small red circle left of a large blue square". Everything is
a deterministic function of the seed, so train and eval splits drawn with different seeds are reproducible.
"""

from __future__ import annotations

import itertools
import random

from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RADIUS = {"small": 0.11, "large": 0.19, None: 0.17}  # fraction of the image side; None: captions without size
BACKGROUND = (245, 245, 240)


def describe(objects: list[tuple[str, str, str]], with_size: bool) -> str:
    """[(size, colour, shape) left, (…) right] -> "a [size] colour shape left of a [size] colour shape"."""
    words = [" ".join(([size] if with_size else []) + [color, shape]) for size, color, shape in objects]
    return f"a {words[0]} left of a {words[1]}"


def all_captions(with_size: bool = False) -> list[str]:
    """Every caption the generator can produce (the zero-shot label set)."""
    sizes = SIZES if with_size else (None,)
    obj = list(itertools.product(sizes, COLORS, SHAPES))
    return [describe([a, b], with_size) for a, b in itertools.product(obj, obj)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render(objects: list[tuple[str, str, str]], image_size: int, rng: random.Random) -> Image.Image:
    """Draw the objects left to right, each jittered inside its half of the image."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = image_size / 2
    for i, (size, color, shape) in enumerate(objects):
        r = image_size * RADIUS[size] * rng.uniform(0.9, 1.1)
        cx = i * half + rng.uniform(r + 1, half - r - 1)
        cy = rng.uniform(r + 1, image_size - r - 1)
        draw_shape(draw, shape, cx, cy, r, COLORS[color])
    return image


def make_shapes_dataset(num_examples: int, seed: int = 0, image_size: int = 64, with_size: bool = False) -> Dataset:
    """`datasets.Dataset` with columns `image` (PIL) and `caption` (str); deterministic in `seed`."""
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(num_examples):
        objects = [
            (rng.choice(SIZES) if with_size else None, rng.choice(list(COLORS)), rng.choice(SHAPES))
            for _ in range(2)
        ]
        images.append(render(objects, image_size, rng))
        captions.append(describe(objects, with_size))
    features = Features({"image": ImageFeature(), "caption": Value("string")})
    return Dataset.from_dict({"image": images, "caption": captions}, features=features)


def caption_vocabulary(with_size: bool = True) -> list[str]:
    """The words of every caption, in a fixed order."""
    words = ["a", "left", "of", *COLORS, *SHAPES]
    return words + (list(SIZES) if with_size else [])
