"""Running the daemon's event loop.

The daemon runs on asyncio's default loop, not uvloop: pyasic's detection closes transports in
ways uvloop rejects on cancellation ("unable to perform operation on <TCPTransport closed=True>"),
which breaks identification under load. The simulator, which never runs pyasic, uses uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the daemon's event loop."""
    return asyncio.run(main)
