"""Builders and waits shared by the tests: one place, so a change of a value type or of how a
test waits is made once.

- ``identity`` / ``observation`` / ``rig_view``: value types with the defaults most tests want
  (a stock S19j Pro at 10.0.0.1, normal mode), every field overridable by keyword.
- ``eventually`` / ``wait_rig_mode``: poll until something holds; never a fixed sleep.
- ``write_toml``: a TOML file in a test's folder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.api import RigView
from policies.economics import ModePoint
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId

if TYPE_CHECKING:
    from conftest import SimFleet

# ---------------------------------------------------------------------------------------------
# value builders

S19JPRO = "S19j Pro"


def identity(
    rig_id: RigId = "10.0.0.1",
    *,
    make: Make = Make.ANTMINER,
    model: str = S19JPRO,
    firmware: str = "fw",
    driver: str = "antminer-stock",
) -> Identity:
    """A rig's identity; by default a stock S19j Pro."""
    return Identity(rig_id, make, model, firmware, driver)


def observation(
    rig_id: RigId = "10.0.0.1",
    mode: Mode = Mode.NORMAL,
    *,
    ths: float = 100.0,
    watts: float | None = 3000.0,
    source: PowerSource | None = PowerSource.ESTIMATED,
    at: float = 0.0,
    mining: bool | None = None,
    ident: Identity | None = None,
    **fields: Any,
) -> Observation:
    """An observation of ``rig_id`` in ``mode``; ``mining`` defaults to "hashes more than 0".

    ``fields`` are the optional fields of Observation (``boards``, ``max_chip_temp_c``,
    ``power_limit_w``, ``errors``...).
    """
    return Observation(
        ident or identity(rig_id),
        at,
        ths,
        watts,
        source,
        mode,
        ths > 0 if mining is None else mining,
        **fields,
    )


def rig_view(
    obs: Observation | None,
    modes: Iterable[Mode],
    points: Iterable[ModePoint] = (),
    *,
    rig_id: RigId | None = None,
    group: str = "",
    limits_w: tuple[int, int] | None = None,
) -> RigView:
    """The view a policy gets of one rig (``rig_id`` is the observation's unless given)."""
    if rig_id is None:
        assert obs is not None, "an unread rig needs its rig_id"
        rig_id = obs.rig_id
    return RigView(rig_id, obs, frozenset(modes), tuple(points), group, limits_w)


# ---------------------------------------------------------------------------------------------
# waits


async def eventually(
    check: Callable[[], Awaitable[bool]],
    limit_s: float = 20.0,
    every_s: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll ``check`` until it holds; fail after ``limit_s`` (a bound, not a wait: a passing
    test returns as soon as the condition holds)."""
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {limit_s} s")
        await asyncio.sleep(every_s)


async def wait_rig_mode(sim: SimFleet, address: str, mode: str, timeout: float = 30.0) -> None:
    """Wait until the simulator says rig ``address`` is in ``mode`` (its own truth)."""

    async def there() -> bool:
        state = await asyncio.to_thread(sim.control.rig, address)
        return bool(state["mode"] == mode)

    await eventually(there, timeout, 0.1, f"{address} in {mode}")


# ---------------------------------------------------------------------------------------------
# files


def write_toml(folder: Path, body: str, name: str = "rigpilot.toml") -> Path:
    """Write ``body`` to ``folder/name`` and return the path."""
    path = folder / name
    path.write_text(body)
    return path
