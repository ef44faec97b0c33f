"""Errors a user can fix, told in one line instead of a traceback.

Commands let errors propagate; the ``hwsearch`` group (see
:mod:`hwsearch.cli.main`) turns the known ones into ``error: ...`` on stderr
and an exit code, in one place.  Where the message alone would not say which
input was wrong, a command reads that input inside :func:`reading`, which
attaches the option's name.  Unknown exceptions are bugs and keep their
traceback, as does everything under ``--debug`` / ``HWSEARCH_DEBUG=1``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BAD_INPUT", "FAILED", "INTERRUPTED", "TERMINATED", "OptionError", "describe", "exit_on_sigterm",
           "reading", "sigterm_came", "signals_held"]

BAD_INPUT = 2  # the user's input is wrong; same code click uses for usage errors
FAILED = 1  # the input was fine but the work failed (agent unreachable, disk full)
INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM, what shells report for a process ended by it

_MAX_MESSAGE_CHARS = 1000

# Known error types as (module, class, exit code).  They are looked up only in
# modules already imported: an exception cannot be an instance of a class that
# was never loaded, and importing torch just to run ``isinstance`` would cost
# every failing command a second.
_KNOWN_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("devices.profile", "ProfileError", BAD_INPUT),
    ("devices.ort", "ModelInputError", BAD_INPUT),
    ("devices.agent", "AgentSettingError", BAD_INPUT),
    # An image of a dataset folder, read only as it is evaluated (in a Ray task); the message names it.
    ("hwsearch.preprocess", "UnreadableImage", BAD_INPUT),
    ("hwsearch.space", "ArchValidationError", BAD_INPUT),
    ("hwsearch.supernets.base", "CheckpointError", BAD_INPUT),
    ("devices.client", "AgentError", FAILED),
    ("devices.protocol", "SessionOverrun", FAILED),
    # The host lock's folder is unusable (a file where its queue should be, ...); the message names it.
    ("devices.hostlock", "HostLockError", FAILED),
    # A calibration file that could be neither read nor moved aside; the message names it.
    ("devices.calibration", "UnreadableFile", FAILED),
    ("hwsearch.export", "ExportCheckError", FAILED),
    ("hwsearch.accuracy_eval", "NonFiniteLogits", FAILED),
    ("hwsearch.quantize", "PrecisionError", BAD_INPUT),
    ("hwsearch.quantize_worker", "QuantizerError", FAILED),
    # A store that opened and then failed (a plug-in's lost connection): before StoreError, its parent.
    ("hwsearch.store", "StoreFailed", FAILED),
    ("hwsearch.store", "StoreError", BAD_INPUT),
    # Another process stopped the job this command ran (a service's cancel); the message says how it ended.
    ("hwsearch.jobs.control", "JobCancelled", FAILED),
    # A task reached a cluster node that joined with other hwsearch code; the message names its installation.
    ("hwsearch.ray_session", "ForeignCode", FAILED),
    # A store that fails while a command reads or writes it (disk full, locked past the timeout, or a
    # damaged file: "database disk image is malformed", a DatabaseError and OperationalError's parent);
    # opening checks for the usual problems first (StoreError), so this is the rare case.
    ("sqlite3", "DatabaseError", FAILED),
)


class OptionError(Exception):
    """The input given to one command-line option is unusable.

    ``option`` is how the user wrote it (``--device``, ``MODELS``), so the
    one-line message points at the argument to fix.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@contextmanager
def reading(option: str) -> Iterator[None]:
    """Report ``ValueError`` / ``OSError`` raised while reading ``option``'s input as its error.

    Loaders of profiles, checkpoints, datasets and models raise these for
    malformed or unreadable files (and parsers a ``RecursionError`` for
    absurdly nested JSON, reported the same way); tagging them here, right where the input
    is read, is what lets the single handler name the option.
    """
    try:
        yield
    except (ValueError, OSError) as error:
        raise OptionError(option, _os_error_text(error) if isinstance(error, OSError)
                          else str(error)) from error
    except RecursionError:  # json/yaml parsing '[' * 100000: the input, not a bug, is at fault
        raise OptionError(option, "the input is nested too deeply to read") from None


def describe(error: BaseException) -> tuple[str, int] | None:
    """``(one line for stderr, exit code)`` for a known error; None for a bug to show in full."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(error, OptionError):
        return _one_line(f"error: {error} ({error.option})"), BAD_INPUT
    error = _unwrapped(error)
    for module_name, class_name, code in _KNOWN_ERRORS:
        known = getattr(sys.modules.get(module_name), class_name, None)
        if known is not None and isinstance(error, known):
            return _one_line(f"error: {error}"), code
    if isinstance(error, BrokenPipeError):  # `hwsearch ... | head`: click exits quietly on it
        return None
    if isinstance(error, OSError):
        return _one_line(f"error: {_os_error_text(error)}"), FAILED
    return None


def _unwrapped(error: BaseException) -> BaseException:
    """The error a Ray task raised, for Ray's wrapper of it (``RayTaskError(JobCancelled)`` is also a
    ``JobCancelled``, but its text is the task's whole traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) and isinstance(error, type(cause)) else error


def _os_error_text(error: OSError) -> str:
    """``strerror: filename`` for OS errors (``str()`` adds ``[Errno N]`` and quotes)."""
    if error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _one_line(text: str) -> str:
    """Collapse line breaks (agents and libraries send multi-line details), show control and bidi
    characters escaped (an agent's detail retitled and cleared the terminal; see :mod:`devices.plain`),
    and bound the length."""
    from devices.plain import printable  # here, not at the top: only a failing command pays for it

    return printable(" ".join(text.split()), _MAX_MESSAGE_CHARS)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit`` here, as Ray's driver does once it starts, for a command about to start Ray.

    A ``search``'s runner then marks its job ``interrupted`` on the way out
    (:func:`~hwsearch.jobs.run_job_watched`); with the default action the
    process died at once and its job stayed ``queued`` or ``running`` in
    ``--out``'s store.  Ray's own handler would abort the process instead
    (``profile-accuracy`` ended in a stack dump, or "Aborted", rc 134).
    """
    import signal

    from hwsearch.ray_session import no_abort_on_sigterm

    signal.signal(signal.SIGTERM, _exit_for_sigterm)
    no_abort_on_sigterm()


_sigterm_came = False


def _exit_for_sigterm(signum: int, _frame: object) -> None:
    global _sigterm_came
    _sigterm_came = True
    sys.exit(signum)


def sigterm_came() -> bool:
    """Whether SIGTERM reached :func:`exit_on_sigterm`'s handler: the exit under way is its, whatever its code.

    Raised inside ``ray.wait``, the handler's ``sys.exit(15)`` comes out as
    Ray's own ``SystemExit(1)``, with no trace of the first.
    """
    return _sigterm_came


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C while the block runs, then deliver the first that came, so none cuts it half-way.

    ``search`` makes its job's row and the guard that marks it interrupted
    in one such block: stopped between the two, the job stayed ``queued``
    for ever (5 of 5 stops timed just after the row was written).  Python
    handlers are swapped, not the thread's signal mask, which other threads
    (torch's) would receive in its place.
    """
    import signal

    came: list[int] = []
    held = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.signal(number, lambda signum, _frame: came.append(signum)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if came:
            signal.raise_signal(came[0])
