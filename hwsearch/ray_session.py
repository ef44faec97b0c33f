"""One Ray session per process, started so that it lives as long as the process.

Every part of hwsearch that uses Ray (accuracy evaluation, per-device
searches, service jobs) calls :func:`init_ray` first: it joins a cluster by
address or starts a local one, and does nothing when a session exists.

A Ray worker's start-up is heavy compute: importing the libraries hwsearch's
tasks use (torch, onnxruntime, xgboost, pymoo) takes a core for several
seconds.  A worker started while a latency session measures on its host
would disturb it, so every worker of the session runs :func:`prepare_worker`
before it takes a task (Ray's ``worker_process_setup_hook``): it does those
imports inside one compute unit of the host lock (:mod:`devices.hostlock`),
waiting while a session measures.  What runs before the hook (the
interpreter and Ray's own start-up) is not covered.

A local Ray listens on every interface of the host (GCS, raylet, workers and
its dashboard agent, on port 52365), and without authentication anyone who
can reach the host can run code through it: measured here with
``RAY_AUTH_MODE=disabled``, a POST to the dashboard agent's job API from the
network ran a shell command as the service's user, and a second driver
joined the GCS and ran tasks.  So a local session always uses Ray's token
authentication, with a token this process makes and keeps in its
environment (where Ray's daemons and workers read it), never in a file:
the same POST gets 401 and the driver cannot join.  A cluster joined by
address keeps whatever authentication its operator set.

A local session also keeps its files (sockets, logs, session state) in a
folder only this user can enter (:func:`_private_ray_folder`), not in Ray's
default ``/tmp/ray``, which Ray makes world-writable without the sticky bit
along with every session folder in it.

Joining a cluster by address is bounded: :func:`check_ray_address` first
checks that the address's port answers as a gRPC server (Ray's GCS and Ray
Client both are) within :data:`RAY_CONNECT_TIMEOUT_S`.  ``ray.init`` has no
time limit of its own: measured with Ray 2.60 and ``127.0.0.1:1`` (nothing
listening), it logged "Failed to connect to GCS ... Timed out" every ~35 s and
never returned, which froze a service's job queue and left a ``hwsearch
search``'s job ``queued``; a port that accepts connections and never speaks
(a wrong service, a half-dead host) held it just the same.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from hwsearch.tempdirs import owned_temp_dir

log = logging.getLogger(__name__)

__all__ = ["CLUSTER_CHECK_TIMEOUT_S", "ClusterUnfit", "RAY_CONNECT_TIMEOUT_S", "RayUnreachable", "WorkerStart",
           "check_ray_address", "code_digest", "init_ray", "kill_leftovers", "no_abort_on_sigterm", "prepare_worker",
           "private_temp_dir", "worker_prepared"]

#: Seconds a cluster's address has to accept a TCP connection before a join gives up (:func:`check_ray_address`).
RAY_CONNECT_TIMEOUT_S = 5.0
_RAY_START_LOCK = threading.Lock()  # two threads starting Ray at once would start two sessions
#: The heavy libraries hwsearch's tasks import (accuracy evaluation, exports, predictors, the
#: search), imported by every worker inside its start-up compute unit: 2.95 s measured here.
_WORKER_MODULES = ("torch", "onnx", "onnxruntime", "xgboost", "sklearn.base", "pymoo.algorithms.moo.nsga2")


class RayUnreachable(ConnectionError):
    """Nothing answers at a Ray cluster's address: the job cannot run (an ``OSError``, so the CLI says it in a line)."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"cannot reach Ray at {address}: {why}")
        self.address = address


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a cluster address whose port does not answer as a gRPC server within ``timeout_s``.

    A cheap, bounded test before ``ray.init``, which waits for a GCS without
    limit (see the module docstring).  Ray's GCS and its Ray Client server
    speak gRPC, that is HTTP/2, whose server must open with a SETTINGS frame
    once a client has sent its preface (RFC 9113, section 3.4): waiting for
    that frame catches a wrong port, a cluster that is down, a host that
    drops packets and a port held by something that is not Ray or never
    speaks.  Under ``RAY_USE_TLS`` the server expects TLS first, so only the
    TCP connection is checked.  ``auto`` and ``local`` name no port and are
    left to Ray.
    """
    if address in ("auto", "local"):
        return
    host, port = _host_and_port(address)
    deadline = time.monotonic() + timeout_s
    plain = os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            if plain:
                _expect_http2_settings(connection, deadline)
    except socket.timeout:
        raise RayUnreachable(address, f"no answer on port {port} within {timeout_s:g} s") from None
    except OSError as error:
        raise RayUnreachable(address, error.strerror or str(error)) from None
    if plain and not address.startswith("ray://"):
        _expect_ray_gcs(address, port, deadline)


#: The first call Ray's own clients make to a GCS: any gRPC server that is not one answers UNIMPLEMENTED.
_GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


def _expect_ray_gcs(address: str, port: int, deadline: float) -> None:
    """Ask the gRPC server at ``address`` for its Ray cluster id by ``deadline``; refuse one that is not a GCS.

    Another gRPC (or HTTP/2) server passes the SETTINGS check, and
    ``ray.init`` then logged about 20 s of Ray's C++ errors before it gave up
    (probe Z10).  An empty request is a valid one (every field at its
    default).  A GCS that wants a token answers UNAUTHENTICATED: that is Ray,
    and Ray's own join reports the token.
    """
    import grpc

    # As Ray's own channels: a proxy in the environment (http_proxy, grpc_proxy) is not the way to a GCS.
    with grpc.insecure_channel(address, options=(("grpc.enable_http_proxy", 0),)) as channel:
        probe = channel.unary_unary(_GCS_PROBE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            probe(b"", timeout=max(deadline - time.monotonic(), 0.001))
        except grpc.RpcError as error:
            code = error.code() if callable(getattr(error, "code", None)) else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RayUnreachable(address, f"no answer from Ray's GCS on port {port} in time") from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise RayUnreachable(address, f"no gRPC connection to port {port} (UNAVAILABLE)") from None
            if code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise RayUnreachable(address, f"port {port} speaks gRPC, but not as Ray's GCS "
                                              f"({code.name if code else 'no status'})") from None


#: An HTTP/2 client's opening (RFC 9113, section 3.4): the fixed preface, then an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_FRAME_HEADER_BYTES = 9
_SETTINGS_FRAME = 4


def _expect_http2_settings(connection: socket.socket, deadline: float) -> None:
    """Send an HTTP/2 preface and read the server's first frame header by ``deadline``; it must be SETTINGS.

    Raises ``socket.timeout`` if the server stays silent and ``OSError`` if it
    answers with anything else (an HTTP/1 reply, a closed connection).
    """
    connection.sendall(_HTTP2_PREFACE)
    header = b""
    while len(header) < _FRAME_HEADER_BYTES:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = connection.recv(_FRAME_HEADER_BYTES - len(header))
        if not chunk:
            raise OSError("the port closed the connection without answering as Ray's GCS (gRPC)")
        header += chunk
    if header[3] != _SETTINGS_FRAME:
        raise OSError("the port answers, but not as Ray's GCS (gRPC)")


def no_abort_on_sigterm() -> None:
    """Keep Ray's failure-signal handler from aborting this process after a SIGTERM; call before Ray starts.

    It aborts a few seconds after the signal, whatever the exit under way is
    doing: a service's graceful stop (end the jobs' tasks and Ray, remove
    temp files) died half-way, and a ``hwsearch search`` marking its job
    interrupted exited -6 in 2 of 8 stops.
    """
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")


def _host_and_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``[ray://]HOST:PORT`` (``[::1]:6379`` too); :class:`RayUnreachable` if it has none."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise RayUnreachable(address, "give an IPv6 host in brackets, as [HOST]:PORT")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnreachable(address, "give it as HOST:PORT (the head node's GCS port, 6379 by default)")
    return host, int(port)


class WorkerStart(NamedTuple):
    """A worker's start-up: when Ray called the hook, when its imports ran (wall time), and the CPU before."""

    called: float
    started: float
    ended: float
    cpu_before_s: float  # the interpreter's and Ray's own start-up: not covered by the unit


