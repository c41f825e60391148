"""The service's pages for people: server-rendered HTML, no scripts, no front-end build."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

from hyinf import __version__
from hyinf.plans_db import catalog
from hyinf.plans_db.schema import Device, PlanRow
from hyinf.plans_db.store import Database

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:75em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}code{font-size:12px}
.incremental{background:#d9f2d9}.full{background:#f8e1c8}.unchanged{color:#888}.retracted{text-decoration:line-through;color:#999}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>{body}<p><small>hyinf {__version__} · <a href=/docs>API</a></small></p></body></html>")


def _table(id_: str, head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p id={id_}>{escape(empty)}</p>"
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id={id_}><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr>{cells}</table>"


def _error(metrics: dict[str, Any]) -> str:
    learned = metrics.get("learned") or {}
    mape = learned.get("mape")
    return f"{100 * mape:.1f}% (n={learned.get('count', '?')})" if isinstance(mape, (int, float)) else "–"


def index(db: Database) -> str:
    """Devices, cost models with their held-out error and lineage, and the plans of each model."""
    devices = [[str(d.id), escape(d.device_class), str(d.cores), escape(d.driver or "–"), escape(d.torch_version),
                escape(d.onnxruntime_version or "–")] for d in catalog.devices(db)]
    models = [[str(m.id), escape(d.device_class), escape(m.backend), _error(m.metrics),
               escape(", ".join(map(str, m.run_ids)) or "–"), escape(m.publisher or "local"), f"<code>{m.digest[:12]}</code>"]
              for m, d in catalog.cost_models(db)]
    by_model: dict[str, list[tuple[PlanRow, Device]]] = defaultdict(list)
    for p, d in catalog.plans(db):
        by_model[p.model_fingerprint].append((p, d))
    sections = []
    for fingerprint, rows in by_model.items():
        name = rows[0][0].body["model"].get("name") or "model"
        table = _table(f"plans-{fingerprint[:12]}", ["plan", "settings", "device class", "predicted (plan)", "all-incremental",
                                                      "all-full", "cost model", "publisher"],
                       [[f"<a href=/plans/{p.id}>{p.id}</a>", escape(_settings(p.body["settings"])), escape(d.device_class),
                         _seconds(p.body, "plan"), _seconds(p.body, "all-incremental"), _seconds(p.body, "all-full"),
                         str(p.cost_model_id or "analytic"), escape(p.publisher or "local")] for p, d in rows], "")
        sections.append(f"<h3>{escape(name)} <code>{fingerprint[:12]}</code></h3>{table}")
    body = (f"<h2>Devices</h2>{_table('devices', ['id', 'class', 'cores', 'driver', 'torch', 'onnxruntime'], devices, 'No devices yet.')}"
            f"<h2>Cost models</h2>{_table('cost-models', ['id', 'device class', 'backend', 'held-out error', 'runs', 'publisher', 'digest'], models, 'No cost models yet.')}"
            f"<h2>Plans</h2>{''.join(sections) or '<p id=plans>No plans yet.</p>'}")
    return _page("hyinf plans service", body)


def plan(p: PlanRow, d: Device) -> str:
    """One plan: its provenance and each node's mode."""
    body = p.body
    state = " retracted" if p.retracted_at is not None else ""
    facts = [["model", escape(body["model"].get("name") or "–")], ["structure", f"<code>{p.model_fingerprint}</code>"],
             ["settings", escape(_settings(body["settings"]))], ["device", escape(d.device_class)],
             ["cost model", escape(str(body["cost_model"]))], ["strategy", escape(str(body.get("strategy")))],
             ["digest", f"<code>{p.digest}</code>"], ["published by", escape(f"{p.publisher or 'local'} on {p.machine or '?'}")],
             ["hyinf", escape(p.hyinf_version)], ["created", escape(str(p.created_at))]]
    nodes = [[escape(n["name"]), escape(n.get("op", "")), escape(n.get("label", "")), escape(str(n.get("map") or "–")),
              escape(str(n.get("window") or "–")), f"<span class='{escape(n['mode'])}'>{escape(n['mode'])}</span>"]
             for n in body["nodes"]]
    predicted = [[escape(k), f"{v:.4g} s"] for k, v in body.get("predicted_s", {}).items()]
    return _page(f"Plan {p.id}{state}", _table("facts", ["", ""], facts, "") + _table("predicted", ["plan", "predicted"], predicted, "")
                 + "<h2>Nodes</h2>" + _table("nodes", ["node", "op", "label", "map", "window", "mode"], nodes, "No nodes."))


def _settings(s: dict[str, Any]) -> str:
    return f"{s['image_size'][0]}x{s['image_size'][1]}, patch {s['patch'][0]}, stride {s['stride'][0]}, {s.get('backend', 'torch')}"


def _seconds(body: dict[str, Any], key: str) -> str:
    value = body.get("predicted_s", {}).get(key)
    return f"{value:.3g} s" if isinstance(value, (int, float)) else "–"
