"""Which machine costs were measured on: a fingerprint of the processor and the software stack."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch


@dataclass(frozen=True)
class DeviceFingerprint:
    kind: str  # cpu | cuda
    name: str  # CPU model, or GPU name
    cores: int  # CPU cores, or GPU multiprocessors
    driver: str  # CUDA version and compute capability; "" on CPU
    torch_version: str
    onnxruntime_version: str  # "" when onnxruntime is not installed

    @property
    def key(self) -> str:
        """A stable hash of every field: equal machines and software share profiles and plans."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    @property
    def device_class(self) -> str:
        """Devices of one class (same CPU model or GPU name) share cost models and plans, with word of
        what else differs."""
        return f"{self.kind}:{self.name}"

    @property
    def description(self) -> str:
        unit = "SMs" if self.kind == "cuda" else "cores"
        extra = f", {self.driver}" if self.driver else ""
        return f"{self.name} ({self.cores} {unit}{extra}), torch {self.torch_version}"


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def fingerprint(device: torch.device) -> DeviceFingerprint:
    """The fingerprint of `device` on this machine (the device must exist: see `resolve_device`)."""
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = f"CUDA {torch.version.cuda}, sm_{props.major}{props.minor}"
        return DeviceFingerprint("cuda", props.name, props.multi_processor_count, driver, torch.__version__, ort)
    return DeviceFingerprint("cpu", _cpu_name(), os.cpu_count() or 1, "", torch.__version__, ort)
