"""Builders and waits shared by the tests: one place, so a change of a value type or of how a
test waits is made once.

- ``identity`` / ``observation`` / ``rig_view``: value types with the defaults most tests want
  (a stock S19j Pro at 10.0.0.1, normal mode), every field overridable by keyword.
- ``make_loop`` / ``tick_report``: a real ControlLoop over an empty inventory, an empty report
  (tests of what is saved and restored around a loop).
- ``eventually`` / ``wait_rig_mode``: poll until something holds; never a fixed sleep.
- ``write_toml``: a TOML file in a test's folder.
- a daemon in a subprocess: ``write_config`` (a configuration for rigs of the session fleet),
  ``start``, ``log_events`` / ``wait_log`` (its JSON log), ``NotifySocket`` (a real
  NOTIFY_SOCKET; the ``notify`` fixture in conftest.py gives one per test).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.loop import ControlLoop, TickReport
from daemon.observer import Observer
from daemon.reconciler import Actuator, Reconciler
from drivers.inventory import Inventory
from market.service import Market
from policies.api import RigView, Site
from policies.economics import ModePoint
from policies.guards import GuardConfig
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId

if TYPE_CHECKING:
    from conftest import SimFleet

REPO = Path(__file__).resolve().parents[1]

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


def make_loop() -> ControlLoop:
    """A real ControlLoop over an empty inventory: nothing to observe, its state to hold."""
    observer = Observer(Inventory())
    return ControlLoop(
        observer=observer,
        market=Market({}),
        policies=[],
        site=Site(),
        guard_config=GuardConfig(),
        reconciler=Reconciler(),
        actuator=Actuator(observer.drivers),
    )


def tick_report(now: float) -> TickReport:
    """A tick at ``now`` that observed, decided and sent nothing."""
    return TickReport(now, 0, 0, 0.0, 0.0, 0, 0, 0, None, None, {}, {}, [])


# ---------------------------------------------------------------------------------------------
# waits


async def eventually(
    check: Callable[[], Awaitable[bool]],
    limit_s: float = 20.0,
    every_s: float = 0.1,
    what: str = "condition",
    *,
    sim: SimFleet | None = None,
    sim_step_s: float = 10.0,
) -> None:
    """Poll ``check`` until it holds; fail after ``limit_s`` (a bound, not a wait: a passing
    test returns as soon as the condition holds). With ``sim``, the simulator's clock jumps
    ``sim_step_s`` ahead between polls, so physics (booting, cooling, a reboot) takes no wall
    time to happen."""
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {limit_s} s")
        if sim is not None:
            await asyncio.to_thread(sim.control.advance_clock, sim_step_s)
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
    path.write_text(body, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# a daemon in a subprocess

# The session fleet's rigs a daemon under test controls (tests/test_service.py and others).
KEYS = ["s19jpro", "s19xp", "s21", "m30s", "m50s", "m60s-v3"]


class NotifySocket:
    """A real NOTIFY_SOCKET: collects the daemon's datagrams with their arrival times."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def fields(self, key: str) -> list[tuple[float, str]]:
        out = []
        for at, text in list(self.messages):
            for line in text.splitlines():
                k, _, v = line.partition("=")
                if k == key:
                    out.append((at, v))
        return out

    async def wait(
        self,
        key: str,
        count: int = 1,
        timeout: float = 60.0,
        after: float = 0,
        containing: str = "",
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [v for at, v in self.fields(key) if at >= after and containing in v]
            if len(found) >= count:
                return found[count - 1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {key} (x{count}) within {timeout} s: {self.messages[-8:]}")


def write_config(
    path: Path,
    sim: SimFleet,
    *,
    hashprice: float = 80.0,
    extra: str = "",
    keys: list[str] = KEYS,
    top: str = "",
) -> Path:
    rigs = "\n".join(f'[[rigs]]\naddress = "{sim.address(k)}"' for k in keys)
    path.write_text(f"""
state_dir = "{path.parent / "state"}"
{top}
[control]
tick_s = 1
confirm_deadline_s = 20
[control.guards]
min_dwell_s = 0
ramp_kw_per_min = 100000
ramp_rigs_per_s = 100
[[market.hashprice]]
type = "fixed"
value = {hashprice}
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
{extra}
{rigs}
""")
    return path


def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    log = (config.parent / "daemon.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "--log-json", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=log,
        text=True,
    )


def log_events(config: Path) -> list[dict[str, Any]]:
    out = []
    for line in (config.parent / "daemon.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def wait_log(
    config: Path, event: str, timeout: float = 60.0, count: int = 1
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in log_events(config) if e.get("event") == event]
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no log event {event!r} within {timeout} s")
