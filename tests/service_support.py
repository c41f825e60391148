"""A real `hyinf serve` process on loopback, over SQLite or PostgreSQL (a schema of its own per test).

Tests that need PostgreSQL skip when no server answers at POSTGRES_URL, unless HYINF_REQUIRE_POSTGRES
is set (CI sets it): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

POSTGRES_URL = os.environ.get("HYINF_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
HYINF = str(Path(sys.executable).parent / "hyinf")


def _postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3).close()
    except psycopg.OperationalError as e:
        if os.environ.get("HYINF_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required (HYINF_REQUIRE_POSTGRES) but {POSTGRES_URL} does not answer: {e}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")


@contextlib.contextmanager
def _database(kind: str, folder: Path) -> Iterator[str]:
    """A database of its own: a SQLite file in `folder`, or a fresh schema in the PostgreSQL test database."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'service-{uuid.uuid4().hex[:8]}.db'}"
        return
    _postgres_or_skip()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own, on SQLite and on PostgreSQL."""
    with _database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per module and database kind (starting one takes seconds): its tests keep to
    devices of their own (`fp`), so they neither see nor disturb each other's rows."""
    with _database(request.param, tmp_path_factory.mktemp("service")) as url:
        s = start_server(url)
        yield s
        s.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own on SQLite, for clients (the database kinds are covered by the server's tests)."""
    with _database("sqlite", tmp_path) as url:
        s = start_server(url)
        yield s
        s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    db: str
    process: subprocess.Popen

    def token(self, role: str, name: str = "") -> str:
        done = subprocess.run([HYINF, "serve", "token", "create", "--role", role, "--name", name or role, "--db", self.db],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_server(db: str, *extra: str) -> Server:
    """`hyinf serve` on a free loopback port, once /healthz answers."""
    port = free_port()
    process = subprocess.Popen([HYINF, "serve", "--db", db, "--port", str(port), *extra], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hyinf serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, db, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("hyinf serve did not answer within 60 s")


