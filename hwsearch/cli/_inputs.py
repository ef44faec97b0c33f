"""Readers of command-line inputs that fail early and name the option at fault.

Commands read every input through these before any slow work (exporting,
profiling, starting Ray), so a wrong file costs a second, not a run, and the
error says which option to fix (see :mod:`hwsearch.cli._errors`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from hwsearch.cli._errors import OptionError, reading

__all__ = ["MAX_SEED", "MAX_SUBNETS", "STORE_HELP", "check_onnx_files", "check_ray_address_option", "load_profile",
           "load_supernet", "open_store_option", "prepare_folder", "refuse_a_mistyped_store_url",
           "refuse_file_in_the_way", "require_regular_file", "require_size_at_most", "seed_option",
           "warn_if_untrained"]

#: The largest seed a command takes, as the service's jobs (every RNG seeded from it takes it).
MAX_SEED = 2**31 - 1
#: The most subnets a command selects, profiles, evaluates or adds in refinement, as the service's
#: schema: selection draws 40 candidates per subnet, so ``--n 1000000`` asked for 13.7 GiB and
#: ``--n 10**30`` ended in a numpy traceback (after Ray had started, for ``search``).
MAX_SUBNETS = 10_000
#: What ``--store`` takes, for every command's help.
STORE_HELP = ("a SQLite file, or a scheme://... URL that an installed store plug-in opens (hwsearch.stores; "
              "give one that holds a password in $HWSEARCH_STORE, not on the command line)")


def seed_option(help: str) -> Any:  # -> typer's OptionInfo
    """A ``--seed`` option bounded to 0..MAX_SEED: numpy refuses a negative seed with a traceback."""
    return typer.Option(min=0, max=MAX_SEED, help=help)


def require_regular_file(path: Path, option: str) -> None:
    """Refuse anything but a regular file: reading a FIFO (``mkfifo``) or ``/dev/zero`` never ends.

    Measured: ``hwsearch measure FIFO`` and ``--device FIFO`` waited until killed.
    """
    if not path.is_file():
        raise OptionError(option, f"{path} is not a regular file")


def require_size_at_most(path: Path, limit: int, option: str, what: str) -> None:
    """Refuse a file larger than ``limit`` bytes before reading it, naming ``option``.

    Measured: a 50 GB sparse file (``truncate -s 50G``) given to ``measure``
    ended in a ``MemoryError`` traceback.
    """
    with reading(option):
        size = path.stat().st_size
    if size > limit:
        raise OptionError(option, f"{path} is {size:,} bytes; {what} is at most {limit:,}")


def load_profile(path: Path, option: str = "--device") -> Any:  # -> devices.profile.DeviceProfile
    """The device profile in ``path``; a malformed or unreadable one is ``option``'s error."""
    from devices.profile import DeviceProfile

    require_regular_file(path, option)
    with reading(option):
        return DeviceProfile.load(path)


def refuse_a_mistyped_store_url(value: str, option: str = "--store") -> None:
    """Refuse, without quoting it, a store that begins as a URL does (``scheme:``) but is not one.

    Read as a path, ``urlfile:/me:pw@host/x.db`` (one ``/`` short) made
    folders named after it, password and all.
    """
    from hwsearch.store_urls import mistyped_url_problem

    if (problem := mistyped_url_problem(value)) is not None:
        raise OptionError(option, problem)


def open_store_option(value: str, *, must_exist: bool = False, option: str = "--store") -> Any:  # -> store.Store
    """The store ``value`` names (:data:`STORE_HELP`), opened and checked; one line naming ``option`` if it cannot be.

    ``must_exist``: a command that only reads rows refuses a SQLite path
    with no file there, rather than creating an empty store and finding
    nothing in it.
    """
    from hwsearch.store import StoreError, open_store
    from hwsearch.store_urls import is_store_url

    refuse_a_mistyped_store_url(value, option)
    if not is_store_url(value):
        path = Path(value)
        if must_exist and not path.is_file():
            raise OptionError(option, f"{value} is not a store file")
        value = path  # type: ignore[assignment]  (a path, even one that reads like a URL's remainder)
    try:
        return open_store(value)
    except StoreError as error:
        raise OptionError(option, str(error)) from None


def load_supernet(name: str, checkpoint: Path | None = None) -> Any:  # -> supernets.Supernet
    """The registered supernet ``name``, with ``checkpoint``'s weights if given.

    Built and loaded in two steps so an unknown name blames ``--supernet``
    and an unreadable or ill-fitting file blames ``--checkpoint``.
    """
    from hwsearch.supernets import create_supernet

    with reading("--supernet"):
        net = create_supernet(name)
    if checkpoint is not None:
        with reading("--checkpoint"):
            net.load_checkpoint(checkpoint)
    return net


def warn_if_untrained(supernet: str, checkpoint: Path | None) -> None:
    """Say so when accuracies will be measured on a random initialisation.

    No registered supernet ships weights (``create_supernet`` builds a fresh
    network, as timm does without ``pretrained``), so a search without
    ``--checkpoint`` ranked subnets by accuracies near chance without a word.
    """
    if checkpoint is not None:
        return
    import hwsearch.demo

    shipped = Path(hwsearch.demo.__file__).parent / f"{supernet}.pt"
    hint = f"; hwsearch ships this one's trained weights: --checkpoint {shipped}" if shipped.is_file() else ""
    typer.echo(f"warning: no --checkpoint: {supernet}'s weights are a random initialisation, so every accuracy "
               f"is near chance{hint}", err=True)


def check_onnx_files(paths: Sequence[Path], option: str = "MODELS") -> None:
    """Fail unless onnxruntime can load every file, naming the first that it cannot.

    The profiler would fail on it too, but only after measuring the others
    (or uploading them to an agent) and without saying which file it was.
    """
    from devices.agent import AgentLimits
    from devices.ort import validate_onnx_bytes

    for path in paths:
        require_regular_file(path, option)
        require_size_at_most(path, AgentLimits.max_model_bytes, option, "an ONNX model")
        with reading(option):
            try:
                validate_onnx_bytes(path.read_bytes())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None


def prepare_folder(folder: Path, option: str) -> None:
    """Create ``folder`` (and its parents) now, so an unusable output path fails before the work.

    A parent that is a file (``/etc/passwd/x``) and a folder without write
    permission are reported as such rather than as a bare ``FileExistsError``.
    """
    refuse_file_in_the_way(folder, option)
    with reading(option):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(option, f"cannot write under {folder}: permission denied")


def refuse_file_in_the_way(folder: Path, option: str) -> None:
    """Refuse an output ``folder`` that is a file, or lies under one, without making anything.

    For commands that make their folder only once they have something to
    write, so a run that fails first leaves nothing behind.
    """
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OptionError(option, f"cannot write under {folder}: {blocker} is a file, not a folder")


def check_ray_address_option(address: str | None) -> None:
    """Refuse a ``--ray-address`` nothing answers at, naming the option, before anything starts.

    ``ray.init`` waits for an unreachable cluster without limit: ``search``
    hung for minutes and left its job ``queued``, and ``serve`` took jobs and
    left them ``queued``.  A service's jobs check again as they start, in
    case the cluster goes away later.
    """
    from hwsearch.ray_session import RayUnreachable, check_ray_address

    if address is None:
        return
    try:
        check_ray_address(address)
    except RayUnreachable as error:
        raise OptionError("--ray-address", str(error)) from None
