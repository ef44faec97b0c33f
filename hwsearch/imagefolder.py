"""A class-folder tree of images, read lazily one batch at a time.

Reading a whole validation folder into memory does not scale: 3,000 JPEGs
(130 MB on disk) took 6.0 GB as float32 arrays at 224 px, so ImageNet's
50,000 would need ~100 GB.  :class:`ImageFolder` holds only the file names
and labels; :meth:`ImageFolder.iter_batches` decodes and preprocesses
(:mod:`hwsearch.preprocess`) one batch at the subnet's own resolution and
lets it go before the next, so memory is one batch whatever the folder's
size.  It is cheap to pickle, so Ray ships it to workers as a list of
names (the workers read the files from the same filesystem).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "MAX_CLASSES", "MAX_NESTING", "ImageFolder", "class_folders", "folder_labels",
           "images_in", "is_wordnet_subset"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Most classes a dataset's labels may number (ImageNet-21k has 21,841): a label of 2**40 made
#: a class-name tuple of that length and ran the service out of memory.
MAX_CLASSES = 100_000

_WORDNET_ID = re.compile(r"n\d{8}")


#: Folders that archivers and tools leave beside the classes: never a class.  macOS zips carry a
#: ``__MACOSX`` tree, which sorted first and shifted every label by one.
_NOT_CLASSES = frozenset({"__MACOSX"})


def _hidden(name: str) -> bool:
    """Hidden files and folders (``.ipynb_checkpoints``, macOS's ``._x.png``) hold no classes or images."""
    return name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    """``root``'s sub-folders (links to folders included), sorted: one class each (:func:`folder_labels`).

    Hidden folders and ``__MACOSX`` are no classes: a ``.ipynb_checkpoints``
    beside folders ``0`` to ``11`` made them all numbered in sorted order.
    """
    return sorted(entry for entry in root.iterdir()
                  if not _hidden(entry.name) and entry.name not in _NOT_CLASSES and entry.is_dir())


def folder_labels(root: Path, names: list[str]) -> list[int] | None:
    """Each class folder's label when every folder is named by its class index (``0``, ``17``, ``999``), else None.

    Sorted order, the rule otherwise (torchvision's), numbers folders ``0``
    to ``10`` as 0, 1, 10, 2, ... and a subset of classes (``3``, ``7``) as
    0 and 1, whatever outputs of the head they are; a folder named by a
    number is taken to mean that class.
    """
    numbered = [name for name in names if name.isascii() and name.isdecimal()]
    if not numbered:
        return None
    if len(numbered) < len(names):  # either numbering would be a guess: 0, 1, 10, 11, 2, ..., extra
        other = next(name for name in names if name not in numbered)
        raise ValueError(f"{root}: class folders {numbered[0]!r} and {other!r} mix class indices and names: "
                         "name every class folder by its class index, or none")
    labels = [int(name) for name in names]
    first = {label: name for name, label in reversed(list(zip(names, labels)))}
    twice = next((name for name, label in zip(names, labels) if first[label] != name), None)
    if twice is not None:
        raise ValueError(f"{root}: class folders {first[int(twice)]!r} and {twice!r} name one class index")
    if max(labels) >= MAX_CLASSES:
        raise ValueError(f"{root}: class folder {names[labels.index(max(labels))]} is past the {MAX_CLASSES} "
                         "classes a dataset may have")
    return labels


def is_wordnet_subset(classes: tuple[str, ...], n_outputs: int) -> bool:
    """Whether ``classes`` are fewer ImageNet WordNet ids (``n01440764``) than a head's ``n_outputs``.

    ImageNet's class indices are its 1,000 WordNet ids in sorted order, so
    sorted folder names give the head's indices only when every class is
    there: with a subset, each folder after the first gap takes another
    class's index, and every accuracy is measured against wrong labels.
    """
    return 0 < len(classes) < n_outputs and all(_WORDNET_ID.fullmatch(name) for name in classes)


#: Folder levels read below a class folder: torchvision reads any depth, but a tree past this is
#: refused rather than walked until Python's recursion limit (a 500 in the service).
MAX_NESTING = 16


def images_in(folder: Path, *, ordered: bool = True,
              entering: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """The image files under one class folder, sub-folders included, links followed; sorted unless ``ordered`` is False.

    Sub-folders are read as torchvision's ``ImageFolder`` reads them: images
    a level or more below the class folder (``cat/2019/x.jpg``) were skipped,
    and every accuracy was measured on the rest.  Sorted, the walk is depth
    first in name order, so a flat folder lists as it always has.  A scan
    and the service's check of a client's dataset folder
    (:class:`hwsearch.api.files.DataRoots`) both take their files from here,
    so they see the same ones; unordered, the listing is lazy, so a check
    can stop at its bound without listing a huge folder whole.
    ``entering`` is called with each sub-folder before it is listed (the
    service refuses one that leads outside its roots there).

    Each folder is read once, however many links lead to it: 52 links, four
    in each of 13 folders to the next, made a walk of 4**13 folders that no
    depth bound stopped.  Raises ValueError for a link back to a folder it
    is inside (a walk that followed it would never end) and for folders
    nested past :data:`MAX_NESTING`.
    """
    return _images_below(folder, ordered, (_folder_identity(folder),), set(), entering)


def _images_below(folder: Path, ordered: bool, inside: tuple[tuple[int, int], ...], seen: set[tuple[int, int]],
                  entering: Callable[[Path], None] | None) -> Iterator[Path]:
    """:func:`images_in` for ``folder``, whose own folder and those it lies in are ``inside``.

    ``seen`` holds every folder this walk has entered.  Listed with
    :func:`os.scandir`, whose entries know their type without a ``stat``
    (but for links): a scan of 1,000 folders of 50 images took a median
    0.74 s, against 0.88 s with a ``stat`` per image.
    """
    with os.scandir(folder) as listing:
        for entry in sorted(listing, key=_name) if ordered else listing:
            if _hidden(entry.name) or entry.name in _NOT_CLASSES:
                continue
            path = folder / entry.name
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                yield path
            elif entry.is_dir():
                identity = _folder_identity(path)
                if identity in inside:
                    raise ValueError(f"{path} links back to a folder it is inside")
                if identity in seen:  # reached again through another link: read once
                    continue
                if len(inside) > MAX_NESTING:
                    raise ValueError(f"{path} is nested more than {MAX_NESTING} folders below its class folder")
                seen.add(identity)
                if entering is not None:
                    entering(path)
                yield from _images_below(path, ordered, (*inside, identity), seen, entering)


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _folder_identity(folder: Path) -> tuple[int, int]:
    """The folder itself, whatever link or path reached it."""
    info = folder.stat()
    return info.st_dev, info.st_ino


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """Images under ``root/<class>/`` at any depth: classes numbered by name or in sorted order (:func:`folder_labels`).

    ``files`` are relative to ``root``; ``labels`` is an int64 array of the
    same length; ``classes[label]`` is each label's folder name, or for
    folders named by class index (``numbered_by_name``) the index itself
    (``"7"`` for ``007``).  Subsets (:meth:`take`, :meth:`split`) share the
    root.
    """

    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    numbered_by_name: bool = False

    @classmethod
    def scan(cls, root: str | Path) -> ImageFolder:
        """List ``root``'s class folders and their images (as torchvision's ``ImageFolder`` does, but for names)."""
        root = Path(root)
        names = [folder.name for folder in class_folders(root)]
        if not names:
            raise ValueError(f"{root} has no class sub-folders")
        numbers = folder_labels(root, names)
        files: list[str] = []
        labels: list[int] = []
        for label, name in zip(numbers or range(len(names)), names):
            found = [file.relative_to(root).as_posix() for file in images_in(root / name)]
            if not found and numbers is None:  # numbered in sorted order, it shifts every label after it
                raise ValueError(f"{root}: class folder {name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}"
                                 "); remove it, or name the class folders by class index")
            files += found
            labels += [label] * len(found)
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
        classes = tuple(names) if numbers is None else tuple(map(str, range(max(numbers) + 1)))
        return cls(str(root), tuple(files), np.asarray(labels, dtype=np.int64), classes, numbers is not None)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def source(self) -> str:
        return self.root

    @property
    def y(self) -> Tensor:
        """All labels, as :class:`hwsearch.data.LabelledImages` has them."""
        return torch.from_numpy(self.labels)

    def take(self, indices: np.ndarray) -> ImageFolder:
        """The images at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageFolder(self.root, tuple(self.files[i] for i in indices), self.labels[indices],
                           self.classes, self.numbered_by_name)

    def split(self, n_first: int, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
        """A fixed random split, drawn as :meth:`hwsearch.data.LabelledImages.split` draws it."""
        if not 0 < n_first < len(self):
            raise ValueError(f"cannot take {n_first} of {len(self)} images for the first split")
        order = np.random.default_rng(seed).permutation(len(self))
        return self.take(order[:n_first]), self.take(order[n_first:])

    def iter_batches(self, resolution: int, batch_size: int = 64, *, threads: int = 1
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(images, labels)`` batches decoded and preprocessed at ``resolution``.

        Each batch is built when asked for and not referenced here once
        yielded, so only the batch the caller holds stays in memory.
        """
        for start in range(0, len(self), batch_size):
            yield (torch.from_numpy(self._decoded(self.files[start:start + batch_size], resolution, threads)),
                   torch.from_numpy(self.labels[start:start + batch_size]))

    def _decoded(self, names: tuple[str, ...], resolution: int, threads: int) -> np.ndarray:
        """One batch, decoded; an unreadable file is named inside the folder too (a job's error hides paths).

        Not a local of :meth:`iter_batches`, which would hold each batch
        while the caller uses it, and so two at once.
        """
        from hwsearch.preprocess import UnreadableImage, preprocess_files

        root = Path(self.root)
        try:
            return preprocess_files([root / name for name in names], resolution, threads=threads)
        except UnreadableImage as error:
            raise UnreadableImage(f"{root}: {str(error).removeprefix(f'{root}/')}") from None
