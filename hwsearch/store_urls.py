"""Stores named by URL: another backend, from an installed package, for the CLI and ``hwsearch serve``.

SQLite is the embedded default, and any :class:`~hwsearch.store.Store` works
in the library and in :func:`~hwsearch.api.app.create_app`.  The CLI and the
service take a store on their command line, though, so a backend kept in a
package of its own names a factory under the entry point group
``hwsearch.stores``, keyed by its URL scheme::

    [project.entry-points."hwsearch.stores"]
    postgresql = "my_package.store:open_postgres"   # (url: str) -> Store

and ``--store postgresql://host/db`` (or ``HWSEARCH_STORE``) opens it.

A URL may carry credentials anywhere: a password in its user part, a token
as its user, ``?password=`` in its query, ``;password=`` as a parameter
(SQL Server's and JDBC's form), a password whose ``/`` or ``#`` leaves it
unparsable.  So no message or output here quotes a URL that has a user
part, a query, a fragment or a ``name=value`` parameter: it is shown as
``scheme://...``, and a plug-in's error about it by its type only (probe Y4
found each of these forms printed by the first version, which hid only a
parsed password; Y17 the ``;`` parameters, which passed as secret-free).

The store a plug-in opens is handed out as a :class:`ScreenedStore`: a
database driver's error quoting its connection string can come from any
call, long after the store opened, and a job's failure line reaches every
client of the service.  ``report`` screened such errors itself, and
``profile``, ``train`` and the service did not.
"""

from __future__ import annotations

import abc
import base64
import importlib.metadata
import json
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from hwsearch.log_screen import keep_out_of_logs
from hwsearch.store import Store, StoreError, StoreFailed

__all__ = ["ENTRY_POINT_GROUP", "ScreenedStore", "credential_forms", "is_store_url", "mistyped_url_problem",
           "open_store_url", "quotes_a_secret_of", "secret_forms", "shown_store", "store_schemes"]

ENTRY_POINT_GROUP = "hwsearch.stores"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: A scheme and a colon, perhaps after spaces: a URL mistyped (``pg:/u:pw@h/db``) that must not become a file name.
_SCHEME_LIKE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:")
#: Where a URL can carry a secret: a user part, a query, a fragment (or a password holding ``/``, ``?`` or ``#``),
#: a ``;`` parameter or any other ``name=value``; looked for in the URL as written and percent-decoded.
_MAY_HOLD_SECRETS = re.compile(r"[@?#;=]")
#: A ``name=value`` parameter of a URL without its scheme, wherever it stands: in the query (after ``?`` or ``&``),
#: after ``;`` (SQL Server, JDBC), ``:`` (DB2) or ``/`` or ``,``; spaces around the ``=`` allowed, and a value in
#: braces (ODBC's ``PWD={a;b}``) read whole.  A value runs on through a ``,`` that does not begin another
#: ``name=`` (a password ``ab,cdef`` was cut to ``ab``, too short to screen: Y19); a brace is looked for within
#: 256 characters (scanning to the end from every ``{`` took quadratic time: Y19).
_PARAMETER = re.compile(r"(?:^|[;&?:/,])\s*([^;&?#=/:,{}\s]+)\s*=\s*(\{[^}]{0,256}\}|(?:[^;&#,]|,(?![^;&#,=]*=))*)")


def is_store_url(text: str) -> bool:
    """Whether ``text`` is ``scheme://...`` rather than a SQLite file's path."""
    return _SCHEME.match(text) is not None


def mistyped_url_problem(text: str) -> str | None:
    """What is wrong with ``text`` if, not a store URL, it begins as one does (``scheme:``); else ``None``.

    Such a value is a mistyped URL, not a file to make: ``urlfile:/me:pw@host/x.db``
    (one ``/`` short) made folders named after it, password and all, as the
    first CLI did with every URL.  The answer never quotes it.
    """
    if is_store_url(text) or _SCHEME_LIKE.match(text) is None:
        return None
    return ("this begins as a store URL does (scheme:) but is not one (scheme://...); to name a SQLite file "
            "whose name begins so, write ./ before it")