_PREPARED: list[WorkerStart] = []


def prepare_worker() -> None:
    """Ray's setup hook for our workers: import what tasks need inside one compute unit of the host lock, and
    note whether this worker runs the driver's hwsearch code (:func:`refuse_foreign_code`)."""
    import importlib
    import time

    from devices.hostlock import compute_unit

    called, cpu_before = time.time(), time.process_time()
    with compute_unit():
        started = time.time()
        for module in _WORKER_MODULES:
            importlib.import_module(module)
        _PREPARED.append(WorkerStart(called, started, time.time(), cpu_before))
    drivers = os.environ.get(DRIVER_CODE_ENV)
    if drivers:
        mine = code_digest()
        if drivers != mine["digest"]:
            _FOREIGN_CODE.append(mine["hwsearch"])


#: The driver's :func:`code_digest`, in a joined cluster's workers' environment.
DRIVER_CODE_ENV = "HWSEARCH_DRIVER_CODE"
#: Where this worker's hwsearch lies, when its sources are not the driver's.
_FOREIGN_CODE: list[str] = []


class ForeignCode(RuntimeError):
    """A task reached a Ray worker whose hwsearch sources are not the driver's (a node that joined late)."""


def refuse_foreign_code() -> None:
    """:class:`ForeignCode` in a worker that runs other hwsearch code than its driver; called first by every task.

    :func:`_check_cluster_code` checks the nodes alive when the driver joins;
    a node started later from another installation ran the job's tasks with
    its own code (probe Z10's item, left open by stops 61 and 62).  A task is
    refused there before it reads or writes anything.
    """
    if _FOREIGN_CODE:
        import socket

        raise ForeignCode(f"this Ray worker (on {socket.gethostname()}) runs hwsearch from {_FOREIGN_CODE[-1]}, "
                          "whose sources differ from the driver's; install the same hwsearch on every node of "
                          "the cluster")


