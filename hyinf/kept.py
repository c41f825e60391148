"""What a process keeps between calls: the last few values built, by key."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Kept(Generic[V]):
    """The last `size` values built, by key; the oldest goes when more are held."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: dict[Hashable, V] = {}

    def get(self, key: Hashable, build: Callable[[], V], valid: Callable[[V], bool] = lambda _: True) -> V:
        """The value kept for `key` while `valid`, else `build()`'s, kept from now on (not when it raises)."""
        if key in self.entries and valid(self.entries[key]):
            return self.entries[key]
        value = self.entries[key] = build()
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))
        return value
