"""Machines using the plans service: `hyinf explain` takes its plan from the registry when the local
database has none (and keeps it), a registry that is down, slow or lying costs one warning, and the
CLI publishes, pushes and pulls plans and profile runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from conftest import assert_close_to
from service_support import HYINF, Server, free_port
from torch import nn

import hyinf
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.select import make_plan
from hyinf.profiler.machine import fingerprint
from hyinf.registry import RegistryWarning


@pytest.fixture
def server(sqlite_server: Server) -> Server:
    return sqlite_server


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _publish(server: Server, model: nn.Module, device=None) -> int:
    graph = trace_torch(model, (1, 3, 32, 32)).graph
    document = make_plan(graph, OcclusionGrid.make((32, 32), 8, 4), device or fingerprint(torch.device("cpu")), model_name="tiny", db=None)
    with server.client(server.token("publish")) as c:
        return c.post("/v1/plans", json={"document": document.body}).json()["id"]


def test_explain_takes_the_registrys_plan_then_keeps_it(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_DB", str(tmp_path / "local.db"))
    model, image = _model(), torch.rand(3, 32, 32)
    plan_id = _publish(server, model)
    naive = hyinf.explain(model, image, mode="naive", patch=8, stride=4)
    first = hyinf.explain(model, image, patch=8, stride=4, registry=server.url)
    assert first.plan_source == "registry" and f"registry plan {plan_id} (exact match)" in first.mode
    again = hyinf.explain(model, image, patch=8, stride=4, registry=server.url)
    assert again.plan_source == "local"  # kept in the local database by the first run
    for result in (first, again):
        assert_close_to(naive.scores, result.scores, result.plan_source or "")


def test_a_sibling_devices_plan_says_what_differs(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_DB", str(tmp_path / "local.db"))
    model = _model()
    here = fingerprint(torch.device("cpu"))
    _publish(server, model, replace(here, torch_version="9.9.9"))
    result = hyinf.explain(model, torch.rand(3, 32, 32), patch=8, stride=4, registry=server.url)
    assert result.plan_source == "registry" and "class match; its device differs in torch_version" in result.mode


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("kind", ["down", "slow", "lying", "not json"])
def test_a_registry_that_fails_costs_one_warning(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_DB", str(tmp_path / "local.db"))
    model, image = _model(), torch.rand(3, 32, 32)
    naive = hyinf.explain(model, image, mode="naive", patch=8, stride=4)
    listener = httpd = None
    if kind == "down":
        url = f"http://127.0.0.1:{free_port()}"
    elif kind == "slow":
        listener, port = _silent_port()
        url = f"http://127.0.0.1:{port}"
    else:
        graph = trace_torch(model, (1, 3, 32, 32)).graph
        document = make_plan(graph, OcclusionGrid.make((32, 32), 8, 4), fingerprint(torch.device("cpu")), model_name="t", db=None).body
        answer = json.dumps({"match": "exact", "differs": [], "document": document, "plan": {"id": 1, "digest": "0" * 64}}).encode()

        class Lying(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(answer if kind == "lying" else b"<html>proxy error</html>")

            def log_message(self, *args: object) -> None:
                pass

        httpd = HTTPServer(("127.0.0.1", 0), Lying)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        start = time.monotonic()
        with pytest.warns(RegistryWarning) as caught:
            result = hyinf.explain(model, image, patch=8, stride=4, registry=url)
        assert time.monotonic() - start < 30
        assert len([w for w in caught if issubclass(w.category, RegistryWarning)]) == 1
        assert result.plan_source == "planned"
        assert_close_to(naive.scores, result.scores, kind)
    finally:
        if listener is not None:
            listener.close()
        if httpd is not None:
            httpd.shutdown()


def _hyinf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([HYINF, *args], capture_output=True, text=True, env={**os.environ, **env}, check=False)


def test_the_cli_publishes_pushes_pulls_and_explains_with_the_registry(server: Server, tmp_path: Path) -> None:
    env = {"HYINF_DB": str(tmp_path / "a.db"), "HYINF_REGISTRY": server.url, "HYINF_TOKEN": server.token("publish")}
    no_token = _hyinf("plan", "demo", "--patch", "32", "--stride", "16", "--publish", env={**env, "HYINF_TOKEN": ""})
    assert no_token.returncode != 0 and "HYINF_TOKEN" in no_token.stderr and len(no_token.stderr.strip().splitlines()) == 1
    published = _hyinf("plan", "demo", "--patch", "32", "--stride", "16", "--publish", env=env)
    assert published.returncode == 0, published.stderr
    assert "published as plan 1" in published.stdout
    pushed = _hyinf("plans", "push", "1", env=env)
    assert pushed.returncode == 0 and "it was there already" in pushed.stdout, pushed.stderr
    other = {**env, "HYINF_DB": str(tmp_path / "b.db")}  # a second machine
    out = tmp_path / "out"
    explained = _hyinf("explain", "demo", "--patch", "32", "--stride", "16", "--quiet", "--out", str(out), env=other)
    assert explained.returncode == 0, explained.stderr
    assert json.loads((out / "report.json").read_text())["plan_source"] == "registry"
    pulled = _hyinf("plans", "pull", "1", env={**env, "HYINF_DB": str(tmp_path / "c.db")})
    assert pulled.returncode == 0 and "pulled plan 1" in pulled.stdout, pulled.stderr
    missing = _hyinf("plans", "pull", "99", env=env)
    assert missing.returncode != 0 and "answered 404" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bad_url = _hyinf("explain", "demo", "--registry", "ftp://x", "--out", str(tmp_path / "o2"), env=env)
    assert bad_url.returncode != 0 and "http:// or https://" in bad_url.stderr


def test_profile_publish_uploads_the_run_and_the_server_fits(server: Server, tmp_path: Path) -> None:
    env = {"HYINF_DB": str(tmp_path / "a.db"), "HYINF_REGISTRY": server.url, "HYINF_TOKEN": server.token("publish")}
    done = _hyinf("profile", "--quick", "--configs", "24", "--quiet", "--publish", env=env)
    assert done.returncode == 0, done.stderr
    assert "published as run 1" in done.stdout
    with server.client() as c:
        (model,) = c.get("/v1/cost-models").json()
    assert model["run_ids"] == [1] and model["publisher"] == "publish"
