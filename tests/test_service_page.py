"""The service's page in a real browser (Debian's Chromium, driven by Playwright; nothing downloads
a browser): devices, cost models with their error and lineage, plans with predicted times, and each
node's mode on a plan's page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from service_support import Server
from test_service import FP, SETTINGS, _device, _graph, _samples

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def page() -> Iterator[object]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page()
        browser.close()


def test_the_page_shows_devices_cost_models_plans_and_modes(sqlite_server: Server, page) -> None:
    from hyinf.graph.ir_json import graph_to_json

    with sqlite_server.client() as c:
        empty = c.get("/").text
    assert "No devices yet." in empty and "No plans yet." in empty
    with sqlite_server.client(sqlite_server.token("publish", "lab")) as c:
        run = {"device": _device(FP), "threads": 2, "quick": True, "settings": {}, "samples": _samples(24)}
        run_id = c.post("/v1/profile-runs", json=run).json()["id"]
        model_id = c.post("/v1/cost-models/fit", json={"device_class": FP.device_class}).json()["id"]
        found = c.post("/v1/plans/search", json={"structure": graph_to_json(_graph()), "settings": SETTINGS, "device": _device(FP)}).json()
    page.goto(sqlite_server.url + "/")
    assert page.title() == "hyinf plans service"
    assert FP.device_class in page.locator("#devices").inner_text()
    models = page.locator("#cost-models").inner_text()
    assert str(model_id) in models and "%" in models and str(run_id) in models and "lab" in models
    plan_id = found["plan"]["id"]
    row = page.locator(f"a[href='/plans/{plan_id}']")
    assert row.count() == 1 and " s" in page.locator("table[id^=plans-]").inner_text()
    row.click()
    page.wait_for_url(f"**/plans/{plan_id}")
    nodes = page.locator("#nodes")
    modes = {cell.inner_text() for cell in nodes.locator("td:last-child").all()}
    assert modes <= {"incremental", "full", "unchanged"} and len(nodes.locator("tr").all()) == len(found["document"]["nodes"]) + 1
    assert found["plan"]["digest"] in page.locator("#facts").inner_text()
