"""The service's request and response bodies: their OpenAPI schemas are the API's contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from hyinf.profiler.machine import DeviceFingerprint

Text = Annotated[str, Field(max_length=200)]
Pair = Annotated[list[Annotated[int, Field(ge=1, le=1 << 16)]], Field(min_length=2, max_length=2)]
Backend = Literal["torch", "ort"]
# The database holds UTC times without a zone; answers carry it, as RFC 3339 wants.
UtcTime = Annotated[datetime, AfterValidator(lambda t: t.replace(tzinfo=UTC) if t.tzinfo is None else t)]


def _plain_text(value: Any, depth: int = 0) -> None:
    """ValueError for text a database cannot hold (NUL characters: PostgreSQL refuses them; lone
    surrogates: not UTF-8) anywhere in a request, keys included, and for nesting over 64 levels."""
    if depth > 64:
        raise ValueError("the request is nested more than 64 levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text may not hold NUL characters")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _plain_text(key, depth + 1)
            _plain_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _plain_text(item, depth + 1)


class Strict(BaseModel):
    """A request body: no unknown fields, and only text a database can hold."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        _plain_text(data)
        return data


class DeviceIn(Strict):
    """A device fingerprint, as `hyinf` computes it on the machine."""

    kind: Literal["cpu", "cuda"]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    cores: Annotated[int, Field(ge=1, le=1 << 20)]
    driver: Annotated[str, Field(max_length=64)] = ""
    torch_version: Annotated[str, Field(max_length=64)]
    onnxruntime_version: Annotated[str, Field(max_length=64)] = ""

    def fingerprint(self) -> DeviceFingerprint:
        return DeviceFingerprint(**self.model_dump())


class DeviceOut(DeviceIn):
    id: int
    key: str
    device_class: str
    created_at: UtcTime


class SettingsIn(Strict):
    """Occlusion settings a plan is made for."""

    image_size: Pair
    patch: Pair
    stride: Pair
    backend: Backend = "torch"
    approx_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None  # approximate plans only


class Provenance(BaseModel):
    publisher: str
    machine: str
    hyinf_version: str
    created_at: UtcTime
    retracted: bool


class PlanOut(Provenance):
    id: int
    digest: str
    model_fingerprint: str
    model_name: str
    settings_key: str
    settings: dict[str, Any]
    device_key: str
    device_class: str
    cost_model_id: int | None
    predicted_s: dict[str, float]


class PlanPublish(Strict):
    """A plan document as `hyinf plan` writes it, with the model's structure (the IR as JSON, no
    weights) when the server should check the plan fits it."""

    document: dict[str, Any]
    structure: dict[str, Any] | None = None


class Published(BaseModel):
    id: int
    digest: str
    created: bool  # False: the same document was stored before (publishing is idempotent)


class SearchIn(Strict):
    """A plan search: the model's structure (no weights), the settings, and a device by fingerprint or class."""

    structure: dict[str, Any]
    settings: SettingsIn
    device: DeviceIn | None = None
    device_class: Text | None = None
    strategy: Literal["optimal", "heuristic"] = "optimal"


class MatchIn(Strict):
    """A lookup of the plan for a model structure, settings and device."""

    fingerprint: Annotated[str, Field(min_length=1, max_length=64)]
    settings: SettingsIn
    device: DeviceIn


class Candidate(BaseModel):
    plan: PlanOut
    differs: list[str]  # the key parts that differ from what was asked: structure, settings, device class, device


class MatchOut(BaseModel):
    match: Literal["exact", "class"]
    differs: list[str]  # for a class match: which device fields differ (software versions, cores, driver)
    plan: PlanOut
    document: dict[str, Any]


class SampleIn(Strict):
    source: Annotated[str, Field(max_length=16)]
    config: Text
    kind: Literal["incremental", "full", "to_full", "to_win"]
    op: Annotated[str, Field(max_length=64)]
    features: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=-1e18, le=1e18, allow_inf_nan=False)]]
    times: Annotated[list[Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]], Field(min_length=1, max_length=1000)]


class ProfileRunIn(Strict):
    """A finished profile run and its measurements, as `hyinf profile --publish` uploads it."""

    device: DeviceIn
    backend: Backend = "torch"
    threads: Annotated[int, Field(ge=1, le=4096)]
    quick: bool
    settings: dict[str, Any]
    samples: Annotated[list[SampleIn], Field(min_length=1, max_length=200_000)]


class ProfileRunOut(BaseModel):
    id: int
    device_class: str
    backend: str
    threads: int
    quick: bool
    hyinf_version: str
    started_at: UtcTime
    finished_at: UtcTime | None


class CostModelPublish(Strict):
    """A cost model fitted by the uploader, with the runs (on this server) it was fitted on."""

    device: DeviceIn
    backend: Backend = "torch"
    format_version: int
    run_ids: Annotated[list[int], Field(max_length=10_000)]
    body: dict[str, Any]
    metrics: dict[str, Any]


class FitIn(Strict):
    """Fit a cost model on the server from every uploaded run of a device class and backend."""

    device_class: Text
    backend: Backend = "torch"


class CostModelOut(Provenance):
    id: int
    digest: str
    device_key: str
    device_class: str
    backend: str
    format_version: int
    run_ids: list[int]
    metrics: dict[str, Any]


class Retracted(BaseModel):
    id: int
    retracted: bool  # False: it was retracted before
