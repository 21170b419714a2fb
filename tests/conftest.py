"""Shared fixtures.

The whole test session runs inside a private network namespace (entered in
``pytest_configure``), so simulated rigs can listen on every 127.x.y.z address and on port 80,
and everything the tests start (simulator, broker) inherits the namespace. Under pytest-xdist
(``-n N``, as ``make test`` runs) each worker enters a namespace of its own, so each has its own
session fleet on the same addresses and ports, and no worker sees another's rigs or brokers.

Fixtures:
- ``broker`` (module): a real Mosquitto with TLS, the password file and the documented ACL
  (tests/broker.py), one per test module.
- ``sim_fleet`` (session): a simulator subprocess with every model; ``.rigs`` (identities),
  ``.control`` (SimControl), ``.address(key)`` / ``.addresses(key)`` by model key
  (``s19jpro``, ``m60s-v3`` for the API v3 firmware rig, ...).
- ``sim`` (function): the same fleet, with every rig reset to factory state after the test.
- ``notify`` (function): a real NOTIFY_SOCKET collecting a daemon's sd_notify datagrams.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import pytest
from broker import Broker
from helpers import NotifySocket
from hypothesis import settings

from daemon.logsetup import configure_logging
from simulator import launch
from simulator.client import SimControl
from simulator.netns import ensure_private_netns, enter_private_netns
from simulator.rig import SimClock

REPO = helpers.REPO  # tests import it from here too

# No per-example deadline (hypothesis' default is 200 ms): it is a timed assertion, and four
# workers on two cores, or a loaded machine, stretch an example past it. A test that sets its
# own deadline keeps it.
settings.register_profile("rigpilot", deadline=None)
settings.load_profile("rigpilot")

V3_FIRMWARE = "20251209.16.Rel2"
SIM_TIME_SCALE = 30.0

FLEET_ARGS = [
    "--antminer",
    "s19jpro:2",
    "--antminer",
    "s19xp:1",
    "--antminer",
    "s21:1",
    "--antminer",
    "s21pro:1",
    "--whatsminer",
    "m30s+:2",
    "--whatsminer",
    "m30s:1",
    "--whatsminer",
    "m50s:1",
    "--whatsminer",
    "m60s:1",
    "--whatsminer",
    f"m60s@{V3_FIRMWARE}:1",
    # models the catalogue does not know (tests/test_unknown_models.py)
    "--antminer",
    "s21xphyd:1",
    "--whatsminer",
    "m66s:1",
    # an Antminer on LuxOS (key "s19jpro-luxos"); the 14th rig, still inside scans of /28
    "--luxos",
    "s19jpro:1",
    # Antminers on ePIC PowerPlay and on VNish (keys "s19jpro-epic", "s19jpro-vnish";
    # tests/test_epic.py, tests/test_vnish.py): past the hosts of a /28, so the fleet scan
    # covers a /27 (the simulator numbers rigs by firmware: Braiins OS, below, comes first)
    "--epic",
    "s19jpro:1",
    "--vnish",
    "s19jpro:1",
    # An Antminer on Braiins OS (key "s19jpro-braiins"; tests/test_firmware_matrix.py, which
    # drives one rig of every firmware family through the daemon): the 17th rig, inside the /27
    "--braiins",
    "s19jpro:1",
    # power switches (tests/test_switches.py): an APC and a Raritan PDU with two outlets each,
    # a Shelly and a Tasmota plug, on 127.2.0.1-4 (outside the rigs' /28); they feed the first
    # six rigs above, one outlet each, and stay on unless a test switches them (a rig reset
    # turns its outlets back on)
    "--pdu",
    "apc:2",
    "--pdu",
    "raritan:2",
    "--plug",
    "shelly",
    "--plug",
    "tasmota",
]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker starts inside the controller's private namespace (as root there: the
        # controller's user namespace maps it so), and takes one more of its own: the fleets
        # of two workers would otherwise fight over 127.x:4028/80/4433.
        enter_private_netns(threaded=True)
    else:
        ensure_private_netns()
    # As the rigpilot entry point does: logs go to stderr, never into a command's stdout.
    configure_logging(level="info", json=False, stream=sys.stderr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the tests marked slow go first (each file's in its order): the scheduler
    hands out tests in this order, and a two-minute test started last would hold the whole run
    up by two minutes. Every worker sorts the same way, as xdist requires."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@dataclass
class SimFleet:
    rigs: list[dict[str, Any]]
    control: SimControl
    proc: subprocess.Popen[str]
    keys: list[str]

    def addresses(self, key: str) -> list[str]:
        """Addresses of the rigs of model ``key`` (``m60s-v3``: the API v3 firmware M60S)."""
        out = []
        for rig, rig_key in zip(self.rigs, self.keys, strict=True):
            if rig_key == key:
                out.append(rig["address"])
        if not out:
            raise KeyError(f"no simulated rig of model {key!r}")
        return out

    def address(self, key: str) -> str:
        return self.addresses(key)[0]

    def reset_all(self) -> None:
        for rig in self.rigs:
            self.control.reset(rig["address"])


@pytest.fixture(scope="session")
def sim_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    folder = tmp_path_factory.mktemp("sim")
    running = launch.start(
        [*FLEET_ARGS, "--time-scale", str(SIM_TIME_SCALE)],
        folder / "control.sock",
        folder / "sim.log",
    )
    keys = []
    for rig in running.rigs:
        key = running.control.rig(rig["address"])["key"]
        if rig["make"] in ("luxos", "epic", "vnish", "braiins"):
            key = f"{key}-{rig['make']}"
        keys.append(f"{key}-v3" if rig["firmware"] == V3_FIRMWARE else key)
    yield SimFleet(running.rigs, running.control, running.proc, keys)
    running.stop()


@pytest.fixture
def sim(sim_fleet: SimFleet) -> Iterator[SimFleet]:
    sim_fleet.reset_all()
    yield sim_fleet
    sim_fleet.reset_all()


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> Iterator[None]:
    """Tests that reconfigure logging (test_logsetup) must not leak into the next test."""
    yield
    configure_logging(level="info", json=False, stream=sys.stderr)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker per test module (tests/broker.py)."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A real NOTIFY_SOCKET in the test's folder (helpers.NotifySocket)."""
    n = NotifySocket(tmp_path)
    yield n
    n.close()


class FrozenClock(SimClock):
    """A simulated rig's clock that stands still at ``t`` (set it to move it)."""

    def __init__(self, t: float = 600.0) -> None:
        super().__init__()
        self.t = t

    def now(self) -> float:
        return self.t
