"""What the plans service reads and retracts: devices, cost models and plans, filtered for listing
and lookup. Writes that create rows live in `store` (they are the same for a local database)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from hyinf.plans_db.schema import CostModelRow, Device, PlanRow, ProfileRun
from hyinf.plans_db.store import Database

LIST_LIMIT = 500


def devices(db: Database) -> list[Device]:
    with db.reading() as s:
        return list(s.scalars(select(Device).order_by(Device.id)))


def device(db: Database, key: str) -> Device | None:
    with db.reading() as s:
        return s.scalar(select(Device).where(Device.key == key))


def profile_runs(db: Database, device_class: str | None = None) -> list[tuple[ProfileRun, str]]:
    """Finished or not, newest first, each with its device's class."""
    query = select(ProfileRun, Device.device_class).join(Device).order_by(ProfileRun.id.desc()).limit(LIST_LIMIT)
    if device_class:
        query = query.where(Device.device_class == device_class)
    with db.reading() as s:
        return [(run, cls) for run, cls in s.execute(query)]


def cost_models(db: Database, device_class: str | None = None, backend: str | None = None,
                retracted: bool = False) -> list[tuple[CostModelRow, Device]]:
    """Cost models without their bodies' weight in the answer (the caller picks fields), newest first."""
    query = select(CostModelRow, Device).join(Device).order_by(CostModelRow.id.desc()).limit(LIST_LIMIT)
    if device_class:
        query = query.where(Device.device_class == device_class)
    if backend:
        query = query.where(CostModelRow.backend == backend)
    if not retracted:
        query = query.where(CostModelRow.retracted_at.is_(None))
    with db.reading() as s:
        return [(m, d) for m, d in s.execute(query)]


def cost_model(db: Database, model_id: int) -> tuple[CostModelRow, Device] | None:
    with db.reading() as s:
        row = s.execute(select(CostModelRow, Device).join(Device).where(CostModelRow.id == model_id)).first()
        return (row[0], row[1]) if row is not None else None


def newest_cost_model(db: Database, device_class: str, backend: str) -> CostModelRow | None:
    """The newest cost model of a device class and backend that is not retracted."""
    with db.reading() as s:
        return s.scalar(select(CostModelRow).join(Device).where(
            Device.device_class == device_class, CostModelRow.backend == backend, CostModelRow.retracted_at.is_(None),
        ).order_by(CostModelRow.id.desc()).limit(1))


def plans(db: Database, *, fingerprint: str | None = None, settings_key: str | None = None, device_key: str | None = None,
          device_class: str | None = None, retracted: bool = False) -> list[tuple[PlanRow, Device]]:
    """Plans matching every filter given, newest first."""
    query = select(PlanRow, Device).join(Device).order_by(PlanRow.id.desc()).limit(LIST_LIMIT)
    if fingerprint:
        query = query.where(PlanRow.model_fingerprint == fingerprint)
    if settings_key:
        query = query.where(PlanRow.settings_key == settings_key)
    if device_key:
        query = query.where(Device.key == device_key)
    if device_class:
        query = query.where(Device.device_class == device_class)
    if not retracted:
        query = query.where(PlanRow.retracted_at.is_(None))
    with db.reading() as s:
        return [(p, d) for p, d in s.execute(query)]


def plan(db: Database, plan_id: int) -> tuple[PlanRow, Device] | None:
    with db.reading() as s:
        row = s.execute(select(PlanRow, Device).join(Device).where(PlanRow.id == plan_id)).first()
        return (row[0], row[1]) if row is not None else None


def plan_state(db: Database, plan_id: int) -> bool | None:
    """Whether plan `plan_id` is retracted (None: there is no such plan)."""
    with db.reading() as s:
        row = s.execute(select(PlanRow.retracted_at).where(PlanRow.id == plan_id)).first()
        return None if row is None else row[0] is not None


def retracted_among(db: Database, ids: list[int]) -> set[int]:
    """Which of these plans are retracted (or gone)."""
    with db.reading() as s:
        live = set(s.scalars(select(PlanRow.id).where(PlanRow.id.in_(ids), PlanRow.retracted_at.is_(None))))
    return set(ids) - live


def retract(db: Database, table: type[PlanRow | CostModelRow], row_id: int) -> bool | None:
    """Retract a plan or cost model: hidden from lookups, kept for the record. None when there is no
    such row, False when it was retracted before."""
    with db.session() as s:
        row = s.get(table, row_id)
        if row is None:
            return None
        if row.retracted_at is not None:
            return False
        row.retracted_at = datetime.now(UTC).replace(tzinfo=None)
        return True
