"""The plans database on real SQLite files and PostgreSQL schemas: round trips, concurrent writers,
migrations, bad files."""

from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from hyinf.canonical import digest
from hyinf.plans_db import Database, DatabaseError
from hyinf.plans_db.schema import Base
from hyinf.plans_db.store import _alembic_config
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Timing

FP = DeviceFingerprint("cpu", "Test CPU", 2, "", "2.14.1", "1.0")


def _samples(tag: str, n: int) -> list[Sample]:
    return [Sample("sweep", f"{tag}-{i}/node", "incremental", "conv/conv", {"flops": float(i), "bytes": 2.0 * i}, Timing((1e-3 * (i + 1), 2e-3 * (i + 1), 1.5e-3 * (i + 1)))) for i in range(n)]


def test_round_trip(db_url: str) -> None:
    db = Database(db_url)
    device = db.device_id(FP)
    assert db.device_id(FP) == device  # get-or-create
    run = db.start_run(device, "torch", 2, True, {"configs": 3})
    written = _samples("x", 3)
    db.add_samples(run, written)
    assert db.samples(device, "torch") == ([], [])  # unfinished runs are not fitted to
    db.finish_run(run)
    runs, read = db.samples(device, "torch")
    assert runs == [run]
    assert read == written
    model_id = db.save_cost_model(device, "torch", 1, runs, {"a": [1.0, 2.0]}, {"learned": {"mape": 0.1}})
    ref = db.cost_model_ref(device_key=FP.key, backend="torch")
    assert ref is not None and ref.id == model_id and ref.format_version == 1
    assert db.cost_model_ref(model_id) == ref and db.cost_model(model_id).body == {"a": [1.0, 2.0]}  # type: ignore[union-attr]
    assert db.cost_model_ref(device_key=FP.key, backend="ort") is None and db.cost_model_ref(model_id + 1) is None
    # A second process opening the same database sees the same data.
    again = Database(db_url)
    summary = again.summary()
    assert summary.counts == {"devices": 1, "profile runs": 1, "measurements": 3, "cost models": 1, "plans": 0}
    assert summary.revision == "0003"


def _writer(path: str, tag: str, runs: int) -> None:
    db = Database(path)
    device = db.device_id(FP)
    for r in range(runs):
        run = db.start_run(device, "torch", 1, True, {"tag": tag})
        for k in range(4):
            db.add_samples(run, _samples(f"{tag}{r}-{k}", 5))
        db.finish_run(run)


def test_concurrent_writers_lose_nothing(db_url: str) -> None:
    path = db_url  # created by the writers themselves, racing to migrate it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, tag, 5)) for tag in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    counts = Database(path).summary().counts
    assert counts == {"devices": 1, "profile runs": 15, "measurements": 15 * 4 * 5, "cost models": 0, "plans": 0}


def test_previous_schema_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(sa.text(
            "INSERT INTO devices (key, kind, name, cores, driver, torch_version, onnxruntime_version, created_at) "
            f"VALUES ('{FP.key}', 'cpu', 'Old CPU', 4, '', '2.0', '', '2026-01-01 00:00:00')"
        ))
        for body in ('{"b": 1, "a": 2}', '{"a": 2, "b": 1}', '{"a": 3}'):  # the first two are one document
            conn.execute(sa.text("INSERT INTO plans (model_fingerprint, settings_key, device_id, body, created_at) "
                                 f"VALUES ('m', 's', 1, '{body}', '2026-01-01 00:00:00')"))
    engine.dispose()
    db = Database(str(path))
    assert db.revision == "0003"
    summary = db.summary()
    assert summary.counts["devices"] == 1 and summary.counts["plans"] == 2
    assert db.device_id(FP) == 1  # the existing row, not a new one
    assert [(p.id, p.digest) for p in db.plans()] == [(1, digest({"a": 2, "b": 1})), (3, digest({"a": 3}))]
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT device_class FROM devices")).scalar() == "cpu:Old CPU"


def test_migrations_build_the_schema_the_code_uses(db_url: str) -> None:
    db = Database(db_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 50)
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        Database(str(path))
    assert path.read_bytes() == before


def test_corrupt_sqlite_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    db = Database(str(good))
    _writer(str(good), "z", 1)
    db.engine.dispose()
    data = bytearray(good.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page, keep the header
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatabaseError, match="is corrupt"):
        Database(str(bad))


def test_a_corrupt_data_page_is_refused_before_any_write(tmp_path: Path) -> None:
    """The schema reads fine, a table's page does not: nothing may be written into such a file."""
    path = tmp_path / "hurt.db"
    _writer(str(path), "z", 3)
    gc.collect()  # the writer's connections close
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    data = bytearray(path.read_bytes())
    last = (pages - 1) * page_size
    data[last + 8: last + page_size] = b"\x13" * (page_size - 8)  # a measurements page, its header kept
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match="is corrupt.*integrity check"):
        Database(str(path))
    assert path.read_bytes() == before


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    with pytest.raises(DatabaseError, match="not hyinf's"):
        Database(str(path))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Database(str(path)).engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DatabaseError, match="newer than this hyinf"):
        Database(str(path))


@pytest.mark.parametrize("url", ["not a url://x", "postgresql://localhost/hyinf"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(DatabaseError):
        Database(url)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="directory"):
        Database(str(tmp_path))


def test_environment_variable_picks_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_DB", str(tmp_path / "env.db"))
    assert Database().url.endswith("env.db")
    assert (tmp_path / "env.db").exists()


@pytest.mark.parametrize("required", [False, True])
def test_postgresql_tests_skip_without_a_server_unless_required(required: bool, tmp_path: Path) -> None:
    """Where no PostgreSQL answers, its tests skip; CI (HYINF_REQUIRE_POSTGRES) makes them fail instead."""
    env = {**os.environ, "HYINF_TEST_POSTGRES": f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test"}
    env.pop("HYINF_REQUIRE_POSTGRES", None)
    if required:
        env["HYINF_REQUIRE_POSTGRES"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_round_trip[postgresql]"],
                          cwd=Path(__file__).parent, env=env, capture_output=True, text=True, check=False)
    if required:
        assert done.returncode != 0 and "PostgreSQL is required" in done.stdout, done.stdout[-500:]
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-500:]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_head_is_the_migrations_head_and_an_up_to_date_database_opens_without_alembic(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from hyinf.plans_db.store import HEAD

    assert HEAD == ScriptDirectory.from_config(_alembic_config()).get_current_head()
    path = tmp_path / "plans.db"
    Database(str(path)).close()  # created and migrated
    probe = f"import sys; from hyinf.plans_db import Database; Database({str(path)!r}).close(); print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
