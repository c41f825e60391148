"""The plans service as a fleet uses it: a real `hyinf serve` process over SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Any

import httpx
import pytest
import torch
from service_support import HYINF, Server, start_server
from torch import nn

from hyinf.canonical import digest
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.ir_json import graph_from_json, graph_to_json
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import SCHEMA_VERSION, PlanDocument
from hyinf.planner.select import make_plan
from hyinf.profiler.machine import DeviceFingerprint

FP = DeviceFingerprint("cpu", "Test CPU 9000", 8, "", "2.14.1", "1.20.0")


@pytest.fixture
def server(shared_server: Server) -> Server:
    return shared_server


@pytest.fixture
def fp() -> DeviceFingerprint:
    """A device class of the test's own on the shared server."""
    return replace(FP, name=f"Test CPU {uuid.uuid4().hex[:8]}")
SETTINGS = {"image_size": [32, 32], "patch": [8, 8], "stride": [4, 4], "backend": "torch"}


def _graph(width: int = 8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4)).eval()
    return trace_torch(model, (1, 3, 32, 32)).graph


def _document(graph, device: DeviceFingerprint = FP, stride: int = 4) -> PlanDocument:
    grid = OcclusionGrid.make((32, 32), 8, stride)
    return make_plan(graph, grid, device, model_name="tiny", db=None)


def _device(fp: DeviceFingerprint) -> dict[str, Any]:
    return asdict(fp)


def test_the_ir_travels_as_json_without_losing_structure() -> None:
    graph = _graph()
    again = graph_from_json(json.loads(json.dumps(graph_to_json(graph))))
    assert again == graph and graph_fingerprint(again) == graph_fingerprint(graph)


