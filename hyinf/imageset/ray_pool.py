"""A job's images on a Ray cluster: actors that each hold one Worker (the model loaded and the plan
fetched once), fed a few images at a time as they free up, writing results to the shared output folder.

Actors receive plain settings and image paths and load the model themselves: no model object travels.
A task that fails (its actor died, or raised) is retried once on a fresh actor, then its images are
recorded as failed.
"""

from __future__ import annotations

import math
import os
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hyinf.errors import HyinfError, SettingsError
from hyinf.imageset.index import Row
from hyinf.imageset.inputs import Item
from hyinf.imageset.worker import JobSpec, Worker, one_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hyinf.imageset.job import RayOptions

#: Tasks kept queued per actor, so one is ready when the last finishes.
IN_FLIGHT = 2
#: A local cluster's object store: the job moves settings, paths and index rows only.
OBJECT_STORE_BYTES = 256 * 2**20


class _Actor:
    """One Worker in a Ray worker process; a model that cannot load is reported by `ready`, not raised."""

    def __init__(self, spec: JobSpec, run: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.error: str | None = None
        try:
            self.worker: Worker | None = Worker(spec, run)
        except Exception as e:  # noqa: BLE001  reported once, by the driver, as a job-level error
            self.worker, self.error = None, one_line(e)

    def ready(self) -> str | None:
        return self.error

    def run_items(self, work: list[tuple[Item, int | None]], out: str) -> list[Row]:
        assert self.worker is not None
        return self.worker.run_items(work, Path(out))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SettingsError("--ray needs Ray, which is not installed: pip install 'hyinf[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse in one line, within seconds, an address nothing listens at (Ray itself retries for a minute)."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.scheme not in ("ray", "tcp"):
        raise SettingsError(f"Ray address {address!r} is not auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise SettingsError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; check the address, "
                            "or leave it out to start a local cluster for this run") from None


class RayPool:
    """Connected to (or started) a cluster, with `options.workers` actors whose models loaded."""

    def __init__(self, spec: JobSpec, run: str, options: RayOptions) -> None:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ core logs each retry of a connection to stderr
        ray = self.ray = _import_ray()
        self.spec, self.run_digest, self.options = spec, run, options
        self.started = False
        if options.address is not None:
            _check_reachable(options.address)
        try:
            if ray.is_initialized():
                pass
            elif options.address is None:  # "local": a new cluster, even where one runs already
                ray.init(address="local", num_cpus=options.workers * options.threads, include_dashboard=False, log_to_driver=False,
                         object_store_memory=OBJECT_STORE_BYTES, logging_level="ERROR")
                self.started = True
            else:
                ray.init(address=options.address, log_to_driver=False, logging_level="ERROR")
                self.started = True
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SettingsError(f"cannot start or reach a Ray cluster at {options.address or 'this machine'}: {one_line(e)}; "
                                "check the address (`ray status` on the cluster), or leave it out to start a local cluster") from None
        try:
            self.actor_class = ray.remote(num_cpus=options.threads)(_Actor)
            self.actors = self._actors(options.workers)
        except BaseException:
            self.close()
            raise

    def _actors(self, count: int) -> list[Any]:
        """`count` actors whose models loaded, started together (each imports torch and loads the model)."""
        actors = [self.actor_class.remote(self.spec, self.run_digest, self.options.threads) for _ in range(count)]
        for error in self.ray.get([actor.ready.remote() for actor in actors]):
            if error is not None:
                raise HyinfError(error)
        return actors

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def run(self, work: list[tuple[Item, int | None]], out: Path) -> Iterator[Row]:
        """Rows as tasks finish, in no fixed order."""
        ray = self.ray
        work = [(Item(item.path.absolute(), item.name), target) for item, target in work]  # workers may start elsewhere
        per_task = max(1, min(16, math.ceil(len(work) / (4 * len(self.actors)))))  # several tasks per actor, to balance
        queue: deque[tuple[list[tuple[Item, int | None]], int]] = deque(
            (work[i : i + per_task], 0) for i in range(0, len(work), per_task))
        pending: dict[Any, tuple[int, Any, list[tuple[Item, int | None]], int]] = {}
        where = str(out.resolve())

        def submit(slot: int) -> None:
            if queue:
                task, attempt = queue.popleft()
                actor = self.actors[slot]
                pending[actor.run_items.remote(task, where)] = (slot, actor, task, attempt)

        for slot in range(len(self.actors)):
            for _ in range(IN_FLIGHT):
                submit(slot)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            slot, actor, task, attempt = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if isinstance(e, ray.exceptions.RayActorError) and self.actors[slot] is actor:
                    self.actors[slot] = self._actors(1)[0]  # its other queued task fails too, and is retried on this one
                if attempt == 0:
                    queue.appendleft((task, 1))
                else:
                    reason = f"failed twice on Ray: {one_line(e)}"
                    yield from (Row(item.name, "failed", target, error=reason) for item, target in task)
                submit(slot)
                continue
            yield from rows
            submit(slot)
