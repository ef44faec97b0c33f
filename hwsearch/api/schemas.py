"""Request and response bodies of the HTTP API, one family per resource.

These are the only pydantic models of the service; the service functions
take and return plain values, so the same logic serves the CLI and tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hwsearch.api.catalog import NAME_PATTERN

Name = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_' and '-'")


class _Strict(BaseModel):
    """Request bodies: no unknown fields, no coercion ("16" is not 16, true is not 1), finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


RefName = Field(pattern=NAME_PATTERN, max_length=100, description="a registered name")
ServerPath = Field(default=None, max_length=1024,
                   description="a path inside one of the server's data roots (GET /data-roots); "
                               "relative to the first")


# --------------------------------------------------------------------------- supernets


class SupernetOptions(_Strict):
    """Builder options beyond the checkpoint: a reduced variant of a registered family."""

    n_classes: int | None = Field(default=None, ge=1, le=100_000)
    resolutions: list[Annotated[int, Field(ge=8, le=1024)]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="narrow the space's input sizes (the family says which it can take; at least 8 px)")


class SupernetCreate(_Strict):
    name: str = Name
    registry: str = Field(max_length=100, description="a builder from GET /supernets/registry")
    checkpoint: str | None = ServerPath
    options: SupernetOptions = SupernetOptions()


class SupernetRead(BaseModel):
    name: str
    registry: str
    checkpoint: str | None
    #: The weights this registration's jobs and exports load; a file changed since is refused (409).
    checkpoint_sha256: str | None = None
    options: dict[str, Any]
    space_name: str
    n_var: int
    size: int


class RegistryRead(BaseModel):
    builders: list[str]


# --------------------------------------------------------------------------- devices


class DeviceCreate(_Strict):
    profile: dict[str, Any] = Field(
        description="a device profile, as in a profile YAML file, except: `where` is "
                    "`{kind: local}` or `{kind: agent, name: NAME}` for an agent the operator "
                    "declared (GET /agents), and `reference_model` is not allowed")


class DeviceRead(BaseModel):
    name: str
    hash: str
    profile: dict[str, Any]


# --------------------------------------------------------------------------- jobs


class LimitCreate(_Strict):
    """``lower ≤ metric ≤ upper``, refused if no subnet can meet it: every metric is positive, accuracy at most 1.

    A job with such a limit would profile and search for minutes and then
    return an empty front; the client hears why at once instead.
    """

    metric: Literal["accuracy", "latency_ms", "params", "macs"]
    upper: float | None = None
    lower: float | None = None

    @model_validator(mode="after")
    def _satisfiable(self) -> LimitCreate:
        if self.upper is None and self.lower is None:
            raise ValueError("a limit needs 'upper' or 'lower'")
        if self.upper is not None and self.upper <= 0:
            raise ValueError(f"upper={self.upper:g} can never be met: {self.metric} is positive")
        if self.lower is not None and self.lower < 0:
            raise ValueError(f"lower={self.lower:g} is below 0, where {self.metric} never is")
        if self.metric == "accuracy" and self.lower is not None and self.lower > 1:
            raise ValueError(f"lower={self.lower:g} can never be met: accuracy is the fraction of images "
                             "classified right, at most 1")
        if self.upper is not None and self.lower is not None and self.lower >= self.upper:
            raise ValueError(f"lower={self.lower:g} must be below upper={self.upper:g}")
        return self


class TargetsCreate(_Strict):
    """The latencies a user will pick from on one device: budgets, a band, or both (ms)."""

    budgets_ms: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(
        default=[], max_length=32, description="latency budgets: the best subnet under each")
    band_ms: list[Annotated[float, Field(gt=0, le=1e6)]] | None = Field(
        default=None, min_length=2, max_length=2,
        description="[low, high]: the latency range the front matters in")

    @model_validator(mode="after")
    def _ordered_band(self) -> TargetsCreate:
        if self.band_ms is not None and self.band_ms[0] >= self.band_ms[1]:
            raise ValueError("band_ms must be [low, high] with low < high")
        return self


class JobCreate(_Strict):
    supernet: str = RefName
    devices: list[Annotated[str, RefName]] = Field(min_length=1, max_length=16,
                                                   description="registered device names")
    dataset: str | None = ServerPath
    limits: list[LimitCreate] = Field(
        default=[], max_length=8,
        description="constraints; the objectives are accuracy (max) and latency per device (min)")
    budget: int = Field(default=0, ge=0, le=10_000,
                        description="extra measured subnets per device for refinement")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    n_profile: int = Field(default=40, ge=4, le=10_000,
                           description="subnets profiled per device to train predictors")
    targets: dict[Annotated[str, RefName], TargetsCreate] = Field(
        default={}, max_length=16,
        description="per device name: latency budgets and/or a band; refinement spends its "
                    "measurements on the best subnet under each budget (docs/refinement.md)")


class Progress(BaseModel):
    step: str = ""
    fraction: float = 0.0
    message: str = ""


