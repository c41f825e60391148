"""A resident `hyinf explain`: one process that keeps torch, the models and their Explainers loaded, so
that `hyinf explain MODEL IMAGE` from a shell pays only for the image.

`hyinf daemon start` runs `python -m hyinf.daemon` in the background, listening on a Unix socket in a
folder only its user can enter. While it runs, `hyinf explain` hands its command line (with its working
folder and its HYINF_* environment) to it and prints what it answers; where none answers it explains
in its own process, as ever. Requests are length-prefixed JSON (never pickle), at most one at a time,
from the socket owner's user only (the kernel's peer credentials say who connects). The daemon exits
after its idle time or on `hyinf daemon stop`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyinf.imageset.worker import JobSpec, Worker

MAX_MESSAGE = 1 << 20  # bytes: a command line and its environment, or the output of one explain
IDLE_S = 1800.0
REQUEST_TIMEOUT_S = 30.0  # to receive a request once connected, and to hand over an answer
KEPT_MODELS = 2  # models held at once: each holds its weights, traced programs and ORT sessions
ENVIRONMENT = ("HYINF_", "XDG_CACHE_HOME")  # what of the client's environment a request carries


class DaemonError(Exception):
    """The daemon could not be reached or answered nothing usable; `stale`: its socket has no listener
    (the daemon was killed), so the socket file can go."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


def socket_path() -> Path:
    """$HYINF_DAEMON_SOCKET, else hyinf/daemon.sock in the user's runtime folder (or the temporary folder)."""
    given = os.environ.get("HYINF_DAEMON_SOCKET")
    if given:
        return Path(given)
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hyinf-{os.getuid()}")
    return Path(base) / "hyinf" / "daemon.sock"


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        data = json.dumps({"code": 1, "stdout": "", "stderr": "Error: the answer is larger than the daemon sends\n"}).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)


def _receive(conn: socket.socket) -> dict[str, Any]:
    header = _exactly(conn, 4)
    (size,) = struct.unpack(">I", header)
    if size > MAX_MESSAGE:
        raise DaemonError(f"a message of {size} bytes, more than {MAX_MESSAGE}")
    try:
        message = json.loads(_exactly(conn, size))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DaemonError(f"a message that is not JSON ({e})") from None
    if not isinstance(message, dict):
        raise DaemonError("a message that is not a JSON object")
    return message


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = conn.recv(size - len(data))
        if not part:
            raise DaemonError("the connection closed mid-message")
        data += part
    return data


# -- the client ---------------------------------------------------------------------------------------


