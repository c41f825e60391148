"""The plans service on loopback, as a fleet uses it.

    python benchmarks/service_speed.py --write docs/benchmarks.md

- Plan lookup by id: 64 concurrent keep-alive connections (wrk, 2 threads, on the same 2 cores as the
  server) fetch stored plans for a fixed time;
  requests/s and latency percentiles, on SQLite and on PostgreSQL, with 1 and 2 server processes.
- Plan search for torchvision resnet50 at 224/16/8: the server's answer to a new search (a new device
  class each time, so nothing is found stored), median of 5; the structure is traced here.
- 16 concurrent publisher processes, 50 plans of their own each and 10 plans all of them publish:
  every plan stored once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine_speed import machine, report  # noqa: E402
from service_support import POSTGRES_URL, start_server  # noqa: E402

CLIENTS, CLIENT_PROCESSES, SECONDS = 64, 4, 10.0


def lookups(url: str, ids: list[int], seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of CLIENTS keep-alive connections fetching plans by id in turn, driven
    by wrk (a C load generator: Python clients on the same 2 cores measured themselves, not the server)."""
    if shutil.which("wrk") is None:
        raise SystemExit("the lookup benchmark needs wrk: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("ids = {" + ",".join(map(str, ids)) + "}\ncounter = 0\n"
                     "request = function()\n  counter = counter + 1\n"
                     "  return wrk.format('GET', '/v1/plans/' .. ids[(counter % #ids) + 1])\nend\n")
    done = subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds:g}s", "--latency", "-s", script.name, url],
                          capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    if "Non-2xx" in done:
        raise SystemExit(f"some lookups failed:\n{done}")

    def millis(label: str) -> float:
        value = re.search(rf"^\s*{label}%\s+([0-9.]+)(us|ms|s)\s*$", done, re.M)
        assert value is not None, done
        return float(value[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[value[2]]

    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done)
    assert rate is not None, done
    return float(rate[1]), millis("50"), millis("99")


def _documents(count: int, tag: str) -> list[dict]:
    import torch
    from torch import nn

    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.planner.select import make_plan
    from hyinf.profiler.machine import DeviceFingerprint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    graph = trace_torch(model, (1, 3, 32, 32)).graph
    base = DeviceFingerprint("cpu", f"Bench CPU {tag}", 1, "", "2.14.1", "1.20.0")
    grid = OcclusionGrid.make((32, 32), 8, 4)
    return [dict(make_plan(graph, grid, replace(base, cores=n + 1), model_name="bench", db=None).body) for n in range(count)]


def _publisher(url: str, token: str, own: list[dict], shared: list[dict], out: multiprocessing.Queue) -> None:
    ids = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for body in own + shared:
            response = client.post("/v1/plans", json={"document": body})
            response.raise_for_status()
            ids.append(response.json()["id"])
    out.put(ids)


def publishers(url: str, token: str) -> str:
    own = [_documents(50, f"p{k}") for k in range(16)]
    shared = _documents(10, "shared")
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_publisher, args=(url, token, own[k], shared, queue)) for k in range(16)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    answers = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    stored = httpx.get(f"{url}/v1/plans", params={"fingerprint": own[0][0]["model"]["fingerprint"]}, timeout=60).json()
    expected = 16 * 50 + 10
    ids = {i for a in answers for i in a}
    ok = len(ids) == expected and all(len(set(a[50:])) == 10 for a in answers) and len({tuple(a[50:]) for a in answers}) == 1
    return (f"{16 * 60} publishes of {expected} distinct plans in {seconds:.1f} s: {len(ids)} ids, "
            f"{min(len(stored), 500)} listed (list capped at 500); {'nothing lost or duplicated' if ok else 'MISMATCH'}")


def search_seconds(url: str, token: str, rounds: int = 5) -> list[float]:
    import torch
    import torchvision

    from hyinf.graph.ir_json import graph_to_json
    from hyinf.graph.torch_frontend import trace_torch

    torch.manual_seed(0)
    graph = trace_torch(torchvision.models.resnet50(weights=None).eval(), (1, 3, 224, 224)).graph
    structure = graph_to_json(graph)
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        for _ in range(rounds):
            device = {"kind": "cpu", "name": f"Search CPU {uuid.uuid4().hex[:6]}", "cores": 2, "torch_version": "2.14.1"}
            body = {"structure": structure, "settings": {"image_size": [224, 224], "patch": [16, 16], "stride": [8, 8]}, "device": device}
            start = time.perf_counter()
            response = client.post("/v1/plans/search", json=body)
            times.append(time.perf_counter() - start)
            if response.status_code != 201:
                raise SystemExit(f"search answered {response.status_code}: {response.text[:200]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    lines = [f"Machine: {machine()}; server and clients on the same machine (loopback).", "",
             f"{CLIENTS} clients; 'first' is a new server's first {args.seconds:g} s (no plan read yet), 'then' the next {args.seconds:g} s.", "",
             "| database | server processes | lookups/s, then | p50 ms | p99 ms | lookups/s, first | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, url in (("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}"), ("PostgreSQL", f"{POSTGRES_URL}?options=-csearch_path%3Dbench_{uuid.uuid4().hex[:8]}")):
            if kind == "PostgreSQL":
                import psycopg

                with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA {url.rsplit('%3D', 1)[1]}")
            for workers in (1, 2):
                server = start_server(url, "--workers", str(workers))
                try:
                    token = server.token("publish")
                    if workers == 1:
                        notes.append(f"{kind}: {publishers(server.url, token)}")
                        if kind == "SQLite":
                            times = search_seconds(server.url, token)
                            notes.append(f"plan search, resnet50 224/16/8: median {statistics.median(times):.2f} s "
                                         f"({min(times):.2f}-{max(times):.2f}) over {len(times)} new device classes, loopback")
                    ids = [p["id"] for p in httpx.get(f"{server.url}/v1/plans", timeout=60).json()[:200]]
                    cold = lookups(server.url, ids, args.seconds)  # the server has read none of these plans yet
                    warm = lookups(server.url, ids, args.seconds)
                    lines.append(f"| {kind} | {workers} | " + " | ".join(f"{r:.0f} | {p50:.1f} | {p99:.1f}" for r, p50, p99 in (warm, cold)) + " |")
                finally:
                    server.stop()
    report("\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n", args.write, "service-speed")


if __name__ == "__main__":
    main()