def shown_store(text: str) -> str:
    """``text`` as a message may show it: a path as it is; a URL as it is only where it cannot hold a secret."""
    if not is_store_url(text) or not _may_hold_secrets(text):
        return text
    return f"{_SCHEME.match(text).group(1)}://..."  # type: ignore[union-attr]  (is_store_url)


def quotes_a_secret_of(message: str, url: str) -> bool:
    """Whether ``message`` (a plug-in's error, say) quotes ``url`` or any part of it that may be secret.

    Read from the text, not parsed: the user part (and each name and password
    in it), the query (and each of its values) and the fragment, each as
    written and percent-decoded (as a driver quotes what it was given).  A
    plug-in that quoted only the password, or one query value, would
    otherwise pass.
    """
    return any(form in message for form in secret_forms(url))


def secret_forms(url: str) -> set[str]:
    """Every part of ``url`` that may be secret, in every form a message may quote it (:func:`quotes_a_secret_of`):
    the URL, its user part (each name and password in it), its query (each value), each ``;`` parameter's value
    and its fragment."""
    rest = url.split("://", 1)[-1]
    parts = [url, rest]
    for user_part in _user_parts(rest):
        parts += [user_part, *user_part.split(":")]
    if "?" in rest:
        query = _query(rest)
        parts += [query, *(pair.split("=", 1)[-1] for pair in query.split("&"))]
    parts += _parameter_values(rest, lambda name: True)
    if "#" in rest:
        parts.append(rest.split("#", 1)[1])
    return _as_written(parts, rest)


def credential_forms(url: str) -> set[str]:
    """The forms of ``url`` and of its credentials alone, for the log screen (:mod:`hwsearch.log_screen`).

    An error that quotes any part of a URL loses only its message; a log
    record screened for every part lost every word that was also a user
    name or a query value (``root``, ``require``, ``hwsearch``) in every
    later line of the process (Y7).  So: the password, or the user part
    when it is one name (a token as the user); values of query or ``;``
    parameters whose name says credential (``password=``, ``token=``,
    ``sslkey=``); the fragment.
    """
    rest = url.split("://", 1)[-1]
    parts = [url, rest]
    for user_part in _user_parts(rest):
        parts += [user_part, user_part.split(":", 1)[-1]]
    parts += _parameter_values(rest, _is_credential_name)
    if "#" in rest:
        parts.append(rest.split("#", 1)[1])
    return _as_written(parts, rest)


#: A query parameter's name that says its value is a credential, and names that match it but say no such thing.
_CREDENTIAL_NAME = re.compile(r"pass|pwd|secret|token|key|auth|cred|sig", re.IGNORECASE)
_NOT_CREDENTIALS = {"authsource", "authmechanism"}  # MongoDB's: a database's name, a method's name (Y8)


def _may_hold_secrets(url: str) -> bool:
    """Whether ``url``, as written or percent-decoded (``%3Bpassword%3D``: Y18), may carry a secret anywhere.

    Any ``;`` or ``=`` counts, whatever the parameter's name: ``mystore://host/db=1`` is hidden with the
    rest, since a driver's ``;p=...`` says nothing of being a password.
    """
    return any(_MAY_HOLD_SECRETS.search(form) is not None for form in (url, unquote(url)))


def _parameter_values(rest: str, wanted: Callable[[str], bool]) -> list[str]:
    """The values of ``rest``'s ``name=value`` parameters (:data:`_PARAMETER`) whose name is ``wanted``, read as
    written and percent-decoded; a braced value also without its braces, a value also up to its first ``/``."""
    values = []
    for form in {rest, unquote(rest)}:
        for name, value in _PARAMETER.findall(form):
            if wanted(unquote(name)):
                value = value.strip()
                values += [value, value.strip("{}"), value.split("/", 1)[0]]
    return values


