"""onnxruntime sessions built exactly as a device profile says.

Every knob that changes latency (threads, spinning, affinity, graph
optimisation, providers) comes from the profile, so a measurement is
reproducible from the profile alone.  A runner owns one session and one
pre-built input, and :meth:`OrtRunner.run_ms` times a single inference with the
monotonic high-resolution clock; the protocol decides how often to call it.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from devices.cpuload import allowed_processors, usable_cores
from devices.onnx_scan import MalformedModel, scan_model
from devices.profile import DeviceProfile, ProfileError, affinity_processors

_GRAPH_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


#: Where onnxruntime looks for the files a model's external-data tensors name, for a model given as
#: bytes: not a directory, so no such file resolves.  Left unset, it is the working directory, and a
#: model sent to the agent (or named on the command line) could make it read any file there into a
#: tensor: measured, a 16-byte ``secret.txt`` beside the process loaded as the model's weight.
_NO_EXTERNAL_DATA_FOLDER = "/dev/null"
EXTERNAL_DATA_REFUSED = ("its weights must be inside the file: tensors in external data files, and nodes "
                         "naming files (EPContext), are not read")


#: The most bytes a model's sparse tensors may take once onnxruntime makes them dense, all together.
#: Exported networks have none; a 386-byte upload declaring 3 GiB of them took an agent to 4.1 GiB.
MAX_SPARSE_DENSE_BYTES = 256 << 20
#: The most bytes a model's inputs may take, all together.  A model declares its input shapes, and
#: the inputs are built (and filled) before a session runs: an uploaded 1 KB model declaring a
#: 30000x30000 image would have had an agent fill 21.6 GB.  ImageNet at 224 px and batch 1024 is 588 MiB.
MAX_INPUT_BYTES = 1 << 30


class ModelInputError(ValueError):
    """The model's inputs cannot be built from the profile (shape or dtype)."""


def refuse_unsafe_model(model_bytes: bytes) -> None:
    """Refuse, whatever the runtime, a model that names a file to read or densifies past a bound.

    A file: an external-data tensor or an EPContext node.  The session
    setting below confines onnxruntime 1.21 and later; older builds ignore a
    setting they do not know, and would read the file.  So the model itself
    is read first (:mod:`devices.onnx_scan`), which also sizes its sparse
    tensors as they will be made dense (:data:`MAX_SPARSE_DENSE_BYTES`).  A
    model the scan cannot read is refused too, not left to the runtime: a
    protobuf parser may read past what the scan calls malformed, and find an
    external tensor there.
    """
    try:
        scan = scan_model(model_bytes)
    except MalformedModel as error:
        raise ValueError(f"not a valid ONNX model: {error}") from None
    if scan.file_references:
        found = scan.file_references
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(f"not a model this tool measures: {EXTERNAL_DATA_REFUSED} ({shown})")
    if scan.sparse_dense_bytes > MAX_SPARSE_DENSE_BYTES:
        raise ValueError(f"not a model this tool measures: its sparse tensors take {scan.sparse_dense_bytes:,} "
                         f"bytes made dense, above {MAX_SPARSE_DENSE_BYTES:,}")


#: Set by :func:`bound_session_memory`: the bytes all of this process's sessions may allocate, or None.
_arena_bytes: int | None = None


def bound_session_memory(max_bytes: int) -> bool:
    """Make every later session of this process allocate from one shared arena of at most ``max_bytes``.

    A model's inputs are bounded before a session runs, but not what its
    operators allocate: a 135-byte model that expands a float to 2^28 of them
    (``Expand``) took the agent to 1,175 MiB, and one asking for more than the
    box has ends with the kernel's OOM killer, which takes the agent (and its
    clients' measurements) with it.  Past the bound the allocation fails,
    the run fails in onnxruntime, and the request gets a 400.  The arena
    keeps what it grew to between sessions, as a long-lived server's should.
    Returns False (and sessions allocate as before) where this onnxruntime
    cannot share an allocator.
    """
    import onnxruntime as ort

    global _arena_bytes
    if not hasattr(ort, "create_and_register_allocator"):
        return False
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, -1, -1, -1))  # -1: onnxruntime's defaults
    _arena_bytes = max_bytes
    return True


