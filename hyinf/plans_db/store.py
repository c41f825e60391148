"""The plans database: opening (checked, migrated), and reading and writing profiles and cost models.

SQLite by default. Every transaction takes SQLite's write lock when it begins (BEGIN IMMEDIATE) and
the journal is in WAL mode, so concurrent profile runs queue for the lock instead of failing or
losing writes, and two processes opening a new database migrate it once.
"""

from __future__ import annotations

import contextlib
import platform
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event, exc, func, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from hyinf import __version__
from hyinf.canonical import digest
from hyinf.errors import HyinfError
from hyinf.plans_db.location import database_url
from hyinf.plans_db.schema import CostModelRow, Device, Measurement, PlanRow, ProfileRun
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Timing

if TYPE_CHECKING:  # Alembic loads only where a schema is migrated
    from alembic.config import Config

SQLITE_HEADER = b"SQLite format 3\x00"
READ_ONLY = "hyinf_read_only"  # an execution option: the transaction only reads
FIX = "give another file with --db or the HYINF_DB environment variable"


class DatabaseError(HyinfError):
    """A database that cannot be opened or used: not SQLite, corrupt, someone else's, or too new."""


#: The newest schema revision (a test checks it against the migrations): a database already at it opens
#: without importing Alembic and reading its scripts, 0.2 s of every process that reads a plan.
HEAD = "0003"


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("hyinf.plans_db") / "migrations"))
    return cfg


def _check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database before SQLAlchemy would open (and extend) it."""
    if path.is_dir():
        raise DatabaseError(f"database {path} is a directory, not a file; {FIX}")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise DatabaseError(f"{path} is not a SQLite database (is it the right file?); {FIX}")


def _check_sqlite_contents(path: Path) -> None:
    """Refuse a SQLite file whose pages are corrupt, or that holds someone else's tables, before anything
    writes to it (opening it for use turns on WAL, which rewrites its header). Read-only: a refused
    file is left exactly as it was."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        problems, tables = [str(e)], set()
    if problems != ["ok"]:
        raise DatabaseError(f"database {path} is corrupt (SQLite's integrity check: {'; '.join(problems)[:200]}); "
                            f"restore it from a backup, or {FIX}")
    if tables and "alembic_version" not in tables:
        raise DatabaseError(f"database {path} holds tables that are not hyinf's ({', '.join(sorted(tables)[:5])}); {FIX}")


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin below open every transaction
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers queue for the lock up front; readers (READ_ONLY) share a snapshot and never wait on it.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class Summary:
    """What `hyinf db info` shows."""

    url: str
    revision: str
    counts: dict[str, int]
    devices: list[tuple[int, str, str]]  # id, kind, description
    cost_models: list[tuple[int, int, str, datetime, dict[str, Any]]]  # id, device id, backend, created, metrics


@dataclass(frozen=True)
class Provenance:
    """Who stored a plan or cost model, from where, with which hyinf."""

    publisher: str = ""
    machine: str = field(default_factory=platform.node)
    hyinf_version: str = __version__


@dataclass(frozen=True)
class CostModelRef:
    """A stored cost model without its body: enough to tell whether a copy decoded earlier is this one."""

    id: int
    format_version: int
    created_at: datetime


