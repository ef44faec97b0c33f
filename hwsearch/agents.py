"""Edge agents the operator declared, and device profiles that refer to them by name.

A profile file on the operator's own disk may say where an agent is
(``where: {kind: agent, url: ..., token_env: ...}``): the operator wrote it.
A profile a service client registers may not: a client that chose the URL
could make the server upload models, and the token, to any listener.  So the
service keeps a table of agents its operator declared (``hwsearch serve
--agent NAME=URL``), and client profiles say only ``where: {kind: agent,
name: NAME}``.  :func:`resolve_profile` turns such a profile into a
measurable :class:`~devices.profile.DeviceProfile` plus the agent's token at
the moment of measuring; the token never enters a stored job.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devices.network import is_loopback, token_problem
from devices.profile import certificate_digest, has_query_or_fragment, is_certificate_digest

__all__ = ["MAX_SECRETS_BYTES", "AgentEndpoint", "UndeclaredReach",
           "UnknownAgent", "load_agents", "operator_only_fields", "resolve_profile"]

log = logging.getLogger(__name__)

_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UnknownAgent(ValueError):
    """A profile names an agent the operator did not declare."""


class UndeclaredReach(ValueError):
    """A profile from a client or a stored row names a URL, a token variable or a file of its own choosing."""


@dataclass(frozen=True)
class AgentEndpoint:
    """One declared agent: where it listens, the token it expects (never printed), and maybe its certificate.

    ``cert_sha256`` pins an ``https://`` agent to one certificate
    (:attr:`devices.profile.Where.cert_sha256`), declared as
    ``NAME=URL#sha256=HEX``.
    """

    name: str
    url: str
    token: str = field(repr=False)
    cert_sha256: str | None = None

    def __post_init__(self) -> None:
        if not _AGENT_NAME.fullmatch(self.name):
            raise ValueError(f"agent name {self.name!r} must be 1-64 of [A-Za-z0-9._-]")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"agent {self.name}: url {self.url!r} must be http(s)")
        if "@" in urlsplit(self.url).netloc:  # the URL is printed in logs and errors; a password must not be
            raise ValueError(f"agent {self.name}: its url carries a user or password; the agent's token "
                             "comes from the secrets file or the environment, and the url is printed in logs")
        if not self.token:
            raise ValueError(f"agent {self.name}: no token")
        if has_query_or_fragment(self.url):
            raise ValueError(f"agent {self.name}: url {self.url!r} may have no query and no fragment but "
                             "#sha256=HEX, its certificate's pin")
        if self.cert_sha256 is not None and not (is_certificate_digest(self.cert_sha256)
                                                 and self.url.startswith("https://")):
            raise ValueError(f"agent {self.name}: #sha256= takes the SHA-256 the agent prints for its certificate "
                             "(64 hex digits, or openssl's AB:CD:... form), after an https:// url")


def token_variable(name: str) -> str:
    """The environment variable that holds a declared agent's token, e.g. HWSEARCH_AGENT_TOKEN_EDGE_1."""
    return "HWSEARCH_AGENT_TOKEN_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


#: The largest agent secrets file read (``hwsearch serve --agent-secrets``): tokens of a few agents take bytes.
MAX_SECRETS_BYTES = 1 << 20


class SecretsFileError(ValueError):
    """The agent secrets file cannot be used; the CLI names ``--agent-secrets`` for it, not ``--agent``."""


def _read_secrets(path: Path) -> dict[str, str]:
    """The secrets file's ``{name: token}``; refused unread if it is not a regular file of at most MAX_SECRETS_BYTES.

    Measured: a FIFO blocked the service's start forever, and a 50 GB sparse
    file ended it in a ``MemoryError``.  No message quotes the file's text.
    """
    import json

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SecretsFileError(f"{path} is not a regular file")
        if info.st_size > MAX_SECRETS_BYTES:
            raise SecretsFileError(f"{path} is {info.st_size:,} bytes; a secrets file is at most "
                                   f"{MAX_SECRETS_BYTES:,}")
        with path.open("rb") as file:  # bounded again: the file may have grown since
            data = file.read(MAX_SECRETS_BYTES + 1)
    except OSError as error:
        raise SecretsFileError(f"{path} cannot be read ({error.strerror or type(error).__name__})") from None
    if len(data) > MAX_SECRETS_BYTES:
        raise SecretsFileError(f"{path} is over {MAX_SECRETS_BYTES:,} bytes; a secrets file is at most that")
    try:
        secrets = json.loads(data)
    except UnicodeDecodeError:  # its message names the byte, which may be one of a token's
        raise SecretsFileError(f"{path} is not JSON (not UTF-8 text)") from None
    except ValueError as error:  # JSONDecodeError, whose message names a place, not the text
        raise SecretsFileError(f"{path} is not JSON ({error})") from None
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        raise SecretsFileError(f"{path}: expected a JSON object of agent name -> token")
    return secrets