def _is_credential_name(name: str) -> bool:
    return _CREDENTIAL_NAME.search(name) is not None and name.lower() not in _NOT_CREDENTIALS


def _user_parts(rest: str) -> set[str]:
    """The user part of a URL without its scheme, as read both ways it may be meant.

    Up to the last ``@`` of the whole: a password holding ``/``, ``?`` or
    ``#`` leaves the URL unparsable, and is still found.  Up to the last
    ``@`` before the path: an ``@`` in the query or fragment
    (``?notify=ops@example.com``) made the first reading's password run
    into the query, and the password alone went unscreened (Y8).
    """
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return {text.rsplit("@", 1)[0] for text in (rest, authority) if "@" in text}


def _query(rest: str) -> str:
    """The query of a URL without its scheme, read from the text."""
    return rest.split("?", 1)[1].split("#", 1)[0]


def _as_written(parts: list[str], rest: str) -> set[str]:
    """``parts`` in every form a message may quote them, those shorter than :data:`_SHORTEST_SECRET` left out.

    As written, percent-decoded (a driver quotes what it decoded), encoded
    again as a driver encodes (``%2F`` for a written ``%2f``, ``%C3%A9``
    for a written ``é``: Y7), inside a JSON string, as a bytes repr shows them
    (``b'S3cr\\xc3\\xa9t'``), and the user part as HTTP Basic authentication carries it.
    """
    decoded = {form for part in parts for form in (part, unquote(part), unquote_plus(part))}
    forms = decoded | {encoded for form in decoded for encoded in (quote(form, safe=""), quote_plus(form, safe=""))}
    forms |= {repr(form.encode())[2:-1] for form in forms}
    forms |= {json.dumps(form)[1:-1] for form in forms}  # inside a JSON string: \u00e9, \" (Y8)
    forms |= {base64.b64encode(unquote(user_part).encode()).decode() for user_part in _user_parts(rest)}
    return {form for form in forms if len(form) >= _SHORTEST_SECRET}


#: Parts of a URL shorter than this are words of any message (a user ``me`` is in "time"), not secrets to look for.
_SHORTEST_SECRET = 4