def request(message: dict[str, Any], path: Path | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Send one request to the daemon at `path` and return its answer; DaemonError where none comes."""
    path = path or socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
            _send(conn, message)
            return _receive(conn)
        except OSError as e:
            raise DaemonError(f"no hyinf daemon answers at {path} ({e.strerror or e})", isinstance(e, ConnectionRefusedError)) from None


def remove_stale(path: Path) -> None:
    """Remove the socket a killed daemon left behind (nothing listens on it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def hand_over(argv: list[str], startup_s: float) -> int | None:
    """Run `hyinf ARGV` in the daemon, if one is listening: print its output, return its exit code.
    None where no daemon answers (or it stopped mid-request): the caller explains in its own process."""
    path = socket_path()
    if os.environ.get("HYINF_DAEMON") == "0" or not path.exists():
        return None
    environment = {k: v for k, v in os.environ.items() if k.startswith(ENVIRONMENT)}
    try:
        answer = request({"op": "run", "argv": argv, "cwd": os.getcwd(), "env": environment, "startup_s": startup_s}, path)
    except DaemonError as e:
        if e.stale:
            remove_stale(path)
        print(f"note: {e}{'; removed its socket' if e.stale else ''}; explaining in this process", file=sys.stderr)
        return None
    sys.stdout.write(str(answer.get("stdout", "")))
    sys.stderr.write(str(answer.get("stderr", "")))
    code = answer.get("code", 1)
    return code if isinstance(code, int) else 1


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class Resident:
    """What the daemon keeps between requests: Workers (a model loaded, its Explainer) by what built them.

    The explain command finds this on its click context (`obj`) and takes its Worker from here."""

    workers: dict[str, Worker] = field(default_factory=dict)
    startup_s: float | None = None  # the client's own start, for the report's process timings
    served: int = 0
    started: float = field(default_factory=time.time)

    def worker(self, spec: JobSpec) -> Worker:
        """The Worker for `spec`, built once while the model's files are unchanged."""
        from hyinf.imageset.worker import Worker

        settings = {k: v for k, v in spec.settings.items() if k != "progress"}
        files = [_stat(p) for p in (spec.model, spec.weights, spec.plan_file) if p]
        key = json.dumps([asdict(spec) | {"settings": settings}, files], sort_keys=True, default=str)
        if key not in self.workers:
            while len(self.workers) >= KEPT_MODELS:
                self.workers.pop(next(iter(self.workers)))
            self.workers[key] = Worker(spec)
        else:
            self.workers[key] = self.workers.pop(key)  # most recently used last
        return self.workers[key]


def _stat(path: str) -> list[Any]:
    try:
        s = os.stat(path)
    except OSError:
        return [path]  # a name such as torchvision:resnet18, or a file that is gone (loading says so)
    return [os.path.realpath(path), s.st_mtime_ns, s.st_size]


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """Answer requests on `path` until idle for `idle_s` seconds or asked to stop."""
    import hyinf.cli.explain  # noqa: F401  (torch, the engine and the CLI load once, now, not in the first request)
    from hyinf.explain import resolve_device

    resolve_device("cpu")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)  # only this user may reach the socket
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    resident = Resident()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(16)
        server.settimeout(idle_s)
        try:
            while True:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    return
                with conn:
                    try:
                        if not _answer(conn, resident):
                            return
                    except OSError:  # the client went away before its answer: the next one is served
                        continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _answer(conn: socket.socket, resident: Resident) -> bool:
    """Answer one connection; False when asked to stop."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        return True  # another user: no answer at all
    conn.settimeout(REQUEST_TIMEOUT_S)  # a client that connects and sends nothing must not hold the daemon
    try:
        message = _receive(conn)
    except (DaemonError, OSError):
        return True
    op = message.get("op")
    if op == "stop":
        _send(conn, {"stopped": True})
        return False
    if op == "status":
        _send(conn, {"pid": os.getpid(), "uptime_s": time.time() - resident.started, "served": resident.served,
                     "models": [json.loads(k)[0]["model"] for k in resident.workers]})
        return True
    if op != "run" or not isinstance(message.get("argv"), list) or not all(isinstance(a, str) for a in message["argv"]):
        _send(conn, {"code": 2, "stdout": "", "stderr": "Error: the daemon runs requests of the form {op: run, argv: [...]}\n"})
        return True
    _send(conn, _run(message, resident))
    resident.served += 1
    return True


def _run(message: dict[str, Any], resident: Resident) -> dict[str, Any]:
    """`hyinf ARGV` in the request's folder and environment, its output captured."""
    from hyinf.cli import main

    argv: list[str] = message["argv"]
    if argv[:1] != ["explain"]:
        return {"code": 2, "stdout": "", "stderr": "Error: the daemon runs `hyinf explain` only\n"}
    out, err = io.StringIO(), io.StringIO()
    startup = message.get("startup_s")
    resident.startup_s = float(startup) if isinstance(startup, int | float) else None
    code = 0
    try:
        with _in(str(message.get("cwd", "/")), message.get("env") or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main.main(args=argv, prog_name="hyinf", standalone_mode=True, obj=resident)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001  a bug or a folder that is gone must not end the daemon: the request fails, saying why
        err.write(f"Error: the daemon could not run this request ({type(e).__name__}: {e})\n")
        code = 1
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


@contextlib.contextmanager
def _in(cwd: str, env: dict[str, Any]) -> Iterator[None]:
    """The request's working folder and HYINF_* environment, for its duration."""
    before_cwd = os.getcwd()
    before = {k: v for k, v in os.environ.items() if k.startswith(ENVIRONMENT)}
    try:
        os.chdir(cwd)
        for k in before:
            del os.environ[k]
        os.environ.update({str(k): str(v) for k, v in env.items() if str(k).startswith(ENVIRONMENT)})
        yield
    finally:
        os.chdir(before_cwd)
        for k in [k for k in os.environ if k.startswith(ENVIRONMENT)]:
            del os.environ[k]
        os.environ.update(before)


def main() -> None:
    """`python -m hyinf.daemon SOCKET IDLE_S`: what `hyinf daemon start` runs in the background."""
    serve(Path(sys.argv[1]), float(sys.argv[2]))


if __name__ == "__main__":  # through the module's own name: the explain command looks for hyinf.daemon.Resident, not __main__'s
    from hyinf import daemon as _daemon

    _daemon.main()
