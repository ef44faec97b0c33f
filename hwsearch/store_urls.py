"""Stores named by URL: another backend, from an installed package, for the CLI and ``hwsearch serve``.

SQLite is the embedded default, and any :class:`~hwsearch.store.Store` works
in the library and in :func:`~hwsearch.api.app.create_app`.  The CLI and the
service take a store on their command line, though, so a backend kept in a
package of its own names a factory under the entry point group
``hwsearch.stores``, keyed by its URL scheme::

    [project.entry-points."hwsearch.stores"]
    postgresql = "my_package.store:open_postgres"   # (url: str) -> Store

and ``--store postgresql://host/db`` (or ``HWSEARCH_STORE``) opens it.  A
URL may carry credentials, so no message here quotes more of it than its
scheme.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwsearch.store import Store

__all__ = ["ENTRY_POINT_GROUP", "is_store_url", "open_store_url", "shown_store", "store_schemes"]

ENTRY_POINT_GROUP = "hwsearch.stores"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_store_url(text: str) -> bool:
    """Whether ``text`` is ``scheme://...`` rather than a SQLite file's path."""
    return _SCHEME.match(text) is not None


def shown_store(text: str) -> str:
    """``text`` as a message may show it: a path as it is, a URL with its password hidden."""
    return _without_secrets(text, None) if is_store_url(text) else text


def store_schemes() -> list[str]:
    """The URL schemes that installed packages open, sorted."""
    return sorted({entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def open_store_url(url: str) -> Store:
    """The store an installed plug-in opens for ``url``, or :class:`~hwsearch.store.StoreError` in one line.

    The plug-in's factory is called with the whole URL; whatever it raises,
    or a result that is no store, is one line that quotes neither the URL
    nor its password.
    """
    from hwsearch.store import Store, StoreError

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
    try:
        store = entry.load()(url)
    except Exception as error:  # the plug-in's own failure, of any kind: one line, its credentials hidden
        raise StoreError(f"the {scheme}:// store plug-in ({entry.value}) could not open the store: "
                         f"{type(error).__name__}: {_without_secrets(str(error), url)}") from None
    if not isinstance(store, Store):
        raise StoreError(f"the {scheme}:// store plug-in ({entry.value}) returned a {type(store).__name__}, "
                         "not a hwsearch.store.Store")
    return store


def _without_secrets(text: str, url: str | None) -> str:
    """``text`` with the password of ``url`` (default: ``text`` itself) hidden wherever it appears."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(text if url is None else url).password
    except ValueError:  # a malformed port: nothing to find
        password = None
    return text.replace(password, "***") if password else text
