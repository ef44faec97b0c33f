"""Secrets kept out of this process's log records and warnings, whoever writes them.

A store plug-in is someone else's code: a database driver logs its
connection string when it connects, warns about it, or logs a failure with
its traceback, and all of that went to the service's log as written (stop
62 screened only what the plug-in raised through the store).  Once a
secret is registered here, every log record the process makes is screened
as it is made, for every logger and handler (a record factory, not a
filter on some handlers) and again as each handler formats it, and so
is every warning shown and every traceback of an error no one caught.  Screened means
each registered form of a secret, longest first, is replaced by
:data:`HIDDEN`.

Only what goes through :mod:`logging`, :mod:`warnings` and Python's own
report of an uncaught error is screened: a plug-in that prints to stderr
itself is not, nor a handler that renders a record's exception itself
(rich's tracebacks), nor a secret shorter than four characters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Iterable
from types import TracebackType
from typing import Any

__all__ = ["HIDDEN", "keep_out_of_logs", "screened"]

HIDDEN = "<hidden>"

_lock = threading.Lock()
_secrets: list[str] = []  # longest first, so a URL is hidden whole rather than around its password
_installed: list[bool] = []
_stderr_taken = threading.RLock()  # while a handler's failure report is written to a buffer in place of stderr


def keep_out_of_logs(secrets: Iterable[str]) -> None:
    """Hide each of ``secrets`` (every form in which it may be written) in this process's later log records and
    warnings."""
    with _lock:
        known = set(_secrets) | {secret for secret in secrets if secret}
        _secrets[:] = sorted(known, key=len, reverse=True)
        if not _installed:
            _install()
            _installed.append(True)


def screened(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`HIDDEN`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return text


def _install() -> None:
    """Screen what handlers write, the records themselves, warnings and uncaught errors' tracebacks; each once."""
    _screen_what_handlers_write()
    _screen_records_as_they_are_made()
    _screen_warnings()
    _screen_uncaught_errors()


def _screen_what_handlers_write() -> None:
    """Screen every handler's formatted text, and what a handler prints when it fails itself.

    Screening the record alone let through what a formatter reads beyond
    its message: ``extra`` fields (applied after the record factory), a
    traceback the formatter builds itself (with its locals, as rich does),
    a record rebuilt by ``makeLogRecord``; and a handler that failed while
    an error was being handled printed that error with its own (Y7).
    """
    format_record, report_failure = logging.Handler.format, logging.Handler.handleError

    def format_screened(self: logging.Handler, record: logging.LogRecord) -> str:
        return screened(format_record(self, record))

    def report_failure_screened(self: logging.Handler, record: logging.LogRecord) -> None:
        if sys.stderr is None:  # no stderr (pythonw, a daemon): logging says nothing, and the write failed (Y8)
            report_failure(self, record)
            return
        said = io.StringIO()
        with _stderr_taken, contextlib.redirect_stderr(said):  # one at a time: two interleaved left it swapped
            report_failure(self, record)
        sys.stderr.write(screened(said.getvalue()))

    logging.Handler.format = format_screened  # type: ignore[method-assign]
    logging.Handler.handleError = report_failure_screened  # type: ignore[method-assign]


def _screen_records_as_they_are_made() -> None:
    """Screen each record's message, traceback and ``extra`` text fields when it is made, for what reads records
    without a handler's formatting (a socket handler's pickled fields, a handler's own ``emit``, ``caplog``).

    ``extra`` is applied after the record factory, so ``Logger.makeRecord``
    is wrapped too (Y8: a handler writing its own fields printed them).
    """
    make_record, make_logger_record = logging.getLogRecordFactory(), logging.Logger.makeRecord

    def screened_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _screen(record)
        return record

    def screened_logger_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_logger_record(self, *args, **kwargs)
        extra = kwargs.get("extra", args[8] if len(args) > 8 else None)
        for name, value in (extra or {}).items():
            if isinstance(value, str) and screened(value) != value:
                setattr(record, name, screened(value))
        return record

    logging.setLogRecordFactory(screened_record)
    logging.Logger.makeRecord = screened_logger_record  # type: ignore[method-assign]


def _screen_warnings() -> None:
    """Screen a warning's text where every display of it is made: ``formatwarning``, which ``catch_warnings`` does
    not put back as it does ``showwarning`` (a screen installed inside one was gone after it: Y7)."""
    format_warning = warnings.formatwarning

    def format_screened(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        line: str | None = None) -> str:
        return screened(format_warning(message, category, filename, lineno, line))

    warnings.formatwarning = format_screened


def _screen_uncaught_errors() -> None:
    """Screen the tracebacks Python prints itself: an error no one caught, in the main thread or another one (a
    driver's reconnecting thread, say), or raised where no one can catch it (``__del__``).  A traceback with no
    secret is left to the hook that was there."""
    show_uncaught, show_uncaught_in_thread, show_unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook

    def uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, error, trace))
        if screened(text) == text:
            show_uncaught(kind, error, trace)
        else:
            sys.stderr.write(screened(text))

    def uncaught_in_thread(args: Any) -> None:
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        if args.exc_type is SystemExit or screened(text) == text:
            show_uncaught_in_thread(args)
        else:
            name = args.thread.name if args.thread is not None else threading.get_ident()
            sys.stderr.write(f"Exception in thread {name}:\n{screened(text)}")

    def unraisable(hooked: Any) -> None:  # an error in __del__ or a finaliser (Y8: a driver's close)
        trace = "".join(traceback.format_exception(hooked.exc_type, hooked.exc_value, hooked.exc_traceback))
        said = f"{hooked.err_msg or 'Exception ignored in'}: {hooked.object!r}\n{trace}"
        if screened(said) == said:
            show_unraisable(hooked)
        else:
            sys.stderr.write(screened(said))

    sys.excepthook, threading.excepthook, sys.unraisablehook = uncaught, uncaught_in_thread, unraisable


def _screen(record: logging.LogRecord) -> None:
    """Hide secrets in ``record``'s message, its traceback and its stack, formatted now (a handler formats later,
    from the arguments, which would still hold them)."""
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the message: logging reports that, quoting both, when it formats
        record.msg = screened(str(record.msg))
        if screened(repr(record.args)) != repr(record.args):
            record.args = (screened(repr(record.args)),)
        return
    if screened(message) != message:
        record.msg, record.args = screened(message), None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        traceback_text = logging.Formatter().formatException(record.exc_info)
        if screened(traceback_text) != traceback_text:
            record.exc_text = screened(traceback_text)  # what every Formatter prints when it is set
    if record.stack_info:
        record.stack_info = screened(record.stack_info)