def load_agents(declared: list[str], *, secrets_file: Path | None = None,
                environ: Mapping[str, str] = os.environ) -> dict[str, AgentEndpoint]:
    """Agents from ``NAME=URL`` (or ``NAME=URL#sha256=HEX``) declarations; tokens from a secrets file or the
    environment.

    The secrets file is JSON ``{"NAME": "TOKEN", ...}`` (readable by the
    operator only, ideally); a name missing there is looked up in
    :func:`token_variable`.  Every declared agent must have a token, so a
    typo fails at start-up rather than at the first measurement.
    """
    secrets = {} if secrets_file is None else _read_secrets(Path(secrets_file))
    agents: dict[str, AgentEndpoint] = {}
    for item in declared:
        name, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"--agent {item!r}: expected NAME=URL")
        if name in agents:
            raise ValueError(f"--agent {name!r} is declared twice")
        token = secrets.get(name) or environ.get(token_variable(name), "")
        if not token:
            raise ValueError(f"agent {name!r} has no token: put it in the secrets file or in "
                             f"${token_variable(name)}")
        problem = token_problem(token)
        if problem is not None:  # one ending in a newline went into every job's error, for clients to read
            source = "in the secrets file" if secrets.get(name) else f"in ${token_variable(name)}"
            raise ValueError(f"agent {name!r}: its token {source} {problem}")
        url, pin = _split_pin(url)
        agents[name] = AgentEndpoint(name=name, url=url.rstrip("/"), token=token, cert_sha256=pin)
        _warn_if_in_clear(agents[name])
    return agents


def _split_pin(url: str) -> tuple[str, str | None]:
    """``URL#sha256=HEX`` as the URL and the pin in :attr:`~devices.profile.Where.cert_sha256`'s form."""
    found = re.search(r"#sha256=", url, flags=re.IGNORECASE)
    if found is None:
        return url, None
    return url[:found.start()], certificate_digest(url[found.end():])


def _warn_if_in_clear(agent: AgentEndpoint) -> None:
    """Warn when the agent's token would cross the network unencrypted: a plain ``http://`` URL to another machine.

    On the log, which is stderr until a server sets it up.
    """
    parts = urlsplit(agent.url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        log.warning("warning: agent %s is reached over plain HTTP (%s): its token and the models cross the "
                    "network in clear; serve the agent with --ssl-certfile and --ssl-keyfile and declare "
                    "an https:// URL", agent.name, agent.url)


def operator_only_fields(data: Mapping[str, Any]) -> list[str]:
    """The fields of profile data that only the operator's own profile file may carry.

    ``where.url`` (whom the measuring process contacts, with a token),
    ``where.token_env`` (which of its environment variables it sends there),
    ``where.cert_sha256`` (which certificate it trusts there) and
    ``reference_model`` (which file it reads and uploads).
    """
    where = data.get("where")
    where = where if isinstance(where, Mapping) else {}
    return [name for name, present in (("where.url", "url" in where), ("where.token_env", "token_env" in where),
                                       ("where.cert_sha256", "cert_sha256" in where),
                                       ("reference_model", data.get("reference_model") is not None)) if present]


def resolve_profile(data: Mapping[str, Any], agents: Mapping[str, AgentEndpoint] | None
                    ) -> tuple[Any, str | None]:
    """A measurable profile and the token to measure with, from stored profile data.

    ``where: {kind: agent, name: NAME}`` is replaced by the declared agent's
    URL.  ``agents`` None means the profile is the operator's own (a file
    given to ``hwsearch search``): it is used as it is, URL and all, with no
    token handed over.  A table of agents (the service's, maybe empty) means
    the profile came from a client or a stored job row: it may reach only
    those agents, and one carrying :func:`operator_only_fields` is refused
    (:class:`UndeclaredReach`).  A row an earlier version stored as its client
    sent it made the service send its own token to the row's URL, and upload
    a file from outside the data roots there.
    """
    from devices.profile import DeviceProfile

    named = operator_only_fields(data) if agents is not None else []
    if named:
        raise UndeclaredReach(f"device {data.get('name')!r} names {', '.join(named)}, which only the operator's "
                              "own profile files may; a service's devices name an agent it declares (where.name)")
    where = dict(data.get("where") or {})
    if "name" not in where:
        return DeviceProfile.from_dict(dict(data)), None
    name = where.pop("name")
    agent = (agents or {}).get(name) if isinstance(name, str) else None
    if agent is None:
        raise UnknownAgent(f"agent {name!r} is not declared by the operator; "
                           f"declared: {sorted(agents or {})}")
    pin = {} if agent.cert_sha256 is None else {"cert_sha256": agent.cert_sha256}
    resolved = {**data, "where": {**where, "kind": "agent", "url": agent.url, **pin}}
    return DeviceProfile.from_dict(resolved), agent.token
