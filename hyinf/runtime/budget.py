"""How many occlusion positions to evaluate at once, from a memory budget."""

from __future__ import annotations

import math

import torch

from hyinf.errors import SettingsError
from hyinf.graph.ir import LOCAL_OPS
from hyinf.runtime.chunking import GPU_MAX_BATCH, MAX_BATCH, largest_chunk
from hyinf.runtime.engine import BlockedEngine, Engine, Repr

__all__ = ["DEFAULT_MAX_MEMORY", "GPU_MAX_BATCH", "MAX_BATCH", "batch_size_for", "bytes_per_position", "default_budget"]

DEFAULT_MAX_MEMORY = 2 * 1024**3  # bytes; leaves most of a 24 GiB machine free
GPU_MEMORY_SHARE = 4  # on a GPU the default budget is 1/4 of its free memory


def default_budget(device: torch.device) -> tuple[int, int]:
    """(memory budget in bytes, largest chunk) for `device` when the caller sets no budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // GPU_MEMORY_SHARE, largest_chunk("cuda")
    return DEFAULT_MAX_MEMORY, largest_chunk("cpu")


def bytes_per_position(blocked: BlockedEngine, element_size: int = 4) -> int:
    """An upper bound on the activation memory one position needs (all values alive at once)."""
    return max(_engine_bytes(engine, element_size) for engine in blocked.engines)


def _engine_bytes(engine: Engine, element_size: int) -> int:
    total = 0
    for node in engine.graph.nodes:
        rep = engine.repr[node.name]
        if rep is Repr.BASE:
            continue
        elements = math.prod(node.shape[1:])
        if rep is Repr.WIN:
            region = engine.regions[node.name]
            rows, cols = node.spatial_size
            elements = elements * region.window_area // (rows * cols)
            if node.op in LOCAL_OPS:  # the padded input window it reads
                read = engine.reads[node.name][0]
                assert read is not None
                src = engine.graph[read.src]
                srows, scols = src.spatial_size
                elements += math.prod(src.shape[1:]) * read.rows * read.cols // (srows * scols)
        total += elements
    return total * element_size


def batch_size_for(per_position: int, positions: int, max_memory: int | None, batch_size: int | None,
                   device: torch.device = torch.device("cpu")) -> int:
    """The chunk size: `batch_size` if given, else as many positions as fit `max_memory` (by
    default, `device`'s budget), at most `device`'s largest chunk."""
    check_limits(max_memory, batch_size)
    if batch_size is not None:
        return min(batch_size, positions)
    default, largest = default_budget(device)
    budget = default if max_memory is None else max_memory
    return max(1, min(positions, largest, int(budget // max(per_position, 1))))


def check_limits(max_memory: float | None, batch_size: int | None) -> None:
    """A memory budget and a chunk size a run can use (None: the default)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise SettingsError(f"batch_size must be at least 1, got {batch_size!r}")
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int | float)
                                   or not math.isfinite(max_memory) or max_memory <= 0):
        raise SettingsError(f"max_memory must be a positive, finite number of bytes, got {max_memory!r}")
