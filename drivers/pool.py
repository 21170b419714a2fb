"""Bounded concurrency without a task per item."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


async def bounded_map(
    items: Sequence[T], fn: Callable[[T], Awaitable[R]], concurrency: int
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``concurrency`` calls in flight.

    A fixed pool of workers pulls the next item, so 10,000 items cost ``concurrency`` tasks,
    not 10,000 (pyasic's own helpers create every task up front, and given 1,000 addresses at
    once all of them time out). Results keep the order of ``items``; ``fn`` must not raise.
    """
    results: list[R | None] = [None] * len(items)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(items):
            i = next_index
            next_index += 1
            results[i] = await fn(items[i])

    workers = max(1, min(concurrency, len(items)))
    await asyncio.gather(*(worker() for _ in range(workers)))
    return cast(list[R], results)
