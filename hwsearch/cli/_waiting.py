"""The CLI's word on waiting for the host: a session can queue minutes behind others, silently otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

__all__ = ["waiting_printer"]


def waiting_printer(then: Callable[[dict[str, Any]], None] | None = None) -> Callable[[dict[str, Any]], None]:
    """A progress callback that prints each new waiting message to stderr, then hands every event to ``then``.

    The host lock (:mod:`devices.hostlock`) reports a wait about once a
    second; the line is printed only when its message changes ("waiting for
    local host: 2 sessions ahead, ..."), or when a wait follows other
    events, so a long wait is a few lines, not one a second.  It takes the
    device's events (``event="waiting"``) and the pipeline's relayed ones
    (``stage="waiting"``) alike.  stderr, so that ``--json`` output stays
    one JSON document.
    """
    last: list[str] = []

    def show(event: dict[str, Any]) -> None:
        if "waiting" in (event.get("event"), event.get("stage")):
            message = str(event.get("message", "waiting for local host"))
            if last != [message]:
                last[:] = [message]
                typer.echo(message, err=True)
        else:
            last.clear()  # the wait is over: the next one is news again
        if then is not None:
            then(event)

    return show
