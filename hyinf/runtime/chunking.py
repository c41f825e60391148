"""The largest chunk of positions the runtime evaluates at once on each kind of device: what the
profiler measures at and the planner predicts for, so plans are made for the chunks that will run.
Kept free of torch so the planner can read it without loading the runtime."""

from __future__ import annotations

MAX_BATCH = 64  # larger chunks stop paying off on CPUs (caches) and only raise peak memory
# On a GPU, small chunks leave it waiting on kernel launches: on an H200, vgg16 naive re-inference
# at the CPU's budget (18 positions per chunk) ran 5x slower than captum at 32.
GPU_MAX_BATCH = 512


def largest_chunk(device_kind: str) -> int:
    """Positions per call on a device of this kind ("cpu" or "cuda") when memory allows."""
    return GPU_MAX_BATCH if device_kind == "cuda" else MAX_BATCH
