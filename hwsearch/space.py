"""Search spaces and subnet configurations: the types every other layer builds on.

An :class:`ArchConfig` describes one subnet of a supernet.  It is canonical by
construction: it stores the per-block choices of the *active* blocks only, so
two configurations that build the same network are equal, hash the same and
have the same :meth:`ArchConfig.key`.  (OFA's native dicts and DyNAS-T's
vectors both carry values for switched-off blocks, so equal networks get
different encodings there.)

A :class:`SearchSpace` says which choices a supernet offers and knows how to
validate, sample, encode (to the integer vectors pymoo searches over) and
decode configurations.  It is family-free: everything one supernet family
knows (its macro-architecture, its native arch form, its cost model) lives
in that family's :class:`Layout` subclass, beside its supernet in
``hwsearch/families/<family>/``.

This module depends on the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Union

import numpy as np

from hwsearch.batch import ArchBatch
from hwsearch.checks import non_negative_int, positive_int

if TYPE_CHECKING:
    from hwsearch.costs import CostTable

Number = Union[int, float]

__all__ = [
    "ArchConfig",
    "ArchValidationError",
    "Layout",
    "SearchSpace",
    "StageSpec",
    "make_divisible",
    "native_errors",
    "native_list",
    "native_resolution",
]


class ArchValidationError(ValueError):
    """A configuration does not belong to a search space; the message names the field."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` the way OFA does.

    Kept here (not in the torch code) because analytic cost models need the
    exact channel counts of a subnet without importing torch.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def native_resolution(r: Any) -> Any:
    """A resolution given as ``224`` or ``[224]`` (OFA writes a one-element list, or array)."""
    if isinstance(r, np.ndarray) and r.ndim == 1:
        r = list(r)
    if isinstance(r, (list, tuple)):
        if len(r) != 1:
            raise ArchValidationError(f"r must hold one resolution, got {r!r}")
        r = r[0]
    return r


def native_list(value: Any, name: str, length: int, *, integer: bool = False) -> list[Any]:
    """A per-slot list of a native form; a scalar is broadcast (as OFA's ``val2list`` does).

    ``integer`` for counts, indices and kernel sizes: a depth is a slice bound
    before the arch is checked, so ``1.5`` must be refused here by name.
    A 1-D numpy array is read as the list it holds (and a numpy scalar as a
    scalar), as a config built with numpy arrives; a 2-D one is still refused.
    """
    if _is_integer(value) or isinstance(value, (float, np.floating)):
        value = [value] * length
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = list(value)
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ArchValidationError(f"{name} must be a list of {length} values, got {value!r}")
    return list(_number_tuple(name, value, integer=integer))


@contextlib.contextmanager
def native_errors(names: Mapping[str, str], slots: Sequence[int] | None = None) -> Iterator[None]:
    """Say an :class:`ArchValidationError` raised inside in the native form's words: its field names and indices.

    A native form is read into the generic knobs and then checked there, so
    AutoFormer's ``num_heads: [2, 3]`` was refused as ``kernel[1]=3``, and
    OFA's ``ks[4]=4`` (with depths of 2) as ``kernel[2]=4`` (probe Z11).
    ``names`` maps a knob to its native field (``{"kernel": "ks"}``);
    ``slots[i]`` is the native index of active block ``i``
    (:meth:`SearchSpace.block_slots`), where the native lists pad every stage.
    """
    try:
        yield
    except ArchValidationError as error:
        raise ArchValidationError(_in_native_words(str(error), names, slots)) from None


def _in_native_words(message: str, names: Mapping[str, str], slots: Sequence[int] | None) -> str:
    """``message`` with its first knob (``kernel[2]``, ``width``) named as the native form names it."""
    def rename(match: re.Match[str]) -> str:
        knob, index = match.group(1), match.group(2)
        if knob not in names:
            return match.group(0)
        if index is None:
            return names[knob]
        i = int(index)
        per_block = slots is not None and knob in ("kernel", "expand") and i < len(slots)
        return f"{names[knob]}[{slots[i] if per_block else i}]"  # type: ignore[index]  (per_block: slots given)

    return re.sub(r"\b(kernel|expand|width|depths|resolution)(?:\[(\d+)\])?", rename, message, count=1)


# --------------------------------------------------------------------------- layouts


