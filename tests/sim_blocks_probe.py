"""Run by tests/test_sim_blocks.py in a process of its own: several simulator processes, one
per address block, sharing ports 4028/80/4433 in a fresh network namespace (the test
session's namespace already has a simulator on those ports). Prints one JSON line of facts
for the test to check."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.observer import Observer, ObserverSettings
from drivers.inventory import Inventory
from drivers.transport import DriverError, request
from policies.values import Mode, Observation
from simulator import launch
from simulator.netns import enter_private_netns


async def probe(fleet: launch.RunningFleet) -> dict[str, Any]:
    addresses = [r["address"] for r in fleet.rigs]
    inventory = Inventory()
    failures = await inventory.ensure(addresses)
    observer = Observer(inventory, ObserverSettings(timeout_s=3.0))
    first = await observer.cycle()
    models = {a: inventory.rigs[a].model for a in inventory.rigs}
    block1 = [a for a in addresses if a.startswith("127.2.")]
    victim = block1[0]
    fleet.control.set_fault(victim, "refuse")
    faulted = await observer.cycle()
    fleet.control.clear_faults(victim)
    writes_before = fleet.control.rig(victim)["counters"]["writes"]
    result = await observer.drivers[victim].apply(Mode.SLEEP, None, 10.0)
    truth = fleet.control.rig(victim)
    try:
        await request("127.3.0.1", 4028, b'{"command":"summary"}', 2.0)
        stray = "answered"
    except DriverError as exc:
        stray = exc.kind.value
    stats = fleet.control.stats()
    return {
        "addresses": addresses,
        "identify_failures": len(failures),
        "models": models,
        "first_ok": sorted(a for a, r in first.readings.items() if isinstance(r, Observation)),
        "faulted": {a: getattr(r, "kind", "ok") for a, r in faulted.readings.items()},
        "victim": victim,
        "sent": result.sent,
        "writes": [writes_before, truth["counters"]["writes"]],
        "mode_after": truth["mode"],
        "stray": stray,
        "block_rigs": [b["rigs"] for b in stats["blocks"]],
        "pids": [b["pid"] for b in stats["blocks"]],
        "rigs": stats["rigs"],
    }


def main() -> int:
    enter_private_netns()
    folder = Path(tempfile.mkdtemp(prefix="rigpilot-blocks-"))
    args = ["--antminer", "s19jpro:3", "--whatsminer", "m30s+:3", "--time-scale", "30"]
    fleet = launch.start_blocks(args, folder, 2)
    try:
        facts = asyncio.run(probe(fleet))
    finally:
        fleet.stop()
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