def _share_bounded_arena(options) -> None:  # options: onnxruntime.SessionOptions
    """Allocate from the process's bounded arena, once :func:`bound_session_memory` made one."""
    if _arena_bytes is not None:
        options.add_session_config_entry("session.use_env_allocators", "1")


def refuse_external_data(options) -> None:  # options: onnxruntime.SessionOptions
    """Make ``options`` load no tensor from a file the model names (see :data:`_NO_EXTERNAL_DATA_FOLDER`)."""
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     _NO_EXTERNAL_DATA_FOLDER)


def session_options(profile: DeviceProfile):  # -> onnxruntime.SessionOptions
    """SessionOptions carrying every latency-relevant setting of the profile."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.intra_op_threads
    options.inter_op_num_threads = profile.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[profile.graph_optimization])
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if profile.allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if profile.allow_spinning else "0")
    if profile.thread_affinity:
        options.add_session_config_entry("session.intra_op_thread_affinities", profile.thread_affinity)
    options.log_severity_level = 3
    refuse_external_data(options)
    _share_bounded_arena(options)
    return options


def build_inputs(
    inputs: list[tuple[str, list[int | str | None], str]], profile: DeviceProfile, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs from the model's declared (name, shape, type) triples.

    A symbolic leading dimension becomes the profile's batch; any other
    symbolic dimension is an error because guessing it would time a
    different workload than the one deployed.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    total_bytes = 0
    for name, shape, type_name in inputs:
        dtype = _ORT_DTYPES.get(type_name)
        if dtype is None:
            raise ModelInputError(f"input '{name}' has unsupported type {type_name}")
        if np.issubdtype(dtype, np.floating) and np.dtype(dtype).name != profile.input_dtype:
            raise ModelInputError(
                f"input '{name}' is {np.dtype(dtype).name} but the profile's input_dtype is {profile.input_dtype}"
            )
        concrete = [_concrete_dim(d, i, name, profile.batch) for i, d in enumerate(shape)]
        total_bytes += math.prod(concrete) * np.dtype(dtype).itemsize
        if total_bytes > MAX_INPUT_BYTES:
            raise ModelInputError(f"the model's inputs take more than {MAX_INPUT_BYTES >> 20} MiB at batch "
                                  f"{profile.batch} (input '{name}' is {concrete}); not a model this tool measures")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        else:
            feeds[name] = np.zeros(concrete, dtype=dtype)
    return feeds


def _concrete_dim(dim: int | str | None, index: int, input_name: str, batch: int) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    if index == 0:
        return batch
    if isinstance(dim, int):
        raise ModelInputError(f"input '{input_name}' has {dim} elements at axis {index}: an empty input "
                              "cannot be timed")
    raise ModelInputError(f"input '{input_name}' has a symbolic dimension {dim!r} at axis {index}")


class OrtRunner:
    """One onnxruntime session with a fixed input, timed one run at a time."""

    def __init__(self, model_bytes: bytes, profile: DeviceProfile) -> None:
        import onnxruntime as ort

        refuse_unsafe_model(model_bytes)
        self.session = ort.InferenceSession(
            model_bytes, sess_options=session_options(profile), providers=list(profile.providers)
        )
        self.provider = self.session.get_providers()[0]
        if self.provider != profile.providers[0]:
            raise ProfileError(f"field 'providers' starts with {profile.providers[0]!r}, but onnxruntime "
                               f"ran the model on {self.provider!r}: its rows would time other hardware")
        declared = [(i.name, list(i.shape), i.type) for i in self.session.get_inputs()]
        self.feeds = build_inputs(declared, profile)
        self.clock_ns = time.thread_time_ns if profile.clock == "thread_cpu" else time.perf_counter_ns
        self.run_options = ort.RunOptions()  # one for every run: :meth:`stop` sets its terminate flag

    def run_ms(self) -> float:
        """Time of one inference in milliseconds on the profile's clock (both are monotonic)."""
        start = self.clock_ns()
        self.session.run(None, self.feeds, self.run_options)
        return (self.clock_ns() - start) / 1e6

    def stop(self) -> None:
        """onnxruntime checks the flag between operators (a ``Loop`` between iterations) and fails the run."""
        self.run_options.terminate = True


