"""OFA's ImageNet evaluation preprocessing, on PIL and numpy.

OFA evaluates every subnet with torchvision's ``Resize(ceil(r / 0.875))``,
``CenterCrop(r)``, ``ToTensor()`` and ``Normalize(mean, std)`` at the subnet's
own resolution ``r``.  torchvision is not installed here, so this module
re-implements those four steps with the same arithmetic (the shorter side
scaled with PIL's bilinear filter, the long side truncated, the crop offset
rounded half to even), so that accuracies match what OFA's own evaluation
reports for the same weights and images.

Preprocessing at each subnet's resolution from the decoded file (rather
than once at the largest size and interpolating down) is what OFA does, and
what keeps an image folder streamable: nothing is stored between subnets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["CROP_FRACTION", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_PIXELS", "PREPROCESSING_ID",
           "UnreadableImage", "center_crop_box", "preprocess_file", "preprocess_files", "preprocess_image",
           "resize_shorter_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875
#: Names this preprocessing in accuracy store keys; change it whenever the arithmetic changes,
#: so accuracies computed the old way are never reused for the new one.
#: v2: 16-bit grayscale images are scaled to 8 bits, not clipped (:func:`_eight_bit`).
PREPROCESSING_ID = "ofa-eval-v2:short=ceil(r/0.875),bilinear;center-crop=r;imagenet-mean-std"

#: The most pixels an image may declare.  A file's bytes do not bound its pixels: a 20 KB
#: 13000x13000 PNG decoded at a 853 MiB peak (measured), under PIL's own refusal (179M pixels),
#: and each decoding thread holds one.  50M pixels is more than a 48-megapixel photo and
#: peaked at 279 MiB; a larger image is refused from its header, before decoding.
MAX_IMAGE_PIXELS = 50_000_000

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded or used; the message starts with its path."""


def resize_shorter_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``ceil(resolution / 0.875)``.

    The long side is truncated, as torchvision's ``Resize(int)`` does.
    """
    short = math.ceil(resolution / CROP_FRACTION)
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop_box(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of torchvision's ``CenterCrop(resolution)``.

    Offsets are rounded half to even (Python's ``round``), as torchvision rounds them.
    """
    left = round((width - resolution) / 2.0)
    top = round((height - resolution) / 2.0)
    return left, top, left + resolution, top + resolution


def preprocess_image(img, resolution: int) -> np.ndarray:  # img: PIL.Image.Image
    """One decoded image as a normalised ``(3, r, r)`` float32 array."""
    from PIL import Image

    rgb = _eight_bit(img).convert("RGB")
    size = resize_shorter_size(*rgb.size, resolution)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    crop = rgb.crop(center_crop_box(*rgb.size, resolution))
    chw = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)  # in place below: one array
    chw /= np.float32(255.0)
    chw -= _MEAN
    chw /= _STD
    return chw


def _eight_bit(img):  # img: PIL.Image.Image
    """``img``, a 16-bit grayscale image (``I;16``, as 16-bit PNGs and TIFFs open) scaled to 8 bits.

    PIL's ``convert("RGB")`` clips such an image at 255 instead of scaling
    it (torchvision's loader too): a 0..65520 ramp came out 99.6% white,
    and every accuracy on such images was read off near-blank inputs.
    """
    from PIL import Image

    if not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


#: Modes whose pixels have no fixed range (32-bit integers, floats): no 8-bit reading of them is right.
_RANGELESS_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def preprocess_file(path: str | Path, resolution: int) -> np.ndarray:
    """Decode one image file and preprocess it; a file PIL cannot read, or too large, is a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            _check_pixels(path, img.width, img.height, resolution)
            if img.mode in _RANGELESS_MODES:  # clipped at 255 before, as 16-bit images were
                raise UnreadableImage(f"{path}: its pixels are {_RANGELESS_MODES[img.mode]}s, which have no "
                                      "fixed range to read as 8-bit images; save it with 8- or 16-bit pixels")
            return preprocess_image(img, resolution)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"{path}: not a readable image ({type(error).__name__}: {error})") from error
    except MemoryError:
        raise UnreadableImage(f"{path}: not enough memory to preprocess it") from None


def _check_pixels(path: str | Path, width: int, height: int, resolution: int) -> None:
    """Refuse an image with more than :data:`MAX_IMAGE_PIXELS` pixels, decoded or resized.

    The shorter side is resized to about ``resolution`` and the longer one
    in proportion, so a thin image grows: an 855-byte PNG of 1 x 200,000
    pixels became 37 x 7.4 million at 32 px (1.6 GB) and 256 x 51 million at
    224 px, where it ran the host out of memory.
    """
    limit = f"the {MAX_IMAGE_PIXELS:,} pixels an image may have"
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImage(f"{path}: {width}x{height} is more than {limit}")
    w, h = resize_shorter_size(width, height, resolution)
    if w * h > MAX_IMAGE_PIXELS:
        raise UnreadableImage(f"{path}: {width}x{height} becomes {w}x{h} when resized for {resolution} px, "
                         f"more than {limit}")


def preprocess_files(paths: Sequence[str | Path], resolution: int, *, threads: int = 1
                     ) -> np.ndarray:
    """A ``(len(paths), 3, r, r)`` float32 batch, decoded into one preallocated array.

    PIL releases the GIL while it decodes and resizes, so ``threads > 1``
    decodes in parallel (what keeps a GPU fed); the batch is the only
    image memory held either way.
    """
    out = np.empty((len(paths), 3, resolution, resolution), dtype=np.float32)

    def fill(index: int) -> None:
        out[index] = preprocess_file(paths[index], resolution)

    if threads <= 1 or len(paths) <= 1:
        for index in range(len(paths)):
            fill(index)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hwsearch-decode") as pool:
            list(pool.map(fill, range(len(paths))))
    return out
