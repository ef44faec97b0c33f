"""What a client's connection may hold before and while it is served: its token, time, bytes.

Uvicorn bounds a request's header bytes (h11's 16 KiB) and, after a
response, an idle keep-alive (5 s), but nothing else in time.  Measured
against a real ``hwsearch serve``: a connection that sent nothing, one that
never finished its headers, and one that trickled its body a byte every 8 s
were all still open after 93 s, and 3,000 such connections were accepted.
Each one holds a file descriptor (and a trickled body also a task and the
shutdown), so a single client could exhaust the server.

The bounds, one read timeout for all of them:

* :func:`bounded_h11`: a connection must finish each request's headers within
  the timeout of opening or of its previous response (an idle connection is
  closed then), and a client that stops reading a response for the timeout
  (a stalled download) is cut off.  These live in the protocol because the
  application never sees a request before its headers are complete.
* :class:`BodyBounds`: the body must arrive within the timeout plus time for
  its size at :data:`MIN_BODY_BYTES_PER_S`, and within the size limit;
  otherwise 408 or 413, and the connection closes (the rest is never read).
* The number of connections is bounded by uvicorn's ``limit_concurrency``
  (``hwsearch serve --max-connections``): beyond it, requests get 503, in
  JSON with ``Retry-After`` as every other refusal (uvicorn's own is plain
  text), and so does a request h11 cannot parse (400).
* Strangers give way: a connection that arrives past the bound closes the
  one that has waited longest for a request's headers without ever having
  shown the token (one that never sent a byte before one that did), and one
  address's strangers hold at most half the bound (past it, that address's
  own oldest is closed), so a stranger reconnecting as fast as it can never
  closes another address's connections.  Measured
  before: 130 silent connections, reopened as each was closed, kept every
  request with the token at 503 for as long as they were kept up (the read
  timeout bounds each connection, not a client that reconnects).  A token
  holder's connection is trusted once :class:`TokenGate` has passed one of
  its requests, and only a connection waiting for headers is closed, never
  one whose request is being served.

And before any of it, :class:`TokenGate`: FastAPI reads and parses a body
(spooling an upload to disk) before it runs the route's token check, so a
stranger's request announcing a 100 MiB upload got no answer until its body
had come, up to the 512 MiB upload limit.  The gate answers 401 from the
headers alone, and closes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from devices.network import has_unread_bytes

__all__ = ["MIN_BODY_BYTES_PER_S", "BodyBounds", "TokenGate", "bounded_h11"]

#: The ASGI scope extension through which :class:`TokenGate` tells a connection it carried the token.
TRUSTED_EXTENSION = "hwsearch.connection_trusted"

#: After the read timeout's grace, a body must keep arriving at this average rate (the edge agent's too).
MIN_BODY_BYTES_PER_S = 64 * 1024

_CLOSE = {"Connection": "close"}
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class TokenGate:
    """401 before the body is read, for every request but those to ``public_paths``, unless its token is right."""

    def __init__(self, app: Any, *, token: str, public_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = token.encode()
        self.public_paths = public_paths

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._carries_token(scope):
            scope.get("extensions", {}).get(TRUSTED_EXTENSION, _no_connection)()
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        refused = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                               headers={"WWW-Authenticate": "Bearer", **_CLOSE})
        await refused(scope, receive, send)

    def _carries_token(self, scope: dict[str, Any]) -> bool:
        """``Authorization: Bearer <token>``, the scheme in any case, compared in constant time."""
        scheme, _, supplied = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(supplied, self.expected)


def bounded_h11(read_timeout_s: float) -> type[H11Protocol]:
    """Uvicorn's h11 protocol with a deadline on each request's headers and on each stalled write."""

    class BoundedH11Protocol(H11Protocol):
        """Closes a connection that is slow to send its headers, or stops reading what it is sent.

        It also keeps uvicorn's connection bound itself, to answer past it in
        JSON: uvicorn's own answer is a plain-text 503 that a client parsing
        ``detail`` cannot read.
        """

        _headers_deadline: asyncio.TimerHandle | None = None
        _write_deadline: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the request cycle current when the headers deadline was armed
        _trusted = False  # a request on it carried the token
        _spoke = False  # it has sent bytes: strangers that never did are closed first
        _opened_at = 0.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._limit, self.limit_concurrency = self.limit_concurrency, None
            self.app = _refused_past(self._over_limit, _trust_through_scope(self._trust, self.app))

        def _trust(self) -> None:
            self._trusted = True

        def _over_limit(self) -> bool:
            """Past the bound as a request starts: its own connection and task are already counted.

            (uvicorn's own test, ``>=`` on connections, served one connection fewer than it was given.)
            Connections already closing, strangers closed to make room among them, no longer count.
            """
            if self._limit is None:
                return False
            return self._open_connections() > self._limit or len(self.tasks) > self._limit

        def _open_connections(self) -> int:
            """Connections not already closing (strangers closed to make room among those that are)."""
            return sum(not other.transport.is_closing() for other in self.connections)

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (a malformed Content-Length, a bad request line), answered in JSON.

            Bytes that break the framing after an answer was sent (a bad chunk after the response) get
            no second answer, which h11 would refuse: the connection just closes.
            """
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.close()
                return
            body = json.dumps({"detail": msg}).encode("ascii")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened_at = self.loop.time()
            self._await_headers()
            if self._limit is not None:
                self._make_room()

        def _make_room(self) -> None:
            """Abort a stranger, the silent before those that spoke, oldest first: this address's own past its
            share, anyone's past the bound.

            A stranger waits for headers and never showed the token; this
            connection, just opened, counts as one of its address's.  One that
            has sent part of a request is more likely a client than one that
            sent nothing (as in the edge agent, where age alone dropped a TLS
            token holder mid-handshake).
            """
            strangers = [other for other in self.connections
                         if other is not self and isinstance(other, BoundedH11Protocol) and other._is_stranger()]
            own = [other for other in strangers if other._address() == self._address()]
            if len(own) + 1 > max(1, self._limit // 2):
                min(own, key=_give_way_order).transport.abort()
            elif strangers and self._open_connections() > self._limit:
                min(strangers, key=_give_way_order).transport.abort()

        def _address(self) -> str | None:
            return self.client[0] if self.client else None

        def _is_stranger(self) -> bool:
            """Never showed the token, and is waiting for a request's headers (no request of it is being served)."""
            return not self._trusted and self._headers_deadline is not None and not self.transport.is_closing()

        def data_received(self, data: bytes) -> None:
            self._spoke = True
            super().data_received(data)
            self._stop_waiting_if_headers_arrived()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._await_headers()  # the next request's headers, after an idle keep-alive
            super().on_response_complete()  # may start a pipelined request at once
            self._stop_waiting_if_headers_arrived()

        def pause_writing(self) -> None:
            super().pause_writing()
            _cancel(self._write_deadline)
            self._write_deadline = self.loop.call_later(read_timeout_s, self.transport.abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            _cancel(self._write_deadline)

        def connection_lost(self, exc: Exception | None) -> None:
            _cancel(self._headers_deadline)
            _cancel(self._write_deadline)
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            _cancel(self._headers_deadline)
            self._waiting_after = self.cycle
            # abort, not close: close would wait to flush, and the point is not to wait on this client
            self._headers_deadline = self.loop.call_later(read_timeout_s, self.transport.abort)

        def _stop_waiting_if_headers_arrived(self) -> None:
            if self.cycle is not self._waiting_after:  # h11 parsed a request: a new cycle began
                _cancel(self._headers_deadline)
                self._headers_deadline = None

    def _give_way_order(connection: BoundedH11Protocol) -> tuple[bool, float]:
        """Which stranger is closed first: the silent, then the oldest.

        Bytes still in the kernel count as spoken: the event loop hands a new
        connection's first bytes over turns after it accepted it, and the
        connections accepted in between saw it as silent (Y20: a request sent
        whole, then one stranger's byte, and the request was aborted).
        """
        return connection._spoke or _has_unread_bytes(connection.transport), connection._opened_at

    return BoundedH11Protocol


def _has_unread_bytes(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and has_unread_bytes(sock.fileno())


def _refused_past(over_limit: Callable[[], bool], app: Any) -> Any:
    """``app`` behind the connection bound: past it, a JSON 503 with ``Retry-After``, and the connection closes."""

    async def bounded(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and over_limit():
            refused = JSONResponse({"detail": "the service holds as many connections as it allows; "
                                              "try again in a few seconds"},
                                   status_code=503, headers={"Retry-After": "5", **_CLOSE})
            await refused(scope, receive, send)
            return
        await app(scope, receive, send)

    return bounded


def _trust_through_scope(trust: Callable[[], None], app: Any) -> Any:
    """``app`` with ``trust`` in each request's scope, for :class:`TokenGate` to call when the token is right."""

    async def offering(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {})[TRUSTED_EXTENSION] = trust
        await app(scope, receive, send)

    return offering


def _no_connection() -> None:
    """What :class:`TokenGate` calls when no bounded connection offered itself (the app served another way)."""


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


class BodyBounds:
    """Refuse request bodies that are too large (413) or too slow (408), without reading them whole.

    A declared ``Content-Length`` over the limit is refused at once; a body
    sent without one (chunked) is counted as it streams in.  Checkpoint
    uploads get their own, larger limit.  Time: the body must arrive within
    ``read_timeout_s`` plus its size at :data:`MIN_BODY_BYTES_PER_S`, so a
    trickle is cut off while a slow but steady upload is not.  Once the body
    is complete, waiting on ``receive`` (for a disconnect) is not bounded.
    """

    def __init__(self, app: Any, *, max_body_bytes: int, max_upload_bytes: int,
                 upload_paths: tuple[str, ...], read_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive, limit), send)

    def _bounded(self, receive: Receive, limit: int) -> Receive:
        """``receive``, raising 413 past ``limit`` bytes and 408 past the body's deadline."""
        started = time.monotonic()
        seen = 0
        complete = False

        async def bounded() -> dict[str, Any]:
            nonlocal seen, complete
            if complete:
                return await receive()
            deadline = started + self.read_timeout_s + seen / MIN_BODY_BYTES_PER_S
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HTTPException(408, f"request body did not arrive in time: {seen} bytes in "
                                         f"{time.monotonic() - started:.0f} s", headers=_CLOSE) from None
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request body is larger than {limit} bytes", headers=_CLOSE)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return bounded


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body is larger than {limit} bytes"}, status_code=413,
                        headers=_CLOSE)
