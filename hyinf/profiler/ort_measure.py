"""Timing the ONNX Runtime backend's own paths: the runtime's evaluation of a chunk exported as the ORT
backend exports it, with each choosable node's evaluation and its conversions in a scope of their own,
run by ONNX Runtime with its profiler on. ORT names every kernel after the scope of the node it comes
from, so the kernel times of a run add up per (node, kind) without any Python in the timed path.

Positions are constants of the graph: ORT folds their index arithmetic into the session, as the backend
computes index values once per grid (see `hyinf.runtime.ort_positions`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from hyinf.graph.geometry import OcclusionGrid
from hyinf.profiler.measure import ProbedRun, Setup, Times
from hyinf.profiler.sample import KINDS, Sample
from hyinf.runtime.engine import CleanImage, Engine
from hyinf.runtime.ort_backend import (
    Given,
    Key,
    Recorder,
    TracedRun,
    clean_value,
    providers,
    session_options,
)
from hyinf.runtime.onnx_export import export_onnx
from hyinf.runtime.program import TorchProgram

REORDERS = frozenset({"ReorderInput", "ReorderOutput"})  # the NCHWc layout's conversions
SCOPE = "hyinf_probe_"  # scope names: unique enough not to meet a name the exporter makes


class _Scope(nn.Module):
    """A module call the tracer records as a scope: the exporter prefixes the name of every node made
    inside it."""

    def forward(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


class _ScopedRun(ProbedRun, TracedRun):
    """An exported run whose probes run in their scopes; conversions become outputs, so the exporter keeps them."""

    def __init__(self, engine: Engine, clean: CleanImage, fill: torch.Tensor, nodes: set[str], scopes: nn.ModuleDict,
                 names: dict[tuple[str, str], str]) -> None:
        super().__init__(engine, clean, fill, nodes)
        self.scopes, self.names = scopes, names
        self.conversions: list[torch.Tensor] = []

    def probe(self, name: str, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self.scopes[self.names[name, kind]](compute)
        if kind in ("to_full", "to_win"):
            self.conversions.append(value)
        return value


class _Probes(nn.Module):
    """(fill, clean values) -> every probed value of the all-incremental and the all-full run at the setup's positions."""

    def __init__(self, setup: Setup, keys: list[Key]) -> None:
        super().__init__()
        self.setup, self.keys = setup, keys
        self.names = {(n, kind): f"{SCOPE}{i * len(KINDS) + k}" for i, n in enumerate(sorted(setup.nodes)) for k, kind in enumerate(KINDS)}
        self.scopes = nn.ModuleDict({scope: _Scope() for scope in self.names.values()})

    def forward(self, fill: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_outputs(self.setup, Given(dict(zip(self.keys, values))), fill, self.scopes, self.names))  # type: ignore[arg-type]


def _outputs(setup: Setup, clean: CleanImage, fill: torch.Tensor, scopes: nn.ModuleDict,
             names: dict[tuple[str, str], str]) -> list[torch.Tensor]:
    """The output node's value and every conversion of both runs. The output's own value is returned as
    computed (its paste into whole maps is a probed conversion, which a final paste would duplicate)."""
    graph = setup.program.graph
    ex = torch.zeros_like(setup.idx)
    out = []
    for engine in setup.engines():
        run = _ScopedRun(engine, clean, fill, setup.nodes, scopes, names)
        run._interpret(ex, setup.idx, graph.nodes, {}, graph.output)
        out += [run.env[graph.output].reshape(-1), *(c.reshape(-1) for c in run.conversions)]  # reshaped outside the scopes:
        # ORT names a kernel computing a graph output after the output, which would lose its scope
    return out


def measure_ort(program: TorchProgram, grid: OcclusionGrid, *, positions: int, repeats: int, warmup: int = 1, source: str, config: str) -> list[Sample]:
    """Time every choosable node of `program` in both modes, and its conversions, as ONNX Runtime runs
    the backend's lowering, for a chunk of `positions` positions of `grid` (see `measure_program`)."""
    setup = Setup.make(program, grid, positions)
    recorder = Recorder(setup.clean)
    module = _Probes(setup, [])
    with torch.no_grad():
        outputs = len(_outputs(setup, recorder, setup.fill, module.scopes, module.names))  # type: ignore[arg-type]
        module.keys = recorder.keys
        values = [clean_value(setup.clean, key).clone() for key in recorder.keys]  # distinct tensors: the tracer merges repeated ones
        names = ["fill", *(f"clean{k}" for k in range(len(values)))]
        model, _ = export_onnx(module, (setup.fill, *values), names, [f"out{k}" for k in range(outputs)])
    with tempfile.TemporaryDirectory(prefix="hyinf-ort-profile-") as folder:
        options = session_options(arena=program.device.type == "cpu")
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(folder, "run")
        options.log_severity_level = 3  # its note that a saved optimized graph suits this machine only
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")  # to name the kernels the optimizer made
        session = ort.InferenceSession(model, options, providers=providers(program.device))
        owners = kernel_owners(onnx.load(options.optimized_model_filepath).graph, {s: k for k, s in module.names.items()})
        feed = {i.name: dict(zip(names, (setup.fill, *values)))[i.name].cpu().numpy() for i in session.get_inputs()}
        for _ in range(warmup + repeats):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    return setup.samples(kernel_times(events, owners, warmup), source, config)


def kernel_times(events: list[dict[str, Any]], owners: dict[str, tuple[str, str]], warmup: int) -> Times:
    """Seconds per (node, kind) in each run after the first `warmup`, from an ORT profile's events and
    the (node, kind) each kernel of the optimized graph belongs to (`kernel_owners`)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    times: Times = defaultdict(list)
    for start, stop in runs[warmup:]:
        per: dict[tuple[str, str], float] = defaultdict(float)
        for event in kernels:
            owner = owners.get(event["name"].removesuffix("_kernel_time"))
            if start <= event["ts"] <= stop and owner is not None:
                per[owner] += event["dur"] / 1e6
        for key, total in per.items():
            times[key].append(total)
    return dict(times)


def kernel_owners(graph: onnx.GraphProto, scopes: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The (node, kind) of every node of ORT's optimized graph: its scope's where the exporter named it,
    else (a node the optimizer made, named after its output) that of the node that made its input.
    Layout reorders belong to none: a one-operator graph pays them at its edges, while in a model
    consecutive kernels keep the blocked layout between them."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def owner(node: onnx.NodeProto, seen: frozenset[str] = frozenset()) -> tuple[str, str] | None:
        if node.op_type in REORDERS:
            return None
        for part in node.name.split("/"):
            if part in scopes:
                return scopes[part]
        if node.name in seen:
            return None
        seen = seen | {node.name}
        return next((o for o in (owner(producer[i], seen) for i in node.input if i in producer) if o is not None), None)

    return {node.name: o for node in graph.node if (o := owner(node)) is not None}
