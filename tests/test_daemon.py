"""`hyinf daemon`: a real resident process that `hyinf explain` hands its work to, attacked as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hyinf.daemon import request

HYINF = str(Path(sys.executable).with_name("hyinf"))


def _hyinf(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HYINF, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A started daemon; the environment that reaches it."""
    env = {**os.environ, "HYINF_DAEMON_SOCKET": str(tmp_path_factory.mktemp("daemon") / "run" / "daemon.sock")}
    started = _hyinf(env, "daemon", "start", "--idle-minutes", "10")
    assert started.returncode == 0, started.stderr
    yield env
    _hyinf(env, "daemon", "stop")


def _report(folder: Path) -> dict[str, object]:
    return json.loads((folder / "report.json").read_text())


def test_explain_through_the_daemon_equals_explaining_in_process(daemon: dict[str, str], tmp_path: Path) -> None:
    for name in ("first", "second"):
        done = _hyinf(daemon, "explain", "demo", "--out", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert "225 positions" in done.stdout
    alone = _hyinf({**daemon, "HYINF_DAEMON": "0"}, "explain", "demo", "--out", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr
    first, second, own = (_report(tmp_path / n) for n in ("first", "second", "alone"))
    assert first["daemon"] is True and second["daemon"] is True and own["daemon"] is False
    process = second["process_s"]
    assert isinstance(process, dict) and process["model_load_s"] < 0.05 and process["imports_s"] < 0.05  # kept loaded
    for name in ("first", "second"):
        np.testing.assert_allclose(np.load(tmp_path / name / "heatmap.npy"), np.load(tmp_path / "alone" / "heatmap.npy"), atol=1e-5)
    status = _hyinf(daemon, "daemon", "status")
    assert status.returncode == 0 and "models held: demo" in status.stdout


def test_paths_are_the_clients_and_bad_input_is_one_line(daemon: dict[str, str], tmp_path: Path) -> None:
    done = _hyinf(daemon, "explain", "demo", "--out", "relative", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "relative" / "heatmap.npy").exists() and _report(tmp_path / "relative")["daemon"] is True
    bad = _hyinf(daemon, "explain", "demo", "nosuch.png", "--out", "x", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: image nosuch.png does not exist"
    unknown = _hyinf(daemon, "explain", "demo", "--patch", "0")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1 and "Traceback" not in unknown.stderr
    gone = tmp_path / "gone"
    gone.mkdir()
    answer = request({"op": "run", "argv": ["explain", "demo"], "cwd": str(gone / "not-here")}, Path(daemon["HYINF_DAEMON_SOCKET"]))
    assert answer["code"] == 1 and "could not run this request" in answer["stderr"]
    assert _hyinf(daemon, "daemon", "status").returncode == 0  # and it still serves


def test_the_socket_is_private_and_crafted_requests_do_not_end_it(daemon: dict[str, str]) -> None:
    path = Path(daemon["HYINF_DAEMON_SOCKET"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for payload in (struct.pack(">I", 1 << 30), struct.pack(">I", 5) + b"{oops", struct.pack(">I", 2) + b"[]", b"\x00"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            conn.sendall(payload)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:  # a client that leaves before its answer
        conn.connect(str(path))
        body = json.dumps({"op": "run", "argv": ["explain", "demo", "--out", str(path.parent / "left")]}).encode()
        conn.sendall(struct.pack(">I", len(body)) + body)
    assert request({"op": "run", "argv": ["serve"]}, path)["code"] == 2  # only explain runs there
    assert request({"op": "run", "argv": "explain demo"}, path)["code"] == 2
    assert request({"op": "status"}, path)["served"] >= 0


def test_a_killed_daemon_leaves_explain_working(tmp_path: Path) -> None:
    env = {**os.environ, "HYINF_DAEMON_SOCKET": str(tmp_path / "run" / "daemon.sock")}
    assert _hyinf(env, "daemon", "start").returncode == 0
    pid = request({"op": "status"}, Path(env["HYINF_DAEMON_SOCKET"]))["pid"]
    os.kill(pid, signal.SIGKILL)
    done = _hyinf(env, "explain", "demo", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "removed its socket; explaining in this process" in done.stderr and _report(tmp_path / "out")["daemon"] is False
    assert not Path(env["HYINF_DAEMON_SOCKET"]).exists()
    again = _hyinf(env, "explain", "demo", "--out", str(tmp_path / "again"))
    assert again.returncode == 0 and again.stderr == ""  # no socket, no note
    stopped = _hyinf(env, "daemon", "stop")
    assert stopped.returncode == 1 and "no hyinf daemon answers" in stopped.stderr and len(stopped.stderr.strip().splitlines()) == 1