class Layout:
    """The fixed macro-architecture of one supernet family, and all the family knows.

    A family subclasses this as a frozen dataclass beside its supernet
    (``hwsearch/families/<family>/layout.py``) and states there, once:

    * its fixed widths, strides and head (the dataclass fields, which must
      include ``in_channels`` and ``n_classes``; :attr:`SearchSpace.network_id`
      digests them);
    * :meth:`costs`, its cost model, the single source of MACs and parameter
      counts (``Supernet.count``), predictor features and analytic objectives;
    * :meth:`to_native`/:meth:`from_native`, the arch form its original project
      uses (OFA's ``ks/e/d/r``, AutoFormer's ``layer_num/num_heads/...``), so
      users can paste configurations from there;
    * :meth:`check_space`/:meth:`check_restriction`, the spaces it can build.

    ``family`` names the family (and selects the supernet builder);
    ``native_fields`` are the keys its native form must have and
    ``native_optional`` those it may have.
    """

    family: ClassVar[str] = ""
    native_fields: ClassVar[frozenset[str]] = frozenset()
    native_optional: ClassVar[frozenset[str]] = frozenset()
    in_channels: int
    n_classes: int

    def fingerprint(self) -> str:
        """The layout's fields and family as text: what :attr:`SearchSpace.network_id` digests.

        The form is ``repr`` with ``family=...`` as the last field, which is
        what layouts printed when the family was a dataclass field, so the
        latency rows stores filed under those ids stay found.
        """
        return f"{repr(self)[:-1]}, family={self.family!r})"

    def check_space(self, space: SearchSpace) -> None:
        """Raise ``ValueError`` if ``space`` has knobs or stages this family cannot build."""

    def costs(self, space: SearchSpace, X: np.ndarray) -> CostTable:
        """Additive cost components (:class:`hwsearch.costs.CostTable`) of encoded rows ``X``."""
        raise NotImplementedError(f"{type(self).__name__} has no cost model")

    def to_native(self, space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
        """``arch`` in the family's native form."""
        raise ArchValidationError(f"{space.name} has no native arch form")

    def from_native(self, space: SearchSpace, data: Mapping[str, Any]) -> ArchConfig:
        """Read the family's native form (keys :attr:`native_fields`) into a validated arch."""
        raise ArchValidationError(
            f"{space.name} reads only hwsearch's form (resolution, depths, ...)")

    def native_batch(self, batch: ArchBatch) -> list[dict[str, Any]]:
        """Every row of ``batch`` in native form; families override this with a vectorised path."""
        return [self.to_native(batch.space, arch) for arch in batch.archs()]

    def check_restriction(self, space: SearchSpace, stages: tuple[StageSpec, ...]) -> None:
        """Raise ``ValueError`` if the native form cannot express a sub-space with ``stages``."""


# --------------------------------------------------------------------------- configs


def _format_number(value: Number) -> str:
    return format(value, "g")


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """A finite int or float; bools, strings, NaN and infinity are not knob values.

    An int is finite whatever its size (``np.isfinite`` cannot even take one
    past 64 bits: a client's ``10**30`` made it raise instead of answer).
    """
    if _is_integer(value):
        return True
    return isinstance(value, (float, np.floating)) and math.isfinite(value)


def _number_tuple(name: str, value: Any, *, integer: bool) -> tuple[Any, ...]:
    """``value`` as a tuple of ints (or finite numbers), refusing anything looser.

    Architectures arrive from clients as JSON: a string ("3322"), a mapping or
    nested lists must be refused by name, not coerced into some other subnet.
    """
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ArchValidationError(f"{name} must be a list of numbers, got {type(value).__name__}")
    check = _is_integer if integer else _is_real
    for i, item in enumerate(value):
        if not check(item):
            kind = "an int" if integer else "a number"
            raise ArchValidationError(f"{name}[{i}]={item!r} must be {kind}")
    return tuple(int(v) for v in value) if integer else tuple(_plain_number(v) for v in value)


def _plain_number(value: Number) -> Number:
    """A knob value as a plain Python ``int`` when whole, else a ``float``.

    numpy scalars kept as given made ``to_json`` raise (``int32`` is not JSON
    serialisable), and ``3`` and ``3.0``, equal and with one :meth:`ArchConfig.key`
    (which prints both as ``3``), serialised as different JSON.  The whole
    form is the one the key prints and the convolution spaces' choices are.
    An int stays one without passing through ``float`` (which overflows past 1e308).
    """
    if _is_integer(value):
        return int(value)
    number = float(value)
    return int(number) if number.is_integer() else number


@dataclass(frozen=True)
class ArchConfig:
    """One subnet: resolution, per-stage depths, per-active-block choices, widths.

    ``kernel`` and ``expand`` list the choices of the active blocks only, stage
    after stage, so their length is the number of active elastic blocks.  A
    knob the space does not have is an empty tuple.  ``width`` holds width
    multipliers per width slot (empty when the space has no elastic width).

    Build configurations through :meth:`SearchSpace.arch`, :meth:`SearchSpace.decode`
    or :meth:`SearchSpace.from_dict`, which check them against the space.
    """

    resolution: int
    depths: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    expand: tuple[Number, ...] = ()
    width: tuple[Number, ...] = ()

    def __post_init__(self) -> None:
        if not _is_integer(self.resolution):
            raise ArchValidationError(f"resolution must be an int, got {self.resolution!r}")
        object.__setattr__(self, "resolution", int(self.resolution))
        for name, integer in (("depths", True), ("kernel", True), ("expand", False), ("width", False)):
            object.__setattr__(self, name, _number_tuple(name, getattr(self, name), integer=integer))

    def key(self) -> str:
        """A stable, readable identifier, e.g. ``r224-d2,3,4,4,2-k3,5,...-e4,6,...``."""
        parts = [f"r{self.resolution}", "d" + ",".join(map(str, self.depths))]
        if self.kernel:
            parts.append("k" + ",".join(map(str, self.kernel)))
        if self.expand:
            parts.append("e" + ",".join(map(_format_number, self.expand)))
        if self.width:
            parts.append("w" + ",".join(map(_format_number, self.width)))
        return "-".join(parts)

    def digest(self, length: int = 16) -> str:
        """A short hex digest of :meth:`key`, safe for file names."""
        return hashlib.sha256(self.key().encode()).hexdigest()[:length]

    def to_dict(self) -> dict[str, Any]:
        """hwsearch's JSON form (the inverse of :meth:`SearchSpace.from_dict`)."""
        out: dict[str, Any] = {"resolution": self.resolution, "depths": list(self.depths)}
        if self.kernel:
            out["kernel"] = list(self.kernel)
        if self.expand:
            out["expand"] = list(self.expand)
        if self.width:
            out["width"] = list(self.width)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------- spaces


@dataclass(frozen=True)
class StageSpec:
    """One stage: its allowed depths and whether its blocks carry per-block knobs.

    The number of blocks the supernet holds for the stage is ``max(depths)``.
    ``elastic=False`` marks a stage whose blocks are fixed apart from being
    switched on or off (OFA ResNet's input-stem residual block).
    """

    depths: tuple[int, ...]
    elastic: bool = True

    @property
    def max_depth(self) -> int:
        return max(self.depths)


@dataclass(frozen=True)
class SearchSpace:
    """The choices one supernet family offers.

    Integer encoding (for pymoo): one gene per resolution, per stage depth,
    per supernet block slot for each per-block knob (kernel genes, then expand
    genes), and per width slot.  Each gene is an index into its choices.
    Genes of switched-off blocks are ignored by :meth:`decode` and written as
    0 by :meth:`encode`.
    """

    name: str
    resolutions: tuple[int, ...]
    stages: tuple[StageSpec, ...]
    kernels: tuple[int, ...] = ()
    expands: tuple[Number, ...] = ()
    widths: tuple[Number, ...] = ()
    n_width_slots: int = 0
    layout: Layout | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.resolutions:
            raise ValueError("a search space needs at least one resolution")
        if not self.stages:
            raise ValueError("a search space needs at least one stage")
        if bool(self.widths) != bool(self.n_width_slots):
            raise ValueError("widths and n_width_slots must be given together")
        for values in (self.resolutions, self.kernels, self.expands, self.widths):
            if len(set(values)) != len(values):
                raise ValueError(f"duplicate choices in {values}")
            if len({_format_number(v) for v in values}) != len(values):  # keys print 6 significant digits
                raise ValueError(f"choices {values} are alike in their first 6 significant digits, so subnets "
                                 "of either would share one key(); make them differ sooner")
        self._check_sizes()
        if self.layout is not None:
            self.layout.check_space(self)

    def _check_sizes(self) -> None:
        """Refuse a resolution or a head size below 1, naming it, for every family at once.

        Each family's factory passes these through unchecked: resolution 0
        ran, and ``n_classes=0`` built a network whose output had no column.
        """
        for i, resolution in enumerate(self.resolutions):
            positive_int(resolution, f"resolutions[{i}]")
        if self.layout is not None:
            positive_int(self.layout.n_classes, "n_classes")

    # ------------------------------------------------------------------ shape

    @property
    def n_blocks(self) -> int:
        """Block slots carrying per-block knobs (elastic stages, at max depth)."""
        return sum(stage.max_depth for stage in self.stages if stage.elastic)

    @property
    def block_knobs(self) -> tuple[str, ...]:
        return tuple(name for name in ("kernel", "expand") if getattr(self, name + "s"))

    def _gene_choices(self) -> list[tuple[Any, ...]]:
        genes: list[tuple[Any, ...]] = [self.resolutions]
        genes += [stage.depths for stage in self.stages]
        for knob in self.block_knobs:
            genes += [getattr(self, knob + "s")] * self.n_blocks
        genes += [self.widths] * self.n_width_slots
        return genes

    @property
    def network_id(self) -> str:
        """The name plus a digest of the fixed layout around the knobs (the head included).

        What a measured latency is filed under: two supernets of one family
        with other class counts share the name and the arch keys but are not
        the same networks, and must not share latency rows.
        """
        if self.layout is None:
            return self.name
        digest = hashlib.sha256(self.layout.fingerprint().encode()).hexdigest()[:8]
        return f"{self.name}@{digest}"

    def same_layout(self, other: SearchSpace) -> bool:
        """Whether both spaces have the same fixed layout around their knobs (or neither has one)."""
        mine, theirs = self.layout, other.layout
        if mine is None or theirs is None:
            return mine is theirs
        return mine.fingerprint() == theirs.fingerprint()

    @property
    def n_var(self) -> int:
        return len(self._gene_choices())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds ``(xl, xu)`` of the encoding."""
        upper = np.array([len(c) - 1 for c in self._gene_choices()], dtype=np.int64)
        return np.zeros_like(upper), upper

    def size(self) -> int:
        """The number of distinct subnets (canonical configurations) in the space."""
        per_block = math.prod(len(getattr(self, k + "s")) for k in self.block_knobs)
        total = len(self.resolutions) * len(self.widths) ** self.n_width_slots
        for stage in self.stages:
            factor = per_block if stage.elastic else 1
            total *= sum(factor**d for d in stage.depths)
        return total

    def block_ranges(self, depths: Sequence[int]) -> list[range]:
        """For each elastic stage, the indices of its active blocks in ``kernel``/``expand``."""
        ranges, start = [], 0
        for stage, depth in zip(self.stages, depths):
            if stage.elastic:
                ranges.append(range(start, start + depth))
                start += depth
        return ranges

    # ------------------------------------------------------------------ validation

    def arch(
        self,
        *,
        resolution: int,
        depths: Sequence[int],
        kernel: Sequence[int] = (),
        expand: Sequence[Number] = (),
        width: Sequence[Number] = (),
    ) -> ArchConfig:
        """Build a validated configuration; raises :class:`ArchValidationError` naming the field."""
        return self.validate(
            ArchConfig(resolution, depths, kernel, expand, width)
        )

    def validate(self, arch: ArchConfig) -> ArchConfig:
        """Check ``arch`` against this space; return it with values in the space's types."""
        if not isinstance(arch, ArchConfig):  # else an AttributeError on 'resolution', far from the call
            raise TypeError(f"expected an ArchConfig, got {type(arch).__name__}; make one with from_dict()")
        if arch.resolution not in self.resolutions:
            raise ArchValidationError(
                f"resolution={arch.resolution} is not allowed; choose from {list(self.resolutions)}"
            )
        if len(arch.depths) != len(self.stages):
            raise ArchValidationError(
                f"depths has {len(arch.depths)} entries; {self.name} has {len(self.stages)} stages"
            )
        for i, (depth, stage) in enumerate(zip(arch.depths, self.stages)):
            if depth not in stage.depths:
                raise ArchValidationError(
                    f"depths[{i}]={depth} is not allowed; choose from {list(stage.depths)}"
                )
        n_active = sum(d for d, s in zip(arch.depths, self.stages) if s.elastic)
        values: dict[str, tuple[Any, ...]] = {}
        for knob in ("kernel", "expand"):
            choices = getattr(self, knob + "s")
            expected = n_active if choices else 0
            values[knob] = self._check_values(knob, getattr(arch, knob), choices, expected,
                                              "one per active block")
        values["width"] = self._check_values(
            "width", arch.width, self.widths, self.n_width_slots, "one per width slot"
        )
        return ArchConfig(arch.resolution, arch.depths, values["kernel"], values["expand"],
                          values["width"])

    @staticmethod
    def _check_values(
        name: str, given: tuple[Any, ...], choices: tuple[Any, ...], expected: int, what: str
    ) -> tuple[Any, ...]:
        if len(given) != expected:
            raise ArchValidationError(
                f"{name} has {len(given)} entries; expected {expected} ({what})"
            )
        out = []
        for i, value in enumerate(given):
            match = [c for c in choices if not isinstance(value, bool) and c == value]
            if not match:
                raise ArchValidationError(
                    f"{name}[{i}]={value!r} is not allowed; choose from {list(choices)}"
                )
            out.append(match[0])
        return tuple(out)

    def contains(self, arch: ArchConfig) -> bool:
        try:
            self.validate(arch)
        except ArchValidationError:
            return False
        return True

    # ------------------------------------------------------------------ sampling

    def sample(self, rng: np.random.Generator | int | None, n: int) -> list[ArchConfig]:
        """``n`` configurations: each gene uniform over its choices, then decoded.

        Depth is drawn per stage first, so small and large subnets are both common
        (the canonical distribution, not uniform over distinct subnets).
        ``n`` is checked here: -1 and 2.5 otherwise failed inside numpy's
        ``integers`` with a message about negative dimensions or float sizes.
        """
        n = non_negative_int(n, "n")
        rng = np.random.default_rng(rng)
        xl, xu = self.bounds()
        genes = rng.integers(xl, xu + 1, size=(n, self.n_var))
        return [self.decode(row) for row in genes]

    def enumerate(self, limit: int = 5_000_000) -> Iterator[ArchConfig]:
        """Every subnet of a small space, in a fixed order; refuses spaces larger than ``limit``."""
        if self.size() > limit:
            raise ValueError(f"{self.name} has {self.size()} subnets, more than limit={limit}")
        knob_choices = [getattr(self, k + "s") for k in self.block_knobs]
        per_block = list(itertools.product(*knob_choices))
        for resolution, depths, width in itertools.product(
            self.resolutions,
            itertools.product(*(s.depths for s in self.stages)),
            itertools.product(self.widths, repeat=self.n_width_slots),
        ):
            n_active = sum(d for d, s in zip(depths, self.stages) if s.elastic)
            for blocks in itertools.product(per_block, repeat=n_active):
                columns = list(zip(*blocks)) if blocks else [()] * len(self.block_knobs)
                knobs = dict(zip(self.block_knobs, columns))
                yield ArchConfig(resolution, depths, tuple(knobs.get("kernel", ())),
                                 tuple(knobs.get("expand", ())), width)

    # ------------------------------------------------------------------ encoding

    def encode(self, arch: ArchConfig) -> np.ndarray:
        """The integer gene vector of ``arch`` (inactive block genes are 0)."""
        arch = self.validate(arch)
        genes = [self.resolutions.index(arch.resolution)]
        genes += [s.depths.index(d) for s, d in zip(self.stages, arch.depths)]
        for knob in self.block_knobs:
            choices = getattr(self, knob + "s")
            values = getattr(arch, knob)
            slots = [0] * self.n_blocks
            slot_start, active_start = 0, 0
            for stage, depth in zip(self.stages, arch.depths):
                if not stage.elastic:
                    continue
                for j in range(depth):
                    slots[slot_start + j] = choices.index(values[active_start + j])
                slot_start += stage.max_depth
                active_start += depth
            genes += slots
        genes += [self.widths.index(w) for w in arch.width]
        return np.asarray(genes, dtype=np.int64)

    def encode_many(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        if not archs:
            return np.zeros((0, self.n_var), dtype=np.int64)
        return np.stack([self.encode(a) for a in archs])

    def decode(self, genes: Sequence[int] | np.ndarray) -> ArchConfig:
        """The configuration a gene vector describes; genes of inactive blocks are ignored."""
        x = np.asarray(genes)
        if x.shape != (self.n_var,):
            raise ArchValidationError(f"gene vector has shape {x.shape}; expected ({self.n_var},)")
        bad = self._first_bad_gene(x[None, :])
        if bad is not None:
            raise ArchValidationError(bad.removeprefix("row 0: "))
        x = x.astype(np.int64)
        pos = 0
        resolution = self.resolutions[x[pos]]
        pos += 1
        depths = tuple(s.depths[x[pos + i]] for i, s in enumerate(self.stages))
        pos += len(self.stages)
        knobs: dict[str, tuple[Any, ...]] = {}
        for knob in self.block_knobs:
            choices = getattr(self, knob + "s")
            values, slot = [], pos
            for stage, depth in zip(self.stages, depths):
                if not stage.elastic:
                    continue
                values += [choices[x[slot + j]] for j in range(depth)]
                slot += stage.max_depth
            knobs[knob] = tuple(values)
            pos += self.n_blocks
        width = tuple(self.widths[i] for i in x[pos:pos + self.n_width_slots])
        return ArchConfig(resolution, depths, knobs.get("kernel", ()), knobs.get("expand", ()),
                          width)

    def canonical_genes(self, X: np.ndarray) -> np.ndarray:
        """Zero the genes of inactive blocks, row by row, vectorised.

        Two rows describe the same subnet exactly when their canonical genes are
        equal, which is what duplicate elimination in a search needs.
        """
        X = np.array(X, dtype=np.int64, copy=True)
        active = self.active_block_mask(X)
        start = 1 + len(self.stages)
        for k in range(len(self.block_knobs)):
            cols = slice(start + k * self.n_blocks, start + (k + 1) * self.n_blocks)
            X[:, cols] = np.where(active, X[:, cols], 0)
        return X

    def active_block_mask(self, X: np.ndarray) -> np.ndarray:
        """Boolean ``(n, n_blocks)``: which supernet block slots each encoded row uses."""
        X = np.atleast_2d(np.asarray(X))
        masks = []
        for i, stage in enumerate(self.stages):
            if not stage.elastic:
                continue
            depth = np.asarray(stage.depths)[X[:, 1 + i]]
            masks.append(np.arange(stage.max_depth)[None, :] < depth[:, None])
        return np.concatenate(masks, axis=1)

    def decode_batch(self, X: np.ndarray) -> ArchBatch:
        """Decode a whole ``(n, n_var)`` gene matrix at once into per-knob arrays.

        What objectives of a search share: one decode per population instead
        of one :meth:`decode` per row and per objective.  Genes are checked
        against the bounds and canonicalised (inactive block genes zeroed).
        """
        return ArchBatch.decode(self, self.canonical_genes(self.checked_genes(X)))

    def checked_genes(self, X: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """``X`` as ``(n, n_var)`` int64 genes, or :class:`ArchValidationError` naming the first bad gene.

        Genes are indices into the choices, so each must be a whole number
        within its bounds.  A fractional gene was truncated by :meth:`decode`
        and rounded by a problem's ``predict``: one row meant two subnets.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_var:
            raise ArchValidationError(f"genes have shape {X.shape}; expected (n, {self.n_var})")
        bad = self._first_bad_gene(X)
        if bad is not None:
            raise ArchValidationError(bad)
        return X.astype(np.int64)

    def _first_bad_gene(self, X: np.ndarray) -> str | None:
        """What is wrong with the first gene of ``(n, n_var)`` ``X`` that is not a whole number in bounds."""
        if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)):
            return f"genes must be whole numbers (indices into the choices), not {X.dtype}"
        xl, xu = self.bounds()
        wrong = (X < xl) | (X > xu)
        if X.dtype.kind == "f":
            wrong |= ~np.isfinite(X) | (X != np.round(X))
        if not wrong.any():
            return None
        row, col = (int(v) for v in np.argwhere(wrong)[0])
        value = X[row, col].item()
        if xl[col] <= value <= xu[col]:
            return f"row {row}: gene {col}={value!r} is not a whole number (an index into the choices)"
        return f"row {row}: gene {col}={value!r} is outside 0..{int(xu[col])}"

    # ------------------------------------------------------------------ sub-spaces

    def restrict(
        self,
        *,
        resolutions: Sequence[int] | None = None,
        depths: Sequence[int] | Sequence[Sequence[int]] | None = None,
        kernels: Sequence[int] | None = None,
        expands: Sequence[Number] | None = None,
        widths: Sequence[Number] | None = None,
    ) -> SearchSpace:
        """A sub-space offering only the given choices, named after what it keeps.

        Genes index a space's own choices, so gene 0 of a space restricted to
        160 px means 160 px while in the full space it means 128 px.  The
        sub-space therefore gets its own name (``<name>~r160.176``), and with
        it its own :attr:`network_id` and hash: anything filed or saved under
        a name (predictors, fronts) refuses the other space instead of
        silently reading its genes wrongly.  :meth:`genes_in` maps genes of
        the sub-space into the full space.  ``depths`` is one tuple for every
        elastic stage or one per stage; each stage must keep its largest
        depth, because the supernet's block slots follow it.
        """
        changes: dict[str, Any] = {}
        parts: list[str] = []
        for knob, values, tag in (("resolutions", resolutions, "r"), ("kernels", kernels, "k"),
                                  ("expands", expands, "e"), ("widths", widths, "w")):
            if values is None:
                continue
            kept = self._subset(knob, values, getattr(self, knob))
            if kept != getattr(self, knob):
                changes[knob] = kept
                parts.append(tag + ".".join(map(_format_number, kept)))
        if depths is not None:
            stages = self._restricted_stages(depths)
            if stages != self.stages:
                changes["stages"] = stages
                parts.append("d" + ".".join("".join(map(str, s.depths)) for s in stages))
        if not changes:
            return self
        suffix = "_".join(parts)
        if len(suffix) > 64:
            suffix = "sub" + hashlib.sha256(suffix.encode()).hexdigest()[:10]
        return replace(self, name=f"{self.name}~{suffix}", **changes)

    @staticmethod
    def _subset(knob: str, values: Sequence[Any], choices: tuple[Any, ...]) -> tuple[Any, ...]:
        """``values`` as a non-empty subset of ``choices``, kept in the choices' order."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):  # "160" read as 1, 6, 0
            raise TypeError(f"{knob} must be a list of choices, got {values!r}")
        values = list(values)
        if not values:
            raise ValueError(f"{knob}: a sub-space needs at least one choice")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise ValueError(f"{knob}: {unknown} not in this space's {list(choices)}")
        return tuple(c for c in choices if c in values)

    def _restricted_stages(
        self, depths: Sequence[int] | Sequence[Sequence[int]]
    ) -> tuple[StageSpec, ...]:
        per_stage = (list(depths) if depths and isinstance(depths[0], (list, tuple))
                     else [depths if s.elastic and len(s.depths) > 1 else s.depths
                           for s in self.stages])
        if len(per_stage) != len(self.stages):
            raise ValueError(f"depths: {len(per_stage)} stages given; the space has "
                             f"{len(self.stages)}")
        stages = []
        for i, (stage, wanted) in enumerate(zip(self.stages, per_stage)):
            kept = self._subset(f"depths[{i}]", wanted, stage.depths)
            if max(kept) != stage.max_depth:
                raise ValueError(f"depths[{i}]: a sub-space must keep the largest depth "
                                 f"{stage.max_depth} (the supernet's block slots follow it); "
                                 f"use a Limit to exclude deep subnets instead")
            stages.append(replace(stage, depths=kept))
        if self.layout is not None:
            self.layout.check_restriction(self, tuple(stages))
        return tuple(stages)

    def genes_in(self, other: SearchSpace, X: np.ndarray) -> np.ndarray:
        """Genes of ``self`` re-encoded for ``other`` (e.g. the space a sub-space came from).

        Every choice the rows use must exist in ``other`` with the same stage
        structure and the same fixed layout around the knobs; raises
        ``ValueError`` otherwise.  Vectorised, for scoring a sub-space's
        population with predictors fitted on the full space.  Spaces equal in
        their choices but not in their layout (a 10-class head against
        1,000, OFA's w1.0 against w1.2) are other networks: genes that map
        by structure alone were scored with the other network's predictor.
        """
        if (len(other.stages) != len(self.stages) or other.block_knobs != self.block_knobs
                or other.n_width_slots != self.n_width_slots
                or any(a.max_depth != b.max_depth for a, b in zip(self.stages, other.stages))):
            raise ValueError(f"{self.name} and {other.name} differ in structure; genes do not map")
        if not self.same_layout(other):
            raise ValueError(f"{self.network_id} and {other.network_id} are other networks (their fixed layouts, "
                             "head and widths included, differ); genes do not map")
        if other == self:
            return self.checked_genes(X)
        X = self.canonical_genes(self.checked_genes(X))
        out = np.zeros((len(X), other.n_var), dtype=np.int64)
        columns = [(self.resolutions, other.resolutions, 0, 0, 1)]
        columns += [(a.depths, b.depths, 1 + i, 1 + i, 1)
                    for i, (a, b) in enumerate(zip(self.stages, other.stages))]
        start = 1 + len(self.stages)
        for k, knob in enumerate(self.block_knobs):
            pos = start + k * self.n_blocks
            columns.append((getattr(self, knob + "s"), getattr(other, knob + "s"), pos, pos,
                            self.n_blocks))
        pos = start + len(self.block_knobs) * self.n_blocks
        columns.append((self.widths, other.widths, pos, pos, self.n_width_slots))
        active = self.active_block_mask(X) if len(X) else None
        for mine, theirs, src, dst, width in columns:
            if width == 0:
                continue
            lookup = np.array([theirs.index(c) if c in theirs else -1 for c in mine])
            mapped = lookup[X[:, src:src + width]]
            if start <= src < pos and active is not None:
                mapped = np.where(active, mapped, 0)
            if (mapped < 0).any():
                row, col = (int(v) for v in np.argwhere(mapped < 0)[0])
                raise ValueError(f"row {row} uses {mine[X[row, src + col]]!r}, which "
                                 f"{other.name} does not offer")
            out[:, dst:dst + width] = mapped
        return out

    # ------------------------------------------------------------------ JSON

    def from_dict(self, data: Mapping[str, Any]) -> ArchConfig:
        """Read hwsearch's JSON form or the family's native form, whichever ``data`` is."""
        if not isinstance(data, Mapping):
            raise ArchValidationError(f"an architecture must be a JSON object, got {type(data).__name__}")
        if "resolution" in data or "depths" in data:
            allowed = {"resolution", "depths", "kernel", "expand", "width"}
            unknown = sorted(set(data) - allowed)
            if unknown:
                raise ArchValidationError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
            for required in ("resolution", "depths"):
                if required not in data:
                    raise ArchValidationError(f"missing field {required!r}")
            return self.arch(
                resolution=data["resolution"],
                depths=data["depths"],
                kernel=data.get("kernel", ()),
                expand=data.get("expand", ()),
                width=data.get("width", ()),
            )
        return self.from_native(data)

    def from_json(self, text: str) -> ArchConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchValidationError(f"not valid JSON: {exc}") from exc
        return self.from_dict(data)

    # ------------------------------------------------------------------ native forms

    def to_native(self, arch: ArchConfig) -> dict[str, Any]:
        """``arch`` in the family's native form (OFA's ``ks/e/d/r`` dict, ...)."""
        if self.layout is None:
            raise ArchValidationError(f"{self.name} has no native arch form")
        return self.layout.to_native(self, self.validate(arch))

    def from_native(self, data: Mapping[str, Any]) -> ArchConfig:
        """Read the family's native form; the message names what is missing or wrong."""
        if self.layout is None:
            raise ArchValidationError(f"{self.name} reads only hwsearch's form "
                                      "(resolution, depths, ...)")
        fields = self.layout.native_fields
        missing = sorted(fields - set(data))
        if missing:
            raise ArchValidationError(
                f"missing field(s) {missing} for {self.name}; expected hwsearch form "
                f"(resolution, depths, ...) or its native form ({sorted(fields)})")
        unknown = sorted(set(data) - fields - self.layout.native_optional)
        if unknown:
            raise ArchValidationError(f"unknown field(s) {unknown} in {self.name}'s native form")
        return self.layout.from_native(self, data)

    def block_slots(self, depths: Sequence[int]) -> list[int]:
        """The slot (index in a native per-slot list) of each active block of an arch with ``depths``.

        Depths are read before they are checked, so each is held to its
        stage's range here: a native ``d`` of 10**30 asked for a list that
        long (a 500 in the service).
        """
        out, slot = [], 0
        for stage, depth in zip(self.stages, depths):
            if stage.elastic:
                out += range(slot, slot + min(max(int(depth), 0), stage.max_depth))
                slot += stage.max_depth
        return out

    def unpad_blocks(self, values: Sequence[Any], depths: Sequence[int]) -> list[Any]:
        """Per-slot values (``max(depth)`` per elastic stage) cut to the active blocks (:meth:`block_slots`)."""
        return [values[slot] for slot in self.block_slots(depths)]

    def pad_blocks(self, arch: ArchConfig, knob: str) -> list[Any]:
        """``arch``'s per-active-block values of ``knob`` padded with the smallest choice per slot.

        Native forms of weight-sharing projects carry a value for every block
        slot, switched on or not; they ignore the values of switched-off ones.
        """
        values, smallest = getattr(arch, knob), min(getattr(self, knob + "s"))
        out, start = [], 0
        for stage, depth in zip(self.stages, arch.depths):
            if stage.elastic:
                out += list(values[start:start + depth]) + [smallest] * (stage.max_depth - depth)
                start += depth
        return out

    # ------------------------------------------------------------------ extremes

    def smallest(self, resolution: int | None = None) -> ArchConfig:
        """The subnet with every choice at its minimum."""
        return self._extreme(min, resolution)

    def largest(self, resolution: int | None = None) -> ArchConfig:
        """The subnet with every choice at its maximum."""
        return self._extreme(max, resolution)

    def _extreme(self, pick: Any, resolution: int | None) -> ArchConfig:
        depths = [pick(s.depths) for s in self.stages]
        n_active = sum(d for d, s in zip(depths, self.stages) if s.elastic)
        return self.arch(
            resolution=pick(self.resolutions) if resolution is None else resolution,
            depths=depths,
            kernel=[pick(self.kernels)] * n_active if self.kernels else (),
            expand=[pick(self.expands)] * n_active if self.expands else (),
            width=[pick(self.widths)] * self.n_width_slots if self.widths else (),
        )
