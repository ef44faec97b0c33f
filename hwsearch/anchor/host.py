"""The anchor sessions a host keeps per device and network, whatever store each run used."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from devices.calibration import kept_file_names, read_kept_file, update_kept_file
from hwsearch.anchor.run import Anchor
from hwsearch.anchor.state import finite_or_none
from hwsearch.anchor.stored import RECENT_SESSIONS, complete_sessions, kept_rows

#: Sessions a host keeps per network and device, over all its anchors (the newest).
HOST_SESSIONS = 3 * RECENT_SESSIONS


class FileLabel(NamedTuple):
    """One measured file as the host keeps it: its subnet's key and MACs, and the file's precision."""

    key: str
    macs: int
    precision: str


class HostRecord:
    """The anchor sessions this host measured of one network on one device, whatever store the runs used.

    One JSON file per (device key, network) beside the device's ruler
    (:func:`devices.calibration.update_kept_file`, so runs in several
    processes add to it safely), holding the :data:`HOST_SESSIONS` newest
    sessions.  Each session names its anchor subnets, their files'
    SHA-256 and ratios (and their other precisions' files' ratios,
    ``ratios_at``), and keeps every subnet it measured (``subnets``:
    key to uncorrected ratio and MACs, at the anchor's precision;
    ``subnets_at``: the same per other precision); a retry is marked,
    judged by the norm but never part of it.  The file also keeps each
    anchor subnet's arch, so a run that has never seen the subnets can
    export them.
    """

    PREFIX = "anchor-"

    def __init__(self, device_key: str, network_id: str) -> None:
        self.device_key, self.network_id = device_key, network_id
        identity = hashlib.sha256(f"{device_key}\0{network_id}".encode()).hexdigest()[:24]
        self.name = f"{self.PREFIX}{identity}.json"

    def read(self) -> tuple[dict[str, dict[str, Any]], dict[str, Mapping[str, Any]]]:
        """The kept sessions as rows :func:`history` reads (keyed by session id), and the anchor subnets' archs."""
        kept = read_kept_file(self.name)
        return kept_rows(kept), kept.get("archs", {})

    def remember(self, anchor: Anchor, precision: str, labels: Mapping[Path, FileLabel] | None = None) -> int:
        """Keep the anchor's sessions of this run (not earlier runs'); returns how many.

        ``labels`` name the run's files: each one's subnet key, MACs and
        precision, so the session's ``subnets`` (at ``precision``, the
        anchor's) and ``subnets_at`` (at the others) can be kept.
        """
        new = {session_id: {"keys": list(anchor.keys), "precision": precision, "ended": observed_at,
                            "tolerance": anchor.tolerance, "retry": session_id in anchor.retries,
                            **anchor.stored_ratios(session_id),
                            "reference_ms": finite_or_none(anchor.references.get(session_id, math.nan)),
                            **_session_subnets(anchor, session_id, labels or {}, precision)}
               for session_id, observed_at in anchor.observed_at.items()}
        if not new or len(anchor.archs) != len(anchor.keys) or len(anchor.shas) != len(anchor.keys):
            return 0
        for entry in new.values():
            entry["shas"] = list(anchor.shas)

        def add(data: dict[str, Any]) -> None:
            data.update(device_key=self.device_key, network_id=self.network_id)
            sessions = {**complete_sessions(data), **new}  # a damaged file's incomplete sessions are dropped
            newest = sorted(sessions, key=lambda s: sessions[s]["ended"])[-HOST_SESSIONS:]
            data["sessions"] = {s: sessions[s] for s in newest}
            used = {key for s in newest for key in sessions[s]["keys"]}
            kept_archs = data.get("archs")
            archs = {**(kept_archs if isinstance(kept_archs, dict) else {}), **dict(zip(anchor.keys, anchor.archs))}
            data["archs"] = {key: arch for key, arch in archs.items() if key in used}

        update_kept_file(self.name, add)
        return len(new)


def _session_subnets(anchor: Anchor, session_id: str, labels: Mapping[Path, FileLabel], precision: str
                     ) -> dict[str, Any]:
    """Each file the session measured whose subnet is known: ``subnets`` at ``precision``, ``subnets_at`` per other.

    Both map a subnet's key to ``[ratio, macs]``; the anchor's own subnets
    are among them at every precision its files were measured at.
    """
    subnets: dict[str, list[float | None]] = {}
    subnets_at: dict[str, dict[str, list[float | None]]] = {}

    def kept_at(at: str) -> dict[str, list[float | None]]:
        return subnets if at == precision else subnets_at.setdefault(at, {})

    for path, ratio in anchor.members.get(session_id, {}).items():
        label = labels.get(path)
        if label is not None:
            kept_at(label.precision)[label.key] = [finite_or_none(ratio), label.macs]
    if len(anchor.macs) == len(anchor.keys):
        for at, ratios in [(precision, anchor.ratios[session_id]), *anchor.ratios_at.get(session_id, {}).items()]:
            kept_at(at).update({key: [finite_or_none(ratio), macs]
                                for key, ratio, macs in zip(anchor.keys, ratios, anchor.macs)})
    return {"subnets": subnets, "subnets_at": subnets_at}


def host_records(device_key: str) -> Iterator[dict[str, Any]]:
    """The host's kept anchor records of the device, at every precision (keys differ by ``@precision``)."""
    for name in kept_file_names(HostRecord.PREFIX):
        data = read_kept_file(name)
        if str(data.get("device_key", "")).partition("@")[0] == device_key.partition("@")[0] and "network_id" in data:
            yield data