class JobRead(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    progress: Progress | None
    error: str | None
    result: dict[str, Any] | None = Field(
        default=None, description="fronts are served separately; this is the summary")
    unreadable: list[str] = Field(
        default=[], description="fields of a damaged stored record that could not be read; they read as null")


class JobEvent(BaseModel):
    seq: int
    step: str = ""
    fraction: float = 0.0
    message: str = ""
    at: float | None = None
    unreadable: bool = Field(default=False, description="true for an event whose stored record is damaged")


class JobEvents(BaseModel):
    job_id: str
    events: list[JobEvent] = Field(description="in order; pass the last seq as `after` next time")


class JobAccepted(BaseModel):
    id: str
    state: str
    status_url: str


class JobList(BaseModel):
    jobs: list[JobRead] = Field(description="newest first")
    next_before: str | None = Field(
        default=None, description="pass as `before` for the next (older) page; null on the last page; the last "
        "job's place, so a page still follows when that job is deleted")


# --------------------------------------------------------------------------- fronts


class PointRead(BaseModel):
    index: int
    arch: dict[str, Any]
    arch_key: str
    measured: dict[str, float]
    predicted: dict[str, float]
    spread: dict[str, float]
    macs: int | None
    params: int | None
    latency_conditions: dict[str, Any] | None = Field(
        default=None, description="how the latency was measured: stable, clock "
                                  "(wall or thread_cpu), latency_source (calibrated or "
                                  "median_ms), ratio_ci (the session's own 95% CI), latency_ci "
                                  "(the 95% CI with the spread between sessions, or null), "
                                  "reference_ms and its source, "
                                  "session_offset (the anchor's offset of the session against "
                                  "its norm when the front was made, or null) and row_offset "
                                  "(what the latency was divided by: that offset leaned by the "
                                  "subnet's size) and offset_precision (the precision of the anchor "
                                  "files the offset was taken on: the point's own where known)")
    precision: str = Field(default="fp32", description="the precision this point was measured "
                                                       "and evaluated at (fp32 or int8)")


class ObjectiveRead(BaseModel):
    metric: str
    sense: Literal["min", "max"]


class FrontRead(BaseModel):
    device: str
    space_name: str
    objectives: list[ObjectiveRead]
    reference_point: list[float]
    hypervolume: float
    seed: int
    settings: dict[str, Any]
    source: Literal["measured", "predicted"] = Field(
        default="measured", description="which values the points were kept by (a job's: measured)")
    points: list[PointRead]


class FrontsRead(BaseModel):
    job_id: str
    fronts: dict[str, FrontRead]


# --------------------------------------------------------------------------- subnets


class SubnetRef(_Strict):
    """A subnet: an arch (hwsearch form or the family's native form), or a point of a job's front."""

    supernet: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=100,
                                 description="needed with 'arch'")
    arch: dict[str, Any] | None = None
    job_id: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=100,
                               description="the front's device, with 'job_id'")
    point: int | None = Field(default=None, ge=0, le=100_000, description="index into that front")
    budget_ms: float | None = Field(default=None, gt=0, le=1e6,
                                    description="instead of 'point': the front's most accurate "
                                                "measured subnet within this latency")

    @model_validator(mode="after")
    def _one_source(self) -> SubnetRef:
        by_arch = self.arch is not None
        by_point = self.job_id is not None
        if by_arch == by_point:
            raise ValueError("give either 'supernet' + 'arch', or 'job_id' + 'device' + "
                             "'point' (or 'budget_ms')")
        if by_arch and self.supernet is None:
            raise ValueError("'arch' needs 'supernet'")
        if by_point and (self.device is None or (self.point is None) == (self.budget_ms is None)):
            raise ValueError("'job_id' needs 'device' and one of 'point' or 'budget_ms'")
        return self


class SubnetAtPrecision(SubnetRef):
    """A subnet at a precision: INT8 files are quantized, calibrated on the data's images."""

    precision: Literal["fp32", "int8"] | None = Field(
        default=None, description="fp32, or int8 (onnxruntime static QDQ quantization, "
                                  "calibrated on 'dataset'); default: the front point's own "
                                  "precision, or fp32 for an arch")
    dataset: str | None = Field(
        default=None, max_length=1024,
        description="images inside a data root whose calibration part calibrates int8 (and, "
                    "for exports, re-estimates batch norm); default for a front point: its "
                    "job's dataset")


class ExportCreate(SubnetAtPrecision):
    batch: int = Field(default=1, ge=1, le=256)


class ExportRead(BaseModel):
    id: str
    supernet: str
    arch: dict[str, Any]
    arch_key: str
    bytes: int
    macs: int
    params: int
    input_shape: list[int]
    max_abs_diff: float | None
    precision: Literal["fp32", "int8"] = "fp32"
    quantization: dict[str, Any] | None = Field(
        default=None, description="int8: calibration method and images, sizes, top-1 agreement "
                                  "and max logit difference against the FP32 model")
    bn_statistics: Literal["recalibrated", "inherited", "none"] | None = Field(
        default=None, description="the subnet's batch norm: re-estimated on the data (a front point's job's, "
                                  "or `dataset`), inherited from the supernet (fit for latency only: accuracy "
                                  "falls far below the subnet's), or none in the network")
    download_url: str


class ProfileCreate(SubnetAtPrecision):
    on: str = Field(pattern=NAME_PATTERN, max_length=100,
                    description="the registered device to profile on")


class HealthRead(BaseModel):
    status: Literal["ok"]
    version: str


class DataRootsRead(BaseModel):
    roots: list[str]
    max_file_bytes: int


class AgentsRead(BaseModel):
    agents: list[str] = Field(description="agent names a device profile may use in `where.name`")


class LimitsRead(BaseModel):
    running: int
    queued: int
    max_running: int
    max_queued: int
    max_n_profile: int
    max_budget: int
    #: batch x resolution^2 an export's input may hold (an export, or a job's device batch at its largest size)
    max_input_pixels: int
    #: job records kept now, finished ones included, and how many may be kept
    jobs: int
    max_jobs: int
    #: seconds one job may run before it is stopped and failed (its queued time not counted)
    max_job_seconds: float