def require_threads_here(profile: DeviceProfile) -> None:
    """Refuse a profile asking for more threads than this process may run on (its CPU affinity).

    onnxruntime starts a pool of ``intra_op_threads`` for every session, and
    a session holds one per model (two with ``protocol.load_twice``): one
    ``/measure`` of 8 models at 256 threads, loaded twice, took an agent to
    4,085 threads, and at the profile's bounds it would be about 130,000.
    Threads beyond the cores only take turns on them, so such a device
    times the scheduler rather than the model; it is refused where it
    measures (a local session, an agent's ``/measure``, a local device's
    registration), since the profile alone does not know the machine.
    ``inter_op_threads`` is held to the same bound (OpenVINO reads the
    intra-op count as its ``INFERENCE_NUM_THREADS``).
    """
    cores = usable_cores()
    for name in ("intra_op_threads", "inter_op_threads"):
        threads = getattr(profile, name)
        if threads > cores:
            raise ProfileError(f"field '{name}' is {threads}, but this machine runs this process on {cores} "
                               f"logical processor(s) (its CPU affinity): ask for at most {cores} threads")
    require_affinity_here(profile)


def require_affinity_here(profile: DeviceProfile) -> None:
    """Refuse a ``thread_affinity`` naming a logical processor this process may not run on.

    onnxruntime only logs that it cannot pin a thread there (``pthread_setaffinity_np failed``)
    and runs it unpinned: a profile pinning to processor 4000 of a 2-core host measured
    unpinned, and its rows were filed under a device that claims pinning.
    """
    if profile.thread_affinity is None:
        return
    here = allowed_processors()
    missing = sorted(affinity_processors(profile.thread_affinity) - here)
    if missing:
        shown = ", ".join(str(n) for n in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ProfileError(f"field 'thread_affinity' names logical processor(s) {shown}, which this process "
                           f"may not run on: numbered from 1 as onnxruntime counts them, it may use "
                           f"{_ranges(sorted(here))} (its CPU affinity)")


def _ranges(numbers: list[int]) -> str:
    """Sorted numbers as '1-4, 7' (a large machine's affinity, readable in one line)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def require_runtime_here(profile: DeviceProfile) -> None:
    """Refuse a profile this process cannot run as written: its runtime, or its first provider, missing.

    onnxruntime only warns when a listed provider is missing, and runs on
    the next one or the CPU: measured here, a profile asking for
    ``OpenVINOExecutionProvider`` ran on ``CPUExecutionProvider``, so a GPU
    device's rows would have been CPU latencies under the GPU's name.
    :class:`OrtRunner` refuses such a session; this says so before anything
    is measured (when a local device is registered).  So does a profile
    with more threads than this machine runs (:func:`require_threads_here`).
    """
    require_threads_here(profile)
    if profile.runtime == "openvino":
        if importlib.util.find_spec("openvino") is None:
            raise ProfileError("field 'runtime' is 'openvino', which is not installed here "
                               "(pip install openvino)")
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if profile.providers[0] not in available:
        raise ProfileError(f"field 'providers' starts with {profile.providers[0]!r}, which onnxruntime "
                           f"{ort.__version__} here does not have (it has {', '.join(available)})")


def ort_facts() -> dict[str, object]:
    """What onnxruntime reports about itself on this machine."""
    import onnxruntime as ort

    return {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "device": ort.get_device(),
    }


def validate_onnx_bytes(model_bytes: bytes) -> None:
    """Raise ValueError unless onnxruntime can load the bytes as a model.

    Parsing with onnxruntime itself (rather than the ``onnx`` package) keeps
    an agent free of extra dependencies and checks exactly what will run.
    """
    import onnxruntime as ort

    refuse_unsafe_model(model_bytes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    refuse_external_data(options)
    _share_bounded_arena(options)
    try:
        ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several unrelated exception types
        message = str(error).splitlines()[0]
        if "external data" in message.lower():
            raise ValueError(f"not a model this tool measures: {EXTERNAL_DATA_REFUSED}") from None
        raise ValueError(f"not a valid ONNX model: {message[:300]}") from None
