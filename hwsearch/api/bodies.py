"""JSON request bodies: parsed strictly, and a body that cannot be parsed named as ``body`` in a 400.

FastAPI parses a JSON body with ``json.loads`` and, when that raises
anything but a decode error, answers ``400 {"detail": "There was an error
parsing the body"}``: a body nested 200,000 levels deep, holding a
5,000-digit number or bytes that are not UTF-8 got an answer that named
neither the body nor the reason.  And ``json.loads`` keeps the last of a
repeated key, so ``{"supernet": "a", "supernet": "b"}`` was taken as
``"b"`` while the device profile files this service reads refuse repeated
keys.  :class:`StrictJSONRoute` parses bodies refusing repeated keys, and
:func:`unparsable_body` says why a body could not be parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from devices.profile import RepeatedKey, unique_keys

__all__ = ["FASTAPI_PARSE_FAILURE", "StrictJSONRoute", "unparsable_body"]

#: FastAPI's detail for a body ``json.loads`` raised on (other than a plain decode error).
FASTAPI_PARSE_FAILURE = "There was an error parsing the body"


class _StrictJSONRequest(Request):
    """A request whose JSON body may not repeat a key within an object."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=unique_keys)
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is parsed by :class:`_StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


def unparsable_body(cause: BaseException | None) -> str:
    """Why a JSON body could not be parsed, from the error FastAPI's parse failure was raised from."""
    if isinstance(cause, RepeatedKey):
        return f"in one JSON object of the body the {cause} (give each key once)"
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body holds a number with too many digits"
    return "the body is not JSON this service can read"
