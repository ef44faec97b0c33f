"""The user's labelled images, read from disk; nothing is ever downloaded.

Accepted forms:

* a folder of class sub-folders of images (``root/<class>/<image>``), each
  class the number its folder is named by (``0``, ``17``, ``999``), or, for
  folders named otherwise, numbered in sorted order of the names, as
  torchvision's ``ImageFolder`` numbers them;
* a ``.npz`` or ``.pt`` file holding arrays ``x`` (``N,H,W,C`` or ``N,C,H,W``
  images: 8-bit pixel values of any integer type, or floats in [0, 1]) and
  ``y`` (``N`` integer labels).

Images are normalised with ImageNet statistics (what OFA supernets were
trained with).  :func:`load_images` keeps them in memory at one stored size and
:func:`batches` resizes them to each subnet's resolution on the fly, because
every subnet sees a different input size.  That costs memory in proportion to
the data (3,000 JPEGs took 6.0 GB at 224 px), so :func:`open_images` instead
streams a folder (:class:`hwsearch.imagefolder.ImageFolder`: decoded one batch
at a time at each subnet's own resolution, OFA's preprocessing); array files
are in memory already and are loaded as before.

An array file is bounded twice before it is read: its members may unpack to
at most :func:`hwsearch.archives.default_bound` (16 times the file's size, at
least 256 MiB), and its images, as the
float32 tensors they become, to at most :data:`MAX_IMAGE_TENSOR_BYTES`.  A
2 MB ``.npz`` of deflated zeros otherwise grew to 10.8 GB and ended in the
allocator's traceback; larger data belongs in a folder, which is streamed.
Shapes and kinds are checked before anything is copied (:func:`_check_arrays`):
``x`` real numbers with no empty dimension, ``y`` one whole-number label per
image in ``[0, MAX_CLASSES)``, and in a ``.pt`` file both tensors (shared
nested lists of 10^12 elements fit in 9 KB).
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from hwsearch.archives import UnpackedTooLarge, check_unpacked_size
from hwsearch.imagefolder import IMAGE_SUFFIXES, MAX_CLASSES, ImageFolder
from hwsearch.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "Images", "LabelledImages",
           "MAX_IMAGE_TENSOR_BYTES", "batches", "load_images", "open_images"]

#: The most an array file's images may take as float32 (N, 3, S, S) tensors, at their stored size
#: and at the size asked for: 4 GiB, what 1 GiB of uint8 RGB images becomes.  Loading makes a few
#: such copies (scaled, resized, normalised), so the peak is a small multiple of it.
MAX_IMAGE_TENSOR_BYTES = 4 * 2**30


@dataclass(frozen=True)
class LabelledImages:
    """Normalised images ``x`` (N, 3, S, S) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def split(self, n_first: int, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
        """A fixed random split: ``n_first`` images (e.g. BN calibration) and the rest."""
        if not 0 < n_first < len(self):
            raise ValueError(f"cannot take {n_first} of {len(self)} images for the first split")
        order = np.random.default_rng(seed).permutation(len(self))
        return self.take(order[:n_first]), self.take(order[n_first:])

    def take(self, indices: np.ndarray) -> LabelledImages:
        """The images at ``indices``, in that order."""
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return LabelledImages(self.x[index], self.y[index], self.classes, self.source)

    def iter_batches(self, resolution: int, batch_size: int = 64, *, threads: int = 1
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(images, labels)`` batches resized to ``resolution`` (``threads``: unused, in memory)."""
        for i in range(0, len(self), batch_size):
            x = self.x[i:i + batch_size]
            if x.shape[-1] != resolution:
                x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                  antialias=True, align_corners=False)
            yield x, self.y[i:i + batch_size]


#: Either kind of validation data: in memory, or a folder streamed batch by batch.
Images = LabelledImages | ImageFolder


def open_images(path: str | Path, *, size: int = 224) -> Images:
    """A folder streamed lazily (memory flat in its size), or an array file loaded at ``size``."""
    path = Path(path)
    return ImageFolder.scan(path) if path.is_dir() else load_images(path, size=size)


def load_images(path: str | Path, *, size: int = 224) -> LabelledImages:
    """Read a class-folder tree or an ``x``/``y`` array file into memory; see the module docstring."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, size)
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO (mkfifo) held the reading command for ever
        raise ValueError(f"{path} is not a regular file")
    suffix = path.suffix.lower()  # the service's data roots accept .NPZ, as a file system may name it
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".pt":
        x, y = _tensors_of_pt(path)
    else:
        raise ValueError(f"{path}: expected a folder of class sub-folders, a .npz or a .pt file")
    _check_arrays(x, y, path)
    _check_tensor_budget(x, size, path)
    with _allocating(path):
        images = _to_nchw_float(x, path)
        labels = _labels(y, path)
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False) if images.shape[-1] != size else images
        return LabelledImages(_normalise(images), labels, tuple(map(str, range(int(labels.max()) + 1))), str(path))


def _tensors_of_pt(path: Path) -> tuple[Tensor, Tensor]:
    """``x`` and ``y`` of a ``.pt`` dataset, which must be tensors.

    A weights-only file may also hold nested lists, and lists shared a
    thousand times over cost nothing to store: a 9 KB file of 10^12 list
    elements held the service's interpreter (and its event loop) in
    ``np.asarray`` for good.  Tensors have a shape to check before anything
    is converted.
    """
    data = _read_pt(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a dict with 'x' and 'y', got {type(data).__name__}")
    _require_keys(path, set(data))
    for key in ("x", "y"):
        value = data[key]
        if not isinstance(value, Tensor):
            raise ValueError(f"{path}: '{key}' must be a tensor, got {type(value).__name__}")
        if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized or value.is_nested:
            raise ValueError(f"{path}: '{key}' must be a plain dense tensor (not sparse, quantized, nested or "
                             f"on device {value.device.type!r})")
    return data["x"], data["y"]


def _check_arrays(x: np.ndarray | Tensor, y: np.ndarray | Tensor, path: Path) -> None:
    """Shapes and kinds of ``x`` and ``y``, checked before anything is copied.

    ``y`` is checked by its element count, not its memory: a zero-stride
    (expanded) tensor of 2**28 labels is 26 KB on disk and became 2.2 GB
    when copied.  Images must be real numbers of a non-empty size.
    """
    if x.ndim != 4 or 0 in tuple(x.shape):
        raise ValueError(f"{path}: x must be 4-D (N,H,W,C or N,C,H,W) with no empty dimension, "
                         f"got shape {tuple(x.shape)}")
    if not _real_numbers(x):
        raise ValueError(f"{path}: x must hold real numbers, got dtype {x.dtype}")
    n_labels = y.numel() if isinstance(y, Tensor) else y.size
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1) or n_labels != x.shape[0]:  # (N,) or Keras' (N, 1)
        raise ValueError(f"{path}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
    if not _real_numbers(y):
        raise ValueError(f"{path}: y must hold integer class labels, got dtype {y.dtype}")


def _real_numbers(array: np.ndarray | Tensor) -> bool:
    if isinstance(array, Tensor):
        return not (array.dtype.is_complex or array.dtype == torch.bool)
    return array.dtype.kind in "uif"


def _labels(y: np.ndarray | Tensor, path: Path) -> Tensor:
    """Labels as int64, each a class in ``[0, MAX_CLASSES)`` (float labels must be whole numbers)."""
    given = (y if isinstance(y, Tensor) else torch.as_tensor(y)).reshape(-1)
    if given.dtype.is_floating_point and not bool(torch.all(given == torch.round(given))):
        raise ValueError(f"{path}: y must hold integer class labels; some of its {given.dtype} values are not")
    values = given.double()  # torch has no min of uint64; and int64 would wrap 2**64 - 5 to -5
    low, high = float(values.min()), float(values.max())
    if low < 0 or high >= MAX_CLASSES:
        raise ValueError(f"{path}: labels must lie in [0, {MAX_CLASSES}), got {low:.0f}..{high:.0f}")
    return given.to(torch.int64).contiguous()


def _check_tensor_budget(x: np.ndarray | Tensor, size: int, path: Path) -> None:
    """Refuse images whose float32 (N, 3, S, S) tensors would exceed :data:`MAX_IMAGE_TENSOR_BYTES`.

    Checked on the array's shape, before any conversion: the float copy is
    4x the uint8 bytes (12x for one-channel images, expanded to three).
    """
    side = max(x.shape[1:])
    needed = x.shape[0] * 3 * 4 * max(side * side, size * size)
    if needed > MAX_IMAGE_TENSOR_BYTES:
        raise ValueError(f"{path}: its {x.shape[0]} images take {needed} bytes as float32 tensors; "
                         f"the limit is {MAX_IMAGE_TENSOR_BYTES} (give a folder of images instead, "
                         "which is streamed)")


@contextmanager
def _allocating(path: Path) -> Iterator[None]:
    """Report running out of memory while converting ``path``'s images as a ValueError naming it.

    Within the budget the host may still lack the memory; torch's allocator
    then raises a RuntimeError (``DefaultCPUAllocator: can't allocate
    memory``) and numpy a MemoryError, both tracebacks before.
    """
    try:
        yield
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to hold its images as float32") from None
    except RuntimeError as error:
        if "allocate" not in str(error):
            raise
        raise ValueError(f"{path}: not enough memory to hold its images as float32") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an ``.npz`` file; anything else is a ValueError naming the file."""
    problem = "is not a readable .npz of numeric arrays x and y"
    _check_unpacked(path)
    with path.open("rb") as file:  # opened here so only unreadable *content* is caught below
        if not zipfile.is_zipfile(file):
            raise ValueError(f"{path} {problem} (it is not a zip archive, which an .npz is)")
        file.seek(0)
        try:
            with np.load(file) as data:
                keys = set(data.files)
                arrays = {key: data[key] for key in ("x", "y") if key in keys}
        except Exception as error:  # corrupt members raise BadZipFile, EOFError, ValueError, ...
            raise ValueError(f"{path} {problem} ({_npz_reason(error)})") from error
    _require_keys(path, keys)
    for key, array in arrays.items():  # numpy hands over a member without the .npy header as its raw bytes
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{path} {problem} (its member {key} is not a .npy array)")
    return arrays["x"], arrays["y"]


def _read_pt(path: Path) -> object:
    """The object in a ``.pt`` file, read weights-only; failing is a ValueError naming the file."""
    from hwsearch.supernets.base import load_failure_reason

    _check_unpacked(path)
    with path.open("rb") as file:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # a hostile or corrupt file makes the unpickler raise anything
            raise ValueError(f"{path} is not a loadable weights-only torch file "
                             f"({load_failure_reason(error)})") from error


def _check_unpacked(path: Path) -> None:
    """Refuse an archive that unpacks past the default bound, naming the file."""
    try:
        check_unpacked_size(path)
    except UnpackedTooLarge as error:
        raise ValueError(f"{path} {error}") from None


def _npz_reason(error: Exception) -> str:
    """numpy's reason, without its advice to load with ``allow_pickle``, which would run code."""
    text = str(error)
    if "pickle" in text:
        return "it holds Python objects, which hwsearch never unpickles"
    first_line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _require_keys(path: Path, keys: set[str]) -> None:
    missing = {"x", "y"} - keys
    if missing:
        raise ValueError(f"{path} lacks array(s) {sorted(missing)}; found {sorted(keys)}")


def _to_nchw_float(x: np.ndarray | Tensor, path: Path) -> Tensor:
    """8-bit integer or [0, 1] float pixels, NHWC or NCHW -> float32 NCHW in [0, 1]."""
    integer = not x.dtype.is_floating_point if isinstance(x, Tensor) else x.dtype.kind in "ui"
    if not isinstance(x, Tensor) and x.dtype != np.uint8:
        with np.errstate(over="ignore"):  # float64 past float32's range becomes inf, refused below
            x = x.astype(np.float32)  # torch has no arithmetic for every integer numpy has (uint32)
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    t = _pixels_in_range(t.float(), integer, path)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[1] != 3:
        raise ValueError(f"{path}: images need 1 or 3 channels, got shape {tuple(x.shape)}")
    return t.contiguous()


def _pixels_in_range(pixels: Tensor, integer: bool, path: Path) -> Tensor:
    """``pixels`` scaled to [0, 1], refused unless they are 8-bit values or already in [0, 1].

    Images are normalised here with ImageNet's statistics, so any other
    range scores every subnet on inputs it never saw, and the job still
    succeeded: int32 digits (not divided by 255) scored 0.640-0.897 against
    0.670-0.900 as uint8; floats of 0..255 and images normalised already
    were taken as they were, and pixels near 3e38 overflowed to infinity.
    Float pixels may stray by one grey level past either end (rounding in
    the user's conversion).
    """
    if not bool(torch.isfinite(pixels).all()):
        raise ValueError(f"{path}: x holds NaN or infinite pixels (or pixels past float32's range)")
    low, high = float(pixels.min()), float(pixels.max())
    if integer:
        if low < 0 or high > 255:
            raise ValueError(f"{path}: integer pixels must be 8-bit values in 0..255; x holds {low:.0f}..{high:.0f} "
                             "(give floats in [0, 1] for other ranges)")
        return pixels / 255.0
    if low < -1 / 255 or high > 1 + 1 / 255:
        raise ValueError(f"{path}: float pixels must lie in [0, 1], since hwsearch normalises them with ImageNet's "
                         f"mean and std itself; x holds {low:.4g}..{high:.4g}")
    return pixels


def _normalise(x: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _load_folder(root: Path, size: int) -> LabelledImages:
    """Every image of the folder, preprocessed at ``size`` and kept in memory."""
    folder = ImageFolder.scan(root)
    x = np.stack([preprocess_file(Path(root) / name, size) for name in folder.files])
    return LabelledImages(torch.from_numpy(x), folder.y, folder.classes, str(root))


def batches(data: Images, resolution: int, batch_size: int = 64, *, threads: int = 1
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches at ``resolution``, from memory or streamed from a folder.

    ``threads`` decode a streamed folder's batch in parallel (in-memory data ignores it).
    """
    return data.iter_batches(resolution, batch_size, threads=threads)
