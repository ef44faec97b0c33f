"""Entry point of the ``hwsearch`` command.

Each module in :mod:`hwsearch.cli` that defines ``register(app)`` adds its
commands, so adding a command never means editing this file.  Command modules
import their heavy dependencies (torch, ray, onnxruntime) inside the command
functions, which keeps ``hwsearch --help`` fast.

Errors are reported here, once for all commands: a known error (bad profile,
unreadable checkpoint, unreachable agent, ...) becomes one ``error: ...`` line
on stderr and an exit code (2 bad input, 1 failed work, 130 interrupted, 143 terminated; see
:mod:`hwsearch.cli._errors`), anything else keeps its traceback because it is a
bug.  ``--debug`` or ``HWSEARCH_DEBUG=1`` shows the traceback for every error.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys
from typing import Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperGroup

import hwsearch.cli as cli_package
from hwsearch.cli._errors import INTERRUPTED, TERMINATED, describe, sigterm_came


class _ReportingGroup(TyperGroup):
    """The root command group; turns known errors of any subcommand into one line.

    Wrapping ``invoke`` (rather than the ``app()`` call) catches Ctrl-C before
    typer turns it into a silent exit, and leaves click's usage errors, which
    are raised earlier while parsing, to click's own formatting.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SystemExit as ended:
            if not _ended_by_sigterm(ended):
                raise
            # Ray's driver (and `hwsearch search` before it starts) turns SIGTERM into sys.exit(15), which
            # ended the command with code 15 and no word; the job it ran is already marked interrupted.
            typer.echo("terminated", err=True)
            raise typer.Exit(TERMINATED) from None
        except (Exception, KeyboardInterrupt) as error:
            report = None if ctx.params.get("debug") else describe(error)
            if report is None:
                raise
            line, code = report
            typer.echo(line, err=True)
            raise typer.Exit(code) from None


def _ended_by_sigterm(ended: SystemExit) -> bool:
    """Whether ``ended`` is SIGTERM's exit: ``sys.exit(15)``, or any exit once the handler has run.

    Raised inside ``ray.wait``, Ray's check of the interrupted call raises
    ``SystemExit(1)`` in its place: ``profile-accuracy`` then ended 1
    without a word in 5 of 108 stops timed around its first batch.
    """
    return ended.code == signal.SIGTERM or sigterm_came()


app = typer.Typer(
    name="hwsearch",
    cls=_ReportingGroup,
    help=(
        "Find subnets of a once-for-all supernet that are accurate and fast on your devices.\n\n"
        "Start with `hwsearch demo`: it profiles, trains predictors, searches and reports "
        "on a small built-in supernet, offline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="HWSEARCH_DEBUG",
        help="On an error, show the full traceback instead of one line.")] = False,
) -> None:
    """Options of every command; ``debug`` is read by :class:`_ReportingGroup`.

    Every command also clears the temp folders of hwsearch runs that died
    without removing them (:mod:`hwsearch.tempdirs`), so a killed run costs
    disk space only until the next command.
    """
    from hwsearch.tempdirs import remove_dead_owners_folders

    freed = remove_dead_owners_folders()
    if freed >= _FREED_WORTH_SAYING:
        typer.echo(f"hwsearch: removed {freed / 1e6:.1f} MB of temp files that killed runs left behind", err=True)


#: Bytes of dead runs' temp files worth a line on stderr: "removed 0.0 MB" told a user nothing, and broke the one
#: line a command's own error is.
_FREED_WORTH_SAYING = 50_000


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if module_info.name == "main" or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"hwsearch.cli.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    """Run the command line; a run ended by SIGTERM or Ctrl-C leaves through :func:`_leave_stopped`."""
    import atexit

    from hwsearch.tempdirs import tag_this_command

    tag_this_command()  # before Ray starts, so its workers' folders carry it
    atexit.register(_end_as_stopped)  # first registered, so it runs after every other exit handler
    try:
        app()
    except SystemExit as ended:
        _hold_stops()
        if ended.code in (TERMINATED, INTERRUPTED):
            _leave_stopped(ended.code)
        raise


#: Stops (SIGTERM, SIGINT) that came while the process was already exiting.
_stops_while_exiting: list[int] = []


def _hold_stops() -> None:
    """From here a SIGTERM or Ctrl-C only records itself, so the exit handlers finish (see :func:`_end_as_stopped`).

    A stop during the exit used to cut ``ray.shutdown()`` off with an
    "Exception ignored in atexit callback" traceback, and the command
    still ended 0 (4 of 5 SIGTERMs and 2 of 2 Ctrl-Cs timed just after a
    ``search`` finished).
    """
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _stop_while_exiting)


def _stop_while_exiting(signum: int, _frame: object) -> None:
    """Record a stop; a second one means the exit itself is stuck (a thread it waits for), so end now."""
    _stops_while_exiting.append(signum)
    if len(_stops_while_exiting) > 1:
        _end_as_stopped()


def _end_as_stopped() -> None:
    """The last exit handler: a stop that came during the exit ends the process as that stop would have.

    With none, later stops are ignored for the rest of the exit: the
    interpreter's teardown puts the default handlers back (not an ignored
    one's), and a Ctrl-C 1.5-2 s after a finished ``search`` printed its
    result ended it -2, without a word (Y6).  Its work was done, so its own
    exit code stands.
    """
    if _stops_while_exiting:
        stopped = _stops_while_exiting[0] == signal.SIGTERM
        print("terminated" if stopped else "interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(TERMINATED if stopped else INTERRUPTED)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)


def _leave_stopped(code: int) -> NoReturn:
    """End the work the stop cut off, run the exit handlers (Ray's shutdown, locks), end the command's Ray workers
    still running, then end with ``code`` (143 or 130) without the interpreter's teardown.

    The job's thread works on while this runs, so the work is ended first
    (:func:`~hwsearch.at_exit.stop_work`: export pools, temp folders, and
    no new ones): a ``demo`` stopped just before it exported started its
    pool during Ray's shutdown, and its exit waited on the pool for ever (1
    of 2 Ctrl-Cs at 12 s, beside two busy loops).  Whatever that thread or
    Ray's native threads print after the stop's line is dropped: it printed
    Ray's "Failed to push error to driver" after "terminated".

    After "terminated" and every exit handler, the teardown itself crashed
    the process in 2 of 178 stops timed around ``profile-accuracy``'s first
    batch (exit -11, past faulthandler, so in native code Ray leaves behind).
    Nothing of this process is needed once the handlers have run.  A Ctrl-C
    leaves the same way: it had left its workers' folders to the next
    command (Y5).
    """
    import atexit

    from hwsearch.at_exit import stop_work
    from hwsearch.tempdirs import remove_folders_of_ended_workers

    sys.stdout.flush()
    sys.stderr.flush()
    _say_nothing_more()
    stop_work()
    atexit._run_exitfuncs()  # what a normal exit runs, and each handler only once
    remove_folders_of_ended_workers()  # Ray's shutdown leaves its workers a moment, mid-export
    os._exit(code)


def _say_nothing_more() -> None:
    """Point stdout and stderr at /dev/null: the command has said its last line."""
    with open(os.devnull, "wb") as nothing:
        for stream in (1, 2):
            os.dup2(nothing.fileno(), stream)


if __name__ == "__main__":
    main()