def test_health_openapi_and_errors_are_json(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert "/v1/plans/search" in c.get("/openapi.json").json()["paths"]
        for response in (c.post("/v1/plans", content=b"{not json", headers={"content-type": "application/json"}),
                         c.get("/v1/plans/999"), c.get("/v1/plans/abc"), c.post("/v1/plans/match", json={"fingerprint": "x"})):
            assert 400 <= response.status_code < 500 and "error" in response.json(), response.text


def test_tokens_decide_who_may_write(server: Server, fp: DeviceFingerprint) -> None:
    document = _document(_graph(), fp).body
    reader, publisher, admin = server.token("read"), server.token("publish", "ci"), server.token("admin")
    with server.client() as anonymous:
        refused = anonymous.post("/v1/plans", json={"document": document})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    with server.client("hyinf_not-a-token") as c:
        assert c.post("/v1/plans", json={"document": document}).status_code == 401
    with server.client(reader) as c:
        assert c.post("/v1/plans", json={"document": document}).status_code == 403
    with server.client(publisher) as c:
        published = c.post("/v1/plans", json={"document": document})
        assert published.status_code == 201
        assert c.delete(f"/v1/plans/{published.json()['id']}").status_code == 403  # retracting is the admin's
    listed = subprocess.run([HYINF, "serve", "token", "list", "--db", server.db], capture_output=True, text=True, check=True).stdout
    ci = next(line.split("\t")[0] for line in listed.splitlines() if "\tci\t" in line)
    subprocess.run([HYINF, "serve", "token", "revoke", ci, "--db", server.db], check=True, capture_output=True)
    with server.client(publisher) as c:
        assert c.post("/v1/plans", json={"document": document}).status_code == 401  # revoked
    with server.client(admin) as c:
        assert c.delete(f"/v1/plans/{published.json()['id']}").json() == {"id": published.json()["id"], "retracted": True}


def test_private_reads_need_a_token(db_url: str) -> None:
    s = start_server(db_url, "--no-public-read")
    try:
        with s.client() as c:
            assert c.get("/v1/plans").status_code == 401 and c.get("/").status_code == 401
        with s.client(s.token("read")) as c:
            assert c.get("/v1/plans").status_code == 200
    finally:
        s.stop()


def test_publishing_is_idempotent_and_downloads_carry_their_digest(server: Server, fp: DeviceFingerprint) -> None:
    graph = _graph()
    document = _document(graph, fp).body
    with server.client(server.token("publish")) as c:
        first = c.post("/v1/plans", json={"document": document, "structure": graph_to_json(graph)})
        again = c.post("/v1/plans", json={"document": json.loads(json.dumps(document))})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json() == {**again.json(), "created": True} and first.json()["digest"] == digest(document)
        got = c.get(f"/v1/plans/{first.json()['id']}")
        assert got.headers["etag"] == f'"{digest(got.json())}"' and got.json() == json.loads(json.dumps(document))
        assert c.get(f"/v1/plans/{first.json()['id']}", headers={"if-none-match": got.headers["etag"]}).status_code == 304
        listed = c.get("/v1/plans", params={"fingerprint": graph_fingerprint(graph), "device_class": fp.device_class}).json()
        assert [p["id"] for p in listed] == [first.json()["id"]] and listed[0]["publisher"] == "publish"


@pytest.mark.parametrize("case", ["other model", "bad blocks", "schema version", "not a plan", "nodes renamed"])
def test_plans_that_do_not_fit_are_refused_whole(server: Server, fp: DeviceFingerprint, case: str) -> None:
    graph = _graph()
    document = json.loads(json.dumps(_document(graph, fp).body))
    structure = graph_to_json(graph)
    if case == "other model":
        structure = graph_to_json(_graph(width=6))
    elif case == "bad blocks":
        document["blocks"][0]["cols"] = document["blocks"][1]["cols"]  # block 0 covers block 1's positions again
    elif case == "schema version":
        document["schema_version"] = SCHEMA_VERSION + 1
    elif case == "not a plan":
        document = {"hello": "world"}
    else:
        structure["nodes"][1]["name"] = "renamed"
        for node in structure["nodes"][2:]:
            node["inputs"] = ["renamed" if i == graph.nodes[1].name else i for i in node["inputs"]]
    with server.client(server.token("publish")) as c:
        refused = c.post("/v1/plans", json={"document": document, "structure": structure})
        assert refused.status_code == 422 and refused.json()["error"], refused.text
        assert c.get("/v1/plans", params={"device_class": fp.device_class}).json() == []  # nothing written
        assert fp.device_class not in {d["device_class"] for d in c.get("/v1/devices").json()}


def test_bodies_over_the_limit_are_refused(server: Server) -> None:
    with server.client(server.token("publish")) as c:
        huge = c.post("/v1/plans", content=b" " * (64 * 2**20 + 1), headers={"content-type": "application/json"})
        assert huge.status_code == 413 and "limit" in huge.json()["error"]

        def chunks():
            for _ in range(65):
                yield b" " * 2**20

        streamed = c.post("/v1/plans", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_search_plans_on_the_server_and_finds_it_again(server: Server, fp: DeviceFingerprint) -> None:
    graph = _graph()
    request = {"structure": graph_to_json(graph), "settings": SETTINGS, "device": _device(fp)}
    with server.client(server.token("publish")) as c:
        first = c.post("/v1/plans/search", json=request)
        assert first.status_code == 201, first.text
        again = c.post("/v1/plans/search", json=request)
        assert again.status_code == 200 and again.json()["plan"]["id"] == first.json()["plan"]["id"]
        by_class = c.post("/v1/plans/search", json={**request, "device": None, "device_class": fp.device_class})
        assert by_class.json()["plan"]["id"] == first.json()["plan"]["id"]
        document = PlanDocument.parse(json.dumps(first.json()["document"]))
        assert document.model_fingerprint == graph_fingerprint(graph)
        assert document.bind(graph, OcclusionGrid.make((32, 32), 8, 4), fp)  # a plan this model can run
        unknown = c.post("/v1/plans/search", json={**request, "device": None, "device_class": "cpu:Nowhere"})
        assert unknown.status_code == 404 and "known_classes" in unknown.json()
        wrong_size = c.post("/v1/plans/search", json={**request, "settings": {**SETTINGS, "image_size": [64, 64]}})
        assert wrong_size.status_code == 422


def test_lookup_is_graded_exact_then_class_then_a_miss_that_names_what_differed(server: Server, fp: DeviceFingerprint) -> None:
    graph = _graph(width=5)  # a structure of this test's own: the closest plans are its own
    with server.client(server.token("publish")) as c:
        c.post("/v1/plans", json={"document": _document(graph, fp).body}).raise_for_status()
        ask = {"fingerprint": graph_fingerprint(graph), "settings": SETTINGS, "device": _device(fp)}
        exact = c.post("/v1/plans/match", json=ask).json()
        assert exact["match"] == "exact" and exact["differs"] == []
        newer = replace(fp, torch_version="2.15.0", cores=16)
        near = c.post("/v1/plans/match", json={**ask, "device": _device(newer)}).json()
        assert near["match"] == "class" and near["differs"] == ["cores", "torch_version"]
        assert near["plan"]["id"] == exact["plan"]["id"]
        miss = c.post("/v1/plans/match", json={**ask, "settings": {**SETTINGS, "stride": [8, 8]},
                                               "device": _device(replace(fp, name="Other CPU"))})
        assert miss.status_code == 404
        assert miss.json()["closest"][0] == {"id": exact["plan"]["id"], "differs": ["settings", "device class"]}


def test_retracted_plans_leave_lookups(server: Server, fp: DeviceFingerprint) -> None:
    graph = _graph()
    with server.client(server.token("publish")) as c:
        plan_id = c.post("/v1/plans", json={"document": _document(graph, fp).body}).json()["id"]
    with server.client(server.token("admin")) as c:
        assert c.get(f"/v1/plans/{plan_id}").status_code == 200  # kept by the server from now on
        assert c.delete(f"/v1/plans/{plan_id}").json()["retracted"] is True
        assert c.delete(f"/v1/plans/{plan_id}").json()["retracted"] is False
        assert c.get(f"/v1/plans/{plan_id}").status_code == 410
        assert c.get("/v1/plans", params={"device_class": fp.device_class}).json() == []
        ask = {"fingerprint": graph_fingerprint(graph), "settings": SETTINGS, "device": _device(fp)}
        assert c.post("/v1/plans/match", json=ask).status_code == 404


def _samples(count: int) -> list[dict[str, Any]]:
    from hyinf.profiler.sweep import run_sweep, sample_configs

    out = []
    for samples in run_sweep(sample_configs(count, 0), torch.device("cpu"), 2):
        out += [{"source": s.source, "config": s.config, "kind": s.kind, "op": s.op, "features": dict(s.features),
                 "times": list(s.timing.times)} for s in samples]
    return out


def test_uploaded_runs_fit_a_cost_model_that_search_then_uses(server: Server, fp: DeviceFingerprint) -> None:
    samples = _samples(40)
    run = {"device": _device(fp), "backend": "torch", "threads": 2, "quick": True, "settings": {"configs": 40}, "samples": samples}
    with server.client(server.token("publish")) as c:
        run_id = c.post("/v1/profile-runs", json=run).json()["id"]
        fitted = c.post("/v1/cost-models/fit", json={"device_class": fp.device_class})
        assert fitted.status_code == 201, fitted.text
        assert c.post("/v1/cost-models/fit", json={"device_class": fp.device_class}).json()["created"] is False
        model = c.get(f"/v1/cost-models/{fitted.json()['id']}").json()["model"]
        assert model["run_ids"] == [run_id] and model["metrics"]["learned"]["count"] > 0 and model["digest"] == fitted.json()["digest"]
        graph = _graph()
        found = c.post("/v1/plans/search", json={"structure": graph_to_json(graph), "settings": SETTINGS, "device": _device(fp)}).json()
        assert found["plan"]["cost_model_id"] == model["id"] and found["document"]["cost_model"] == {"kind": "learned", "id": model["id"]}
        body = c.get(f"/v1/cost-models/{model['id']}").json()["body"]
        republished = c.post("/v1/cost-models", json={"device": _device(fp), "format_version": model["format_version"],
                                                      "run_ids": [run_id], "body": body, "metrics": {}})
        assert republished.json() == {"id": model["id"], "digest": model["digest"], "created": False}
        orphan = c.post("/v1/cost-models", json={"device": _device(fp), "format_version": model["format_version"], "run_ids": [999],
                                                 "body": body, "metrics": {}})
        assert orphan.status_code == 422 and "lineage" in orphan.json()["error"]
        garbage = c.post("/v1/cost-models", json={"device": _device(fp), "format_version": model["format_version"], "run_ids": [],
                                                  "body": {"trees": 1}, "metrics": {}})
        assert garbage.status_code == 422


def test_concurrent_publishers_lose_and_duplicate_nothing(server: Server, fp: DeviceFingerprint) -> None:
    graph = _graph()
    documents = [_document(graph, replace(fp, cores=n)).body for n in range(1, 9)]
    token = server.token("publish")
    answers: list[tuple[int, int]] = []

    def publish(k: int) -> None:
        with server.client(token) as c:
            for document in documents[k % 2::2] + documents:  # each document several times, in different orders
                r = c.post("/v1/plans", json={"document": document})
                answers.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _ in answers} <= {200, 201}
    with server.client() as c:
        stored = c.get("/v1/plans", params={"device_class": fp.device_class}).json()
    assert len(stored) == len(documents) == len({i for _, i in answers})
    assert sorted(p["digest"] for p in stored) == sorted(digest(json.loads(json.dumps(d))) for d in documents)
    assert sum(status == 201 for status, _ in answers) == len(documents)


def test_a_server_killed_mid_write_leaves_whole_rows(db_url: str) -> None:
    s = start_server(db_url)
    token = s.token("publish")
    graph = _graph()
    documents = [_document(graph, replace(FP, cores=n)).body for n in range(1, 41)]
    stop = threading.Event()

    def publish() -> None:
        with s.client(token) as c:
            for document in documents:
                if stop.is_set():
                    return
                try:
                    c.post("/v1/plans", json={"document": document})
                except httpx.TransportError:
                    return

    worker = threading.Thread(target=publish)
    worker.start()
    while len(httpx.get(f"{s.url}/v1/plans").json()) < 5:
        pass
    s.process.kill()  # SIGKILL: no graceful shutdown
    stop.set()
    worker.join()
    again = start_server(db_url)
    try:
        with again.client() as c:
            stored = c.get("/v1/plans").json()
            assert stored
            for row in stored:
                got = c.get(f"/v1/plans/{row['id']}")
                assert digest(got.json()) == row["digest"] == got.headers["etag"].strip('"')
    finally:
        again.stop()


def test_shutdown_lets_requests_in_flight_finish(tmp_path) -> None:
    """SIGTERM while a plan search runs: the search is answered, then the server exits."""
    import torchvision

    torch.manual_seed(0)
    graph = trace_torch(torchvision.models.resnet50(weights=None).eval(), (1, 3, 224, 224)).graph
    request = {"structure": graph_to_json(graph), "settings": {**SETTINGS, "image_size": [224, 224], "patch": [16, 16], "stride": [8, 8]},
               "device": _device(FP)}
    s = start_server(f"sqlite:///{tmp_path / 'shutdown.db'}")
    answers: list[int] = []
    with s.client(s.token("publish")) as c:
        worker = threading.Thread(target=lambda: answers.append(c.post("/v1/plans/search", json=request).status_code))
        worker.start()
        time.sleep(0.2)  # the search takes about half a second on the server
        s.process.terminate()
        worker.join(60)
    assert answers == [201]
    s.process.wait(timeout=30)
