"""Chunk sizes: how many positions are evaluated at once, by device."""

import pytest
import torch

from hyinf.errors import SettingsError
from hyinf.runtime.budget import DEFAULT_MAX_MEMORY, GPU_MAX_BATCH, MAX_BATCH, batch_size_for

MIB = 2**20


def test_cpu_chunks_fit_the_default_budget_and_cap() -> None:
    assert batch_size_for(110 * MIB, 729, None, None) == DEFAULT_MAX_MEMORY // (110 * MIB) == 18
    assert batch_size_for(MIB, 729, None, None) == MAX_BATCH
    assert batch_size_for(MIB, 10, None, None) == 10
    assert batch_size_for(110 * MIB, 729, 440 * MIB, None) == 4
    assert batch_size_for(10**12, 729, None, None) == 1  # never zero
    assert batch_size_for(MIB, 729, None, 200) == 200  # an explicit batch size wins over the cap


@pytest.mark.parametrize(("max_memory", "batch_size"), [(0, None), (-1, None), (None, 0)])
def test_impossible_budgets_are_refused(max_memory: int | None, batch_size: int | None) -> None:
    with pytest.raises(SettingsError):
        batch_size_for(MIB, 729, max_memory, batch_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_chunks_use_a_share_of_free_memory() -> None:
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    assert batch_size_for(MIB, 10_000, None, None, device) == min(GPU_MAX_BATCH, free // 4 // MIB)
    assert batch_size_for(110 * MIB, 729, 440 * MIB, None, device) == 4