def store_schemes() -> list[str]:
    """The URL schemes that installed packages open, sorted."""
    return sorted({entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def open_store_url(url: str) -> Store:
    """The store an installed plug-in opens for ``url``, or :class:`~hwsearch.store.StoreError` in one line.

    The plug-in's factory is called with the whole URL.  What it raises is
    told by its type, and by its message only where the URL cannot hold a
    secret (the message may quote the URL, decoded or not); a result that
    is no store is refused.
    """
    match = _SCHEME.match(url)
    if match is None:
        raise StoreError("a store URL reads scheme://...")
    scheme = match.group(1)
    entries = [e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == scheme]
    if not entries:
        installed = ", ".join(store_schemes()) or "none"
        raise StoreError(f"no installed package opens {scheme}:// stores (store plug-ins installed: {installed}); "
                         "give a SQLite file's path, or install the package whose hwsearch.stores entry point "
                         f"is named {scheme!r}")
    entry = entries[0]
    keep_out_of_logs(credential_forms(url))  # the plug-in may log or warn with its URL from now on
    try:
        store = entry.load()(url)
    except Exception as error:  # the plug-in's own failure, of any kind: one line, no secret
        said = (f": {str(error).replace(url, shown_store(url))}" if not _may_hold_secrets(url)
                else " (its message is not shown: the URL may carry credentials)")
        raise StoreError(f"the {scheme}:// store plug-in ({entry.value}) could not open the store: "
                         f"{type(error).__name__}{said}") from None
    if not isinstance(store, Store):
        raise StoreError(f"the {scheme}:// store plug-in ({entry.value}) returned a {type(store).__name__}, "
                         "not a hwsearch.store.Store")
    return ScreenedStore(store, url)


S = TypeVar("S", bound=type)


def _each_store_method_screened(cls: S) -> S:
    """Give ``cls`` every public method of :class:`~hwsearch.store.Store`, each calling the plug-in's own."""
    for name, value in vars(Store).items():
        if callable(value) and not name.startswith("_"):
            setattr(cls, name, _screened_method(name))
    abc.update_abstractmethods(cls)
    return cls


#: Errors the store contract names (``KeyError`` for an unknown job, ``ValueError`` for a value it refuses), or a
#: caller's mistake: they pass through the screen as the plug-in raised them, or, quoting a secret, as their kind.
_CONTRACT_ERRORS = (KeyError, ValueError, TypeError)


def _screened_method(name: str) -> Callable[..., Any]:
    def method(self: ScreenedStore, *args: Any, **kwargs: Any) -> Any:
        with _screened(self._url, name):
            return getattr(self.plugin_store, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(Store, name).__doc__
    return method


@contextmanager
def _screened(url: str, call: str) -> Iterator[None]:
    """Turn a plug-in's failure in ``call`` into a :class:`~hwsearch.store.StoreFailed` (or its contract kind)
    that never quotes ``url``'s secrets; a stop (Ctrl-C, ``sys.exit``) passes as it is."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # asyncio's CancelledError is no Exception, and quoted the URL too (Y6)
        secret = _quotes_a_secret(error, url)
        kind = next((kind for kind in _CONTRACT_ERRORS if isinstance(error, kind)), StoreFailed)
        if kind is not StoreFailed and not secret:
            raise
        said = "its message is not shown: it quotes the store URL's credentials" if secret else str(error)
        raise kind(f"the {url.split('://', 1)[0]}:// store failed in {call}: {type(error).__name__}: {said}"
                   ) from (None if secret else error)


def _quotes_a_secret(error: BaseException, url: str) -> bool:
    """Whether ``error``, an error it was raised from or during, or one it groups, quotes a secret of ``url``.

    Read as ``str`` and ``repr`` (a custom ``__str__`` may hide what ``args``
    hold), with their notes.  An ``ExceptionGroup``'s own message named none
    of its members' secrets, which its traceback then printed (Y6).
    """
    seen: set[int] = set()
    waiting: list[BaseException] = [error]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        said = [str(current), repr(current), *map(str, getattr(current, "__notes__", ()))]
        if any(quotes_a_secret_of(text, url) for text in said):
            return True
        waiting += [linked for linked in (current.__cause__, current.__context__) if linked is not None]
        waiting += getattr(current, "exceptions", ())
    return False


def _unpickled(plugin_store: bytes, url: str) -> ScreenedStore:
    """A :class:`ScreenedStore` copied into another process: the plug-in's store reopens (its own ``__reduce__``)
    behind the screen, since reopening may fail quoting the URL (a Ray worker unpickles the store so)."""
    keep_out_of_logs(credential_forms(url))
    with _screened(url, "reopening a copy"):
        return ScreenedStore(pickle.loads(plugin_store), url)


@_each_store_method_screened
class ScreenedStore(Store):
    """A plug-in's store whose failures are :class:`~hwsearch.store.StoreFailed`, never quoting its URL's secrets.

    A driver's error (a lost connection, say) becomes a ``StoreFailed``
    naming the call, which the service answers with 503; its message is
    shown only when it quotes nothing secret.  The errors the store
    contract names pass as the plug-in raised them (one quoting a secret,
    as a new error of its kind without the message).  A pickled copy (for
    Ray's workers) reopens the plug-in's store behind the same screen.
    """

    def __init__(self, plugin_store: Store, url: str) -> None:
        self.plugin_store = plugin_store
        self._url = url

    @property  # type: ignore[misc]  (a class attribute of Store, a property here: the plug-in's own answer)
    def shared_across_processes(self) -> bool:
        return self.plugin_store.shared_across_processes

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickled, (pickle.dumps(self.plugin_store), self._url)

    def __repr__(self) -> str:
        return f"ScreenedStore({type(self.plugin_store).__name__}, {shown_store(self._url)})"