def worker_prepared() -> WorkerStart | None:
    """This worker's start-up unit, or ``None`` if it was not prepared (not started by :func:`init_ray`)."""
    return _PREPARED[-1] if _PREPARED else None


class ClusterUnfit(RayUnreachable):
    """A cluster answered, but its workers cannot run this hwsearch (:func:`_check_cluster_code`)."""

    def __init__(self, address: str, why: str) -> None:
        ConnectionError.__init__(self, f"the Ray cluster at {address} cannot run this job: {why}")
        self.address = address


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` or start a local Ray of this process's own, once per process; an existing session is kept.

    The session's workers run :func:`prepare_worker` when they start (see the
    module docstring) and find the host lock and rulers where this process
    does (:func:`_host_folders`); a session someone else started keeps its
    other settings.

    Ray starts its local daemons (GCS, raylet) with ``PR_SET_PDEATHSIG``, which
    kills them when the *thread* that started them exits.  Jobs run in
    threads (the CLI's and demo's job threads, the service's workers), so a session
    started from such a thread would die with it and take the process down a
    minute later.  Off the main thread, Ray is therefore started from a keeper
    thread that lives as long as the process.

    An ``address`` whose port does not accept a connection within
    :data:`RAY_CONNECT_TIMEOUT_S` raises :class:`RayUnreachable` instead of
    waiting in ``ray.init`` for ever (:func:`check_ray_address`).
    """
    import ray

    with _RAY_START_LOCK:
        if ray.is_initialized():
            return
        if address:
            check_ray_address(address)
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the cluster's operator says otherwise
            temp_dir = None  # the cluster's own
        else:
            _require_a_token_of_our_own()
            temp_dir = _private_ray_folder()
        if threading.current_thread() is threading.main_thread():
            with _sigterm_handler_kept():
                _start_ray(address, num_cpus, temp_dir)
        else:
            _start_ray_in_keeper_thread(address, num_cpus, temp_dir)
        if address:
            _check_cluster_code(address)


#: How long a joined cluster has to run one small task that reports its hwsearch code (:func:`_check_cluster_code`).
CLUSTER_CHECK_TIMEOUT_S = 120.0
#: The packages a job's workers run: their sources must be this driver's.
_CODE_PACKAGES = ("hwsearch", "devices", "predictors")


def code_digest() -> dict[str, str]:
    """A digest of this process's hwsearch, devices and predictors sources, and where hwsearch is imported from."""
    import importlib

    digest = hashlib.sha256()
    for name in _CODE_PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent  # type: ignore[arg-type]  (a package)
        for source in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{source.relative_to(root).as_posix()}\0".encode())
            digest.update(source.read_bytes())
    return {"digest": digest.hexdigest(), "hwsearch": str(Path(__file__).resolve().parent)}


def _check_cluster_code(address: str) -> None:
    """Refuse a joined cluster any of whose nodes' workers cannot import hwsearch, or import other code than ours.

    A cluster's workers import the hwsearch installed where each node was
    started, not this driver's: probe Z10's driver ran one tree and the
    cluster's workers another (accuracy, refinement and the workers' setup
    on one, profiling on the other) without a word, and a cluster that could
    not import hwsearch failed the job after its profiling with a 77-line
    ``WorkerCrashedError``.  One small task per live node (no CPU asked,
    pinned there) compares its digest of the sources with this process's.
    A node that joins later is refused task by task (:func:`refuse_foreign_code`).
    The session is shut down unless the check passed, so a later call can
    join again: a Ctrl-C that cut the check short left Ray up, and the next
    call took the cluster unchecked (Y11).
    """
    import ray

    checked = False
    try:
        mine = code_digest()
        try:
            found = _digests_of_live_nodes()
        except Exception as error:
            raise _unchecked(address, error) from None
        for node, theirs in found:
            if theirs["digest"] != mine["digest"]:
                raise ClusterUnfit(address, f"its workers run hwsearch from {theirs['hwsearch']} (node {node}), "
                                            f"whose sources differ from this one's ({mine['hwsearch']}); install "
                                            "the same hwsearch on every node, or start the cluster from this "
                                            "installation")
        checked = True
    finally:
        if not checked:
            ray.shutdown()


def _unchecked(address: str, error: Exception) -> ClusterUnfit:
    """The refusal of a cluster whose code check failed with ``error``."""
    if isinstance(error, (_NoNodeAnswered, _NodeTooSlow)):
        return ClusterUnfit(address, str(error))
    # A worker could not import or run hwsearch, or never started: Ray's own types.
    where, cause = ((f" (node {error.node})", error.cause) if isinstance(error, _NodeCannotRun)
                    else ("", type(error).__name__))
    return ClusterUnfit(address, f"its workers{where} cannot run hwsearch ({cause}); install "
                                 "this hwsearch where the cluster runs, the same version as here")


#: How long to wait before asking again when no node of a joined cluster has answered the code check yet.
_NO_ANSWER_RETRY_S = 1.0


def _digests_of_live_nodes() -> list[tuple[str, dict[str, str]]]:
    """``(node address, code_digest())`` from each live node, by one task pinned to it (no CPU asked).

    A node listed alive that cannot take the task (it died or is draining,
    and the GCS has not yet marked it dead: about 30 s) is skipped, not
    blamed on the installation: Y5 saw such a node refuse a whole working
    cluster with "cannot run hwsearch".  Skipping is safe only while another
    node answered: a clean clone's CI joined a one-node cluster of other
    code, checked nothing and called it fit.  So until some node answers,
    the check asks again, and :class:`_NoNodeAnswered` ends it at the
    deadline.  A node whose task is still pending at the deadline is
    :class:`_NodeTooSlow`, and any other failure of a node's task
    :class:`_NodeCannotRun`, each naming the node.
    """
    deadline = time.monotonic() + CLUSTER_CHECK_TIMEOUT_S
    asked_again = False
    while True:
        found, unanswered = _ask_each_live_node(deadline)
        if found:
            for node in unanswered:
                log.warning("Ray node %s is listed alive but took no task; its code was not checked", node)
            return found
        if time.monotonic() + _NO_ANSWER_RETRY_S >= deadline:
            raise _NoNodeAnswered(unanswered)
        if not asked_again:
            log.warning("no node of the Ray cluster has taken the code check yet; asking again for up to %.0f s",
                        deadline - time.monotonic())
            asked_again = True
        time.sleep(_NO_ANSWER_RETRY_S)


def _ask_each_live_node(deadline: float) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """One round of the code check: the digests of the nodes listed alive that answered, and those that took no task."""
    import ray
    from ray.exceptions import GetTimeoutError, NodeDiedError, TaskUnschedulableError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    digest = ray.remote(code_digest)
    pending = []
    for node in ray.nodes():
        if node.get("Alive"):
            pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            pending.append((node.get("NodeManagerAddress", "?"),
                            digest.options(num_cpus=0, scheduling_strategy=pinned).remote()))
    found, unanswered = [], []
    for node, task in pending:
        try:
            found.append((node, ray.get(task, timeout=max(deadline - time.monotonic(), 0.001))))
        except (NodeDiedError, TaskUnschedulableError):
            unanswered.append(node)
        except GetTimeoutError:
            raise _NodeTooSlow(node) from None
        except Exception as error:
            raise _NodeCannotRun(node, type(error).__name__) from error
    return found, unanswered


class _NodeCannotRun(Exception):
    """A node's code check failed: its worker could not import or run hwsearch."""

    def __init__(self, node: str, cause: str) -> None:
        super().__init__(f"node {node}: {cause}")
        self.node = node
        self.cause = cause


class _NodeTooSlow(Exception):
    """A node's code check task, pinned to it, was still pending at the deadline.

    It was reported as "cannot run hwsearch (GetTimeoutError)" (Y12), a
    verdict on its installation that nothing had shown: the task may still
    be waiting for a worker to start there, whether slowly or never.
    """

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node} did not answer the code check within {CLUSTER_CHECK_TIMEOUT_S:g} s, so its "
                         "hwsearch code could not be checked: it may be too busy to start a worker, or its workers "
                         "may fail to start (see the Ray logs on that node); try again once it answers")


class _NoNodeAnswered(Exception):
    """No node of the cluster took the code check's task before its deadline, so nothing was checked."""

    def __init__(self, unanswered: list[str]) -> None:
        listed = (f"none of the nodes listed alive ({', '.join(unanswered)}) took a task" if unanswered
                  else "no node was listed alive")
        super().__init__(f"{listed} within {CLUSTER_CHECK_TIMEOUT_S:g} s, so its hwsearch code could not be "
                         "checked; try again once its nodes have started")


@contextlib.contextmanager
def _sigterm_handler_kept() -> Iterator[None]:
    """Put back the Python SIGTERM handler the process had before ``ray.init``, which installs its own.

    Ray's driver handler is a bare ``sys.exit(15)``; a command's own (the
    CLI's :func:`hwsearch.cli._errors.exit_on_sigterm`) also records that
    SIGTERM came, which is all that tells its exit from a failure once
    ``ray.wait`` has turned the exit into ``SystemExit(1)``.
    """
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def _require_a_token_of_our_own() -> None:
    """Token authentication for the local Ray about to start, with a fresh token unless one is configured.

    ``RAY_AUTH_MODE=disabled`` (which the environment may carry for a remote
    cluster's sake) is overridden: nothing but this process and its Ray
    workers ever needs to reach a local session.  The token lives in the
    environment only, so Ray writes nothing to the home directory.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and os.environ.get("RAY_AUTH_TOKEN"):
        return  # the operator's own token
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray reads its config (the auth mode among it) once, at import: re-read it, as Ray itself does
    # when it turns token authentication on, or this driver could not talk to its own cluster.
    from ray._raylet import Config

    Config.initialize("")


# A Unix socket path holds at most 107 bytes, and Ray's longest lies this far below its temp folder:
# "/ray/session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store".
_MAX_SOCKET_PATH_CHARS = 107
_RAY_SOCKET_TAIL_CHARS = len("/ray/session_2026-12-04_23-26-56_107105_4194304/sockets/plasma_store")
_PRIVATE_FOLDER_CHARS = len("/hwsearch-rs-12345678")


def _private_ray_folder() -> str | None:
    """A folder of this process's own (0700) for a local Ray, or None where ``RAY_TMPDIR`` names one already.

    Ray's default, ``/tmp/ray``, and each session folder Ray makes in it are
    0777 without the sticky bit (measured: all 35 session folders a day of
    runs left here), so any account on the host could move a running
    session's folder aside and put its own sockets in its place.  The folder
    is an owned temp folder (:mod:`hwsearch.tempdirs`): removed when the
    process exits, once Ray is shut down, or by the next ``hwsearch``
    command if the process was killed.  ``hwsearch serve`` sets
    ``RAY_TMPDIR`` to its own private folder first.  Handed to ``ray.init``,
    not set in the environment, so other programs this process starts still
    find Ray where they would.
    """
    if os.environ.get("RAY_TMPDIR"):
        return None
    parent = _parent_with_room_for_ray(_PRIVATE_FOLDER_CHARS)
    kept = contextlib.ExitStack()
    folder = kept.enter_context(owned_temp_dir("rs", parent, swept=False))  # removed once Ray has stopped
    atexit.register(_shut_down_then_remove, kept)
    return str(folder / "ray")  # Ray makes the folder it is given 0777: this one's parent keeps it closed


def _parent_with_room_for_ray(folder_chars: int) -> str:
    """The temp folder, or ``/tmp`` where a folder of ``folder_chars`` (its ``/`` included) below it would leave
    Ray's socket paths no room (a deep ``TMPDIR``)."""
    parent = tempfile.gettempdir()
    return "/tmp" if len(parent) + folder_chars + _RAY_SOCKET_TAIL_CHARS > _MAX_SOCKET_PATH_CHARS else parent


def _shut_down_then_remove(kept: contextlib.ExitStack) -> None:
    """At exit: end the local Ray, then remove its folder.

    Ray registers its own shutdown when it is imported, before this, and
    ``atexit`` runs in reverse order, so this runs first and shuts Ray down
    itself (Ray's later call is then a no-op).
    """
    import ray

    ray.shutdown()
    kept.close()


def _host_folders() -> dict[str, str]:
    """The host lock's and the rulers' folders as this process has them (absolute), for its workers' environment.

    Workers of a cluster joined by address run with the environment of
    whoever ran ``ray start``, not this driver's: without these a job's
    tasks would measure under another lock folder than the CLIs' and
    services' that name ``DEVICES_LOCK_DIR`` (never taking turns with them)
    and keep their rulers elsewhere.  The lock folder is passed always, the
    default included: a cluster started with its own ``DEVICES_LOCK_DIR``
    measured beside a CLI run on the same host that had none, their
    sessions overlapping (probe Z10).  The rulers' folder only when set,
    since its default lies in the home folder of whoever runs the worker.
    Absolute, because a worker's working folder is not the driver's.
    """
    from devices.calibration import CALIBRATION_DIR_ENV
    from devices.hostlock import LOCK_DIR_ENV, lock_dir

    folders = {LOCK_DIR_ENV: os.path.abspath(lock_dir())}
    if os.environ.get(CALIBRATION_DIR_ENV):
        folders[CALIBRATION_DIR_ENV] = os.path.abspath(os.environ[CALIBRATION_DIR_ENV])
    return folders


def _start_ray(address: str | None, num_cpus: int | None, temp_dir: str | None = None) -> None:
    import ray

    runtime_env: dict[str, object] = {"worker_process_setup_hook": f"{__name__}.prepare_worker"}
    if address:
        workers_env = {**_host_folders(), DRIVER_CODE_ENV: code_digest()["digest"]}
        ray.init(address=address, log_to_driver=False, runtime_env={**runtime_env, "env_vars": workers_env})
    else:
        if folders := _host_folders():
            runtime_env["env_vars"] = folders
        # "local": without it, ray.init() joins the cluster a `ray start` on this host (or another
        # program's Ray) recorded in <tmp>/ray/ray_current_cluster, and refuses num_cpus there.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, runtime_env=runtime_env, _temp_dir=temp_dir)


def _start_ray_in_keeper_thread(address: str | None, num_cpus: int | None, temp_dir: str | None) -> None:
    """Start Ray from a daemon thread that then waits forever; re-raise its start-up error here."""
    started = threading.Event()
    failure: list[BaseException] = []

    def keep() -> None:
        try:
            _start_ray(address, num_cpus, temp_dir)
        except BaseException as error:  # handed to the caller below
            failure.append(error)
        started.set()
        if not failure:
            threading.Event().wait()  # never set: this thread must outlive the Ray daemons' use

    threading.Thread(target=keep, name="hwsearch-ray-keeper", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


def private_temp_dir(owner: str, purpose: str = "ray") -> Path:
    """A short temp dir of one owner (a service's data directory), e.g. /tmp/hwsearch-ray-1a2b3c4d.

    Every process Ray starts for that owner carries the ``ray`` one (command
    line or ``RAY_TMPDIR`` in its environment), which is how
    :func:`kill_leftovers` finds them after the owner was killed.  Short,
    because Ray's socket paths live below it and Unix socket paths are
    limited to 107 bytes: below a temp folder too deep for them (a ``TMPDIR``
    of 34 characters failed every job of a service), the ``ray`` one is in
    ``/tmp``.  Other purposes (``tmp``: the owner's temp files) sit beside it
    under the same digest, in the temp folder.
    """
    digest = hashlib.sha256(str(Path(owner).resolve()).encode()).hexdigest()[:8]
    name = f"hwsearch-{purpose}-{digest}"
    return Path(_parent_with_room_for_ray(1 + len(name)) if purpose == "ray" else tempfile.gettempdir()) / name


def kill_leftovers(temp_dir: Path) -> list[str]:
    """SIGKILL processes left by a previous Ray session under ``temp_dir``; describe each.

    Call it only while holding the owner's lock (no live process can be using
    that session).  Ray's GCS and raylet die with the process that started
    them, but its agents and workers can outlive a ``kill -9`` and ignore
    SIGTERM, holding hundreds of MB.  A process is Ray's when its command
    line or ``RAY_TMPDIR`` names ``temp_dir``, or when its title is Ray's
    (``ray::...``) and it holds a file open below it: Ray's agents rewrite
    their title over both, and ``ray::DashboardAgent`` and
    ``ray::RuntimeEnvAgent`` (210 MB together) outlived three restarts
    unseen, holding only their logs there.  An operator's ``tail -f`` of
    those logs is no Ray process and is left alone.  Open files are shown
    by their real path, so the folder's is looked for too (``/tmp`` may be
    a link).
    """
    marker = str(temp_dir).encode()
    real = os.fsencode(os.path.realpath(temp_dir))
    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if (marker in cmdline or b"RAY_TMPDIR=" + marker + b"\0" in environ + b"\0"
                or (cmdline.startswith(b"ray::") and _holds_a_file_below(proc, (marker, real)))):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            program = cmdline.split(b"\0")[0].decode(errors="replace")[:80]
            killed.append(f"{pid} {program}")
    return killed


def _holds_a_file_below(proc: Path, folders: tuple[bytes, ...]) -> bool:
    """Whether the process ``proc`` (a ``/proc/PID`` folder) has a file open below one of ``folders``."""
    try:
        descriptors = list((proc / "fd").iterdir())
    except OSError:  # gone, or not ours to look into
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(os.fsencode(descriptor)).startswith(tuple(folder + b"/" for folder in folders)):
                return True
        except OSError:  # closed meanwhile
            continue
    return False
