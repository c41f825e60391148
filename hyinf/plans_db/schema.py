"""The database schema at the newest migration: devices, profiling runs and their raw measurements,
fitted cost models, and plans.

Everything is plain data (numbers, strings, JSON): nothing read back from the database executes code.
A cost model is stored as its trees' arrays, not as a pickled estimator.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Double, ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, float: Double}


class Device(Base):
    """A machine + accelerator + software versions: costs measured on one do not transfer to another."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # hash of the fields below
    kind: Mapped[str] = mapped_column(String(16))  # cpu | cuda
    name: Mapped[str] = mapped_column(String(200))  # CPU model or GPU name
    cores: Mapped[int]
    driver: Mapped[str] = mapped_column(String(64))  # CUDA runtime/driver, "" on CPU
    torch_version: Mapped[str] = mapped_column(String(64))
    onnxruntime_version: Mapped[str] = mapped_column(String(64))
    device_class: Mapped[str] = mapped_column(String(220), index=True)  # kind:name: plans and costs transfer within a class
    created_at: Mapped[datetime] = mapped_column(default=_now)


class ProfileRun(Base):
    """One `hyinf profile` invocation."""

    __tablename__ = "profile_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    backend: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int]
    quick: Mapped[bool]
    settings: Mapped[dict[str, Any]]  # sweep size, repeats, model and occlusion settings
    hyinf_version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=_now)
    finished_at: Mapped[datetime | None]
    device: Mapped[Device] = relationship()
    measurements: Mapped[list[Measurement]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Measurement(Base):
    """The time of one operator in one mode (or one conversion) for one configuration."""

    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("profile_runs.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # sweep | model
    config: Mapped[str] = mapped_column(String(200))  # configuration id: rows of one config are held out together
    kind: Mapped[str] = mapped_column(String(16))  # incremental | full | to_full | to_win
    op: Mapped[str] = mapped_column(String(64))  # "global_avg_pool/adaptive_avg_pool" is 33 characters
    features: Mapped[dict[str, Any]]
    median_s: Mapped[float]
    spread: Mapped[float]  # interquartile range / median
    times: Mapped[list[Any]]  # every repeat, seconds
    run: Mapped[ProfileRun] = relationship(back_populates="measurements")


class _Provenance:
    """Where a plan or cost model came from. Both are immutable and named by their `digest` (sha256 of
    the canonical JSON body); an admin may retract one, which hides it from lookups but keeps it."""

    digest: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    publisher: Mapped[str] = mapped_column(String(100), default="")  # the token's name, "" when stored locally
    machine: Mapped[str] = mapped_column(String(200), default="")  # the publishing machine's host name
    hyinf_version: Mapped[str] = mapped_column(String(32), default="")
    retracted_at: Mapped[datetime | None]


class CostModelRow(_Provenance, Base):
    """A fitted cost model for one (device, backend), as data: feature names, analytic coefficients and
    the boosted trees' arrays, plus its held-out accuracy."""

    __tablename__ = "cost_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    backend: Mapped[str] = mapped_column(String(16))
    format_version: Mapped[int]
    run_ids: Mapped[list[Any]]
    body: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=_now)
    device: Mapped[Device] = relationship()


class PlanRow(_Provenance, Base):
    """A plan for (model structure, occlusion settings, device), as its versioned JSON document."""

    __tablename__ = "plans"
    __table_args__ = (Index("ix_plans_lookup", "model_fingerprint", "settings_key", "device_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    settings_key: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    cost_model_id: Mapped[int | None] = mapped_column(ForeignKey("cost_models.id"))
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=_now)


class Token(Base):
    """A bearer token of the plans service: only its sha256 is stored."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))  # read | publish | admin
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    revoked_at: Mapped[datetime | None]
