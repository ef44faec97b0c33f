"""Where an address reaches: the warnings about tokens sent in clear need to know.

Standard library only, shared by the agent (its own address) and
``hwsearch.agents`` (the agents an operator declares).
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


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
