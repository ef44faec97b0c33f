"""Where an address reaches, and which tokens can travel in a header: what agents and their clients check.

Standard library only, shared by the agent (its own address and token), its
client, and ``hwsearch.agents`` (the agents an operator declares); and which
connection has begun to speak, for the agent's and the service's connection
bounds.
"""

from __future__ import annotations

import ipaddress
import os
import socket

__all__ = ["MIN_SERVED_TOKEN_CHARS", "has_unread_bytes", "is_loopback", "served_token_problem", "token_problem"]

#: The fewest characters a server (the service, an agent) accepts as its token.  Every request is
#: answered, wrong token or not, so a short token falls to guessing: ``--token t`` was served.
#: 16 characters of ``secrets.token_urlsafe`` hold 96 bits.
MIN_SERVED_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    A name other than ``localhost`` may resolve anywhere, so it is not.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as a Bearer token, or None; the reason never quotes it.

    A header carries the token byte for byte: one with a trailing newline
    (a secrets file written with ``echo``) was refused by httpx, whose
    message, with the token in it, became a job's error for every client
    of the service to read; a non-ASCII one ended in a traceback.
    """
    if not token:
        return "is empty"
    if not (token.isascii() and token.isprintable()) or any(character.isspace() for character in token):
        return "must be printable ASCII without spaces or line breaks (an HTTP header carries it as it is)"
    return None


def served_token_problem(token: str) -> str | None:
    """Why a server cannot take ``token`` as the one its clients must send, or None; never quotes it.

    :func:`token_problem`, and long enough not to be guessed (:data:`MIN_SERVED_TOKEN_CHARS`).
    Clients are not held to the length: a short token matches no server that checks it.
    """
    problem = token_problem(token)
    if problem is None and len(token) < MIN_SERVED_TOKEN_CHARS:
        problem = (f"is shorter than the {MIN_SERVED_TOKEN_CHARS} characters a server needs, so that it cannot be "
                   "guessed (make one with: python3 -c \"import secrets; print(secrets.token_urlsafe(24))\")")
    return problem


def has_unread_bytes(descriptor: int) -> bool:
    """Whether the connection on ``descriptor`` has bytes waiting that its server has not read yet.

    Peeks through a duplicate, without blocking and without taking them: the
    connection's own socket belongs to whoever serves it.  A hang-up or a
    descriptor already closed counts as nothing waiting.
    """
    try:
        with socket.socket(fileno=os.dup(descriptor)) as duplicate:
            return bool(duplicate.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))  # b"": the client hung up
    except OSError:  # nothing sent yet (BlockingIOError), or gone already
        return False