class Database:
    """An opened, up-to-date hyinf database."""

    def __init__(self, url: str | None = None) -> None:
        self.url = database_url(url)
        try:
            parsed = make_url(self.url)
        except exc.ArgumentError:
            raise DatabaseError(f"{self.url!r} is not a database URL or file path; {FIX}") from None
        try:
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                path = Path(parsed.database)
                _check_sqlite_file(path)
                _check_sqlite_contents(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.engine = _sqlite_engine(self.url)
            else:
                self.engine = sa.create_engine(self.url)
        except (exc.NoSuchModuleError, ModuleNotFoundError) as e:
            raise DatabaseError(f"cannot open {self.url}: {e}; install its database driver or use a SQLite file") from None
        except OSError as e:
            raise DatabaseError(f"cannot create the database at {self.url}: {e.strerror}; {FIX}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        with self._errors():
            self._migrate()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except exc.DatabaseError as e:
            reason = str(e.orig) if e.orig is not None else str(e)
            raise DatabaseError(f"database {self.url} cannot be used ({reason}); repair it or {FIX}") from None

    def _migrate(self) -> None:
        """Bring the schema to the newest revision; refuse databases that are not hyinf's or are newer."""
        if self.revision == HEAD:
            return
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = _alembic_config()
        script = ScriptDirectory.from_config(cfg)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # processes opening a new database migrate it one at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(72656769)"))
            tables = set(sa.inspect(conn).get_table_names())
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None and tables - {"alembic_version"}:
                raise DatabaseError(f"database {self.url} holds tables that are not hyinf's ({', '.join(sorted(tables))}); {FIX}")
            if current is not None and current not in {s.revision for s in script.walk_revisions()}:
                raise DatabaseError(f"database {self.url} has schema revision {current}, newer than this hyinf {__version__} knows; upgrade hyinf or {FIX}")
            if current != script.get_current_head():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

    def close(self) -> None:
        """Close the database's connections (SQLite then folds its write-ahead log into the file)."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def revision(self) -> str:
        """The schema revision recorded in the database ("" where none is)."""
        with self._errors(), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return ""
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            return versions[0] if len(versions) == 1 else ""  # several heads: let Alembic judge

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._errors(), self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """One transaction that only reads: on SQLite it takes no write lock, so readers run side by side."""
        with self._errors(), self._reads.begin() as session:
            yield session

    # ---- profiles ------------------------------------------------------------------------------

    def device_id(self, fp: DeviceFingerprint) -> int:
        """The id of this device's row, created on first use (once, however many processes race to)."""
        def new() -> Device:
            return Device(key=fp.key, kind=fp.kind, name=fp.name, cores=fp.cores, driver=fp.driver, torch_version=fp.torch_version,
                          onnxruntime_version=fp.onnxruntime_version, device_class=fp.device_class)

        return self._insert_once(Device, Device.key == fp.key, new)[0]

    def _insert_once(self, table: type[Any], same: Any, new: Callable[[], Any]) -> tuple[int, bool]:
        """The id of the row `same` selects, inserting `new()` when there is none, and whether it was
        inserted. A unique constraint settles concurrent inserts: the loser reads the winner's row."""
        for _ in range(2):
            with self.session() as s:
                found = s.scalar(select(table.id).where(same))
                if found is not None:
                    return found, False
                row = new()
                s.add(row)
                try:
                    s.flush()
                except exc.IntegrityError:
                    s.rollback()
                    continue
                return row.id, True
        with self.session() as s:
            return s.scalars(select(table.id).where(same)).one(), False

    def start_run(self, device_id: int, backend: str, threads: int, quick: bool, settings: dict[str, Any]) -> int:
        with self.session() as s:
            run = ProfileRun(device_id=device_id, backend=backend, threads=threads, quick=quick, settings=settings, hyinf_version=__version__)
            s.add(run)
            s.flush()
            return run.id

    def add_samples(self, run_id: int, samples: list[Sample]) -> None:
        with self.session() as s:
            s.add_all(
                Measurement(
                    run_id=run_id, source=x.source, config=x.config, kind=x.kind, op=x.op, features=dict(x.features),
                    median_s=x.timing.median, spread=x.timing.spread, times=list(x.timing.times),
                )
                for x in samples
            )

    def add_run(self, fp: DeviceFingerprint, backend: str, threads: int, quick: bool, settings: dict[str, Any],
                samples: list[dict[str, Any]], publisher: str) -> int:
        """A finished profile run uploaded whole: its row and every measurement in one transaction."""
        device_id = self.device_id(fp)
        with self.session() as s:
            now = datetime.now(UTC).replace(tzinfo=None)
            run = ProfileRun(device_id=device_id, backend=backend, threads=threads, quick=quick,
                             settings={**settings, "publisher": publisher}, hyinf_version=__version__, finished_at=now)
            s.add(run)
            s.flush()
            s.add_all(Measurement(run_id=run.id, source=x["source"], config=x["config"], kind=x["kind"], op=x["op"], features=x["features"],
                                  median_s=Timing(tuple(x["times"])).median, spread=Timing(tuple(x["times"])).spread, times=x["times"])
                      for x in samples)
            return run.id

    def run_upload(self, run_id: int) -> dict[str, Any]:
        """A finished run as the plans service takes it (`POST /v1/profile-runs`)."""
        with self.session() as s:
            run = s.get_one(ProfileRun, run_id)
            d = run.device
            device = {"kind": d.kind, "name": d.name, "cores": d.cores, "driver": d.driver, "torch_version": d.torch_version,
                      "onnxruntime_version": d.onnxruntime_version}
            samples = [{"source": m.source, "config": m.config, "kind": m.kind, "op": m.op, "features": m.features, "times": m.times}
                       for m in run.measurements]
            return {"device": device, "backend": run.backend, "threads": run.threads, "quick": run.quick, "settings": run.settings,
                    "samples": samples}

    def class_samples(self, device_class: str, backend: str) -> tuple[list[int], list[Sample]]:
        """The finished runs of every device of a class on a backend, and every sample they measured."""
        with self.session() as s:
            runs = s.scalars(select(ProfileRun.id).join(Device).where(
                Device.device_class == device_class, ProfileRun.backend == backend, ProfileRun.finished_at.is_not(None),
            ).order_by(ProfileRun.id)).all()
            rows = s.scalars(select(Measurement).where(Measurement.run_id.in_(runs)).order_by(Measurement.id)).all()
            samples = [Sample(m.source, m.config, m.kind, m.op, m.features, Timing(tuple(m.times))) for m in rows]
        return list(runs), samples

    def finish_run(self, run_id: int) -> None:
        with self.session() as s:
            s.get_one(ProfileRun, run_id).finished_at = datetime.now(UTC).replace(tzinfo=None)

    def samples(self, device_id: int, backend: str) -> tuple[list[int], list[Sample]]:
        """The finished runs of (device, backend) and every sample they measured."""
        with self.session() as s:
            runs = s.scalars(
                select(ProfileRun.id).where(
                    ProfileRun.device_id == device_id, ProfileRun.backend == backend, ProfileRun.finished_at.is_not(None)
                ).order_by(ProfileRun.id)
            ).all()
            rows = s.scalars(select(Measurement).where(Measurement.run_id.in_(runs)).order_by(Measurement.id)).all()
            samples = [Sample(m.source, m.config, m.kind, m.op, m.features, Timing(tuple(m.times))) for m in rows]
        return list(runs), samples

    # ---- cost models ---------------------------------------------------------------------------

    def save_cost_model(self, device_id: int, backend: str, format_version: int, run_ids: list[int], body: dict[str, Any],
                        metrics: dict[str, Any], provenance: Provenance | None = None) -> int:
        """Store a cost model (once: one with the same body is the same model) and return its id."""
        return self.publish_cost_model(device_id, backend, format_version, run_ids, body, metrics, provenance)[0]

    def publish_cost_model(self, device_id: int, backend: str, format_version: int, run_ids: list[int], body: dict[str, Any],
                           metrics: dict[str, Any], provenance: Provenance | None = None) -> tuple[int, bool]:
        """(id, whether it is new) of a cost model stored once by its digest."""
        name = digest(body)

        def new() -> CostModelRow:
            return CostModelRow(device_id=device_id, backend=backend, format_version=format_version, run_ids=run_ids, body=body,
                                metrics=metrics, digest=name, **asdict(provenance or Provenance()))

        return self._insert_once(CostModelRow, CostModelRow.digest == name, new)

    def cost_model_ref(self, model_id: int | None = None, *, device_key: str = "", backend: str = "") -> CostModelRef | None:
        """Stored cost model `model_id`, else the newest for this device and backend, without its body."""
        query = select(CostModelRow.id, CostModelRow.format_version, CostModelRow.created_at)
        if model_id is not None:
            query = query.where(CostModelRow.id == model_id)
        else:
            query = query.join(Device).where(Device.key == device_key, CostModelRow.backend == backend,
                                             CostModelRow.retracted_at.is_(None)).order_by(CostModelRow.id.desc())
        with self.session() as s:
            row = s.execute(query.limit(1)).first()
        return CostModelRef(*row) if row is not None else None

    # ---- plans ---------------------------------------------------------------------------------

    def save_plan(self, model_fingerprint: str, settings_key: str, device: DeviceFingerprint, cost_model_id: int | None,
                  body: dict[str, Any], provenance: Provenance | None = None) -> int:
        """Store a plan document and return its id: the stored one's where the same document is there."""
        return self.publish_plan(model_fingerprint, settings_key, device, cost_model_id, body, provenance)[0]

    def publish_plan(self, model_fingerprint: str, settings_key: str, device: DeviceFingerprint, cost_model_id: int | None,
                     body: dict[str, Any], provenance: Provenance | None = None) -> tuple[int, bool]:
        """(id, whether it is new) of a plan document stored once by its digest, however many publish it."""
        device_id, name = self.device_id(device), digest(body)

        def new() -> PlanRow:
            return PlanRow(model_fingerprint=model_fingerprint, settings_key=settings_key, device_id=device_id,
                           cost_model_id=cost_model_id, body=body, digest=name, **asdict(provenance or Provenance()))

        return self._insert_once(PlanRow, PlanRow.digest == name, new)

    def find_plan(self, model_fingerprint: str, settings_key: str, device_key: str) -> PlanRow | None:
        """The newest plan for this model structure, these settings and this device."""
        with self.session() as s:
            return s.scalar(
                select(PlanRow).join(Device).where(
                    PlanRow.model_fingerprint == model_fingerprint, PlanRow.settings_key == settings_key, Device.key == device_key,
                    PlanRow.retracted_at.is_(None),
                ).order_by(PlanRow.id.desc())
            )

    def plan_bodies(self, model_fingerprint: str, device_class: str) -> list[dict[str, Any]]:
        """The documents of every plan for this model structure on devices of this class, newest first."""
        with self.reading() as s:
            return list(s.scalars(
                select(PlanRow.body).join(Device).where(
                    PlanRow.model_fingerprint == model_fingerprint, Device.device_class == device_class, PlanRow.retracted_at.is_(None),
                ).order_by(PlanRow.id.desc())
            ))

    def plan(self, plan_id: int) -> PlanRow | None:
        with self.session() as s:
            return s.get(PlanRow, plan_id)

    def delete_plan(self, plan_id: int) -> bool:
        """Remove stored plan `plan_id`; False when there is none."""
        with self.session() as s:
            row = s.get(PlanRow, plan_id)
            if row is None:
                return False
            s.delete(row)
            return True

    def plans(self) -> list[PlanRow]:
        with self.session() as s:
            return list(s.scalars(select(PlanRow).order_by(PlanRow.id)))

    def cost_model(self, model_id: int) -> CostModelRow | None:
        with self.session() as s:
            return s.get(CostModelRow, model_id)

    # ---- overview ------------------------------------------------------------------------------

    def summary(self) -> Summary:
        tables = {"devices": Device, "profile runs": ProfileRun, "measurements": Measurement, "cost models": CostModelRow, "plans": PlanRow}
        with self.session() as s:
            counts = {label: s.scalar(select(func.count()).select_from(t)) or 0 for label, t in tables.items()}
            devices = [
                (d.id, d.kind, DeviceFingerprint(d.kind, d.name, d.cores, d.driver, d.torch_version, d.onnxruntime_version).description)
                for d in s.scalars(select(Device).order_by(Device.id))
            ]
            models = [(m.id, m.device_id, m.backend, m.created_at, m.metrics) for m in s.scalars(select(CostModelRow).order_by(CostModelRow.id))]
        return Summary(self.url, self.revision, counts, devices, models)
