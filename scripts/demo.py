"""``make demo``: rigpilot's drivers and observer on a simulated fleet, end to end.

Until the control loop exists (``rigpilot run``), this is the demo: it starts ``rigpilot sim``
with a mixed fleet (one rig hung, one slow), identifies the rigs, reads them with the observer,
puts the rigs that lose money at the February 2026 hashprice to sleep (a hand-written threshold
here; the policy engine comes with ``rigpilot run``), confirms by observation against the
simulator's true state, then wakes them and watches their hashrate ramp back up.

    python -m scripts.demo [--keep-running]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HASHPRICE_USD_PER_PH_DAY = 34.9  # Feb 8 2026 (docs: ../shared/reference/economics.md)
POWER_USD_PER_KWH = 0.065
FLEET = [
    "--antminer", "s19jpro:2", "--antminer", "s19xp:2", "--antminer", "s21:2",
    "--whatsminer", "m30s+:2", "--whatsminer", "m50s:2", "--whatsminer", "m60s:2",
    "--fault", "127.1.0.2=hang", "--fault", "127.1.0.4=slow,delay_s=1.5",
]  # fmt: skip


def say(text: str = "") -> None:
    print(text, flush=True)


async def bounded(coro: Any, seconds: float) -> Any:
    """pyasic waits up to 100 s on a hung rig; never let one rig stall the rest."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except (TimeoutError, OSError, ValueError) as exc:
        return exc


def breakeven_usd_per_kwh(j_per_th: float) -> float:
    return HASHPRICE_USD_PER_PH_DAY / 1000 / (0.024 * j_per_th)


async def run(control: Path, rigs: list[dict[str, Any]]) -> None:
    from daemon.fleet_cli import _reading_line
    from daemon.observer import Observer, ObserverSettings
    from drivers.inventory import Inventory
    from policies.values import Mode, Observation
    from simulator.client import SimControl

    ctl = SimControl(control)
    inventory = Inventory()
    say(f"\n1. Identifying {len(rigs)} rigs (pyasic detection, 10 s deadline each)")
    t0 = time.monotonic()
    failures = await inventory.ensure([r["address"] for r in rigs], timeout_s=10)
    say(f"   {len(inventory.rigs)} identified in {time.monotonic() - t0:.1f} s")
    for identity in inventory.rigs.values():
        say(
            f"   {identity.address:<11} {identity.make.value:<10} {identity.model:<10} "
            f"{identity.driver:<15} {identity.firmware}"
        )
    for failure in failures:
        say(f"   {failure.address:<11} {failure.kind.value}: {failure.detail}")

    observer = Observer(inventory, ObserverSettings(timeout_s=3.0))
    say("\n2. One observation cycle (one request per rig; a hung rig costs only its deadline)")
    cycle = await observer.cycle()
    say(f"   {cycle.ok} read, {cycle.failed} failed, in {cycle.duration_s:.2f} s")
    say(f"   {'address':<15} {'model':<12} {'TH/s':>8} {'W':>6} {'chip':>5} mode    mining")
    for reading in cycle.readings.values():
        say("   " + _reading_line(reading, False))
    say("   * estimated power: stock Antminer firmware reports no watts")

    say(
        f"\n3. Hashprice ${HASHPRICE_USD_PER_PH_DAY}/PH/day, power ${POWER_USD_PER_KWH}/kWh: "
        "rigs whose break-even power price is below that lose money"
    )
    losers = []
    for address, reading in cycle.readings.items():
        if isinstance(reading, Observation) and reading.efficiency_j_per_th:
            j = reading.efficiency_j_per_th
            if breakeven_usd_per_kwh(j) < POWER_USD_PER_KWH:
                losers.append(address)
                say(
                    f"   sleep {address:<11} {j:5.1f} J/TH, break-even "
                    f"${breakeven_usd_per_kwh(j):.3f}/kWh"
                )
    for address in losers:
        await observer.drivers[address].apply(Mode.SLEEP, None, 10)
    await asyncio.sleep(1.0)
    confirm = await observer.cycle(losers)
    for address, reading in confirm.readings.items():
        truth = ctl.rig(address)
        seen = reading.mode.value if isinstance(reading, Observation) else reading.kind.value
        say(
            f"   {address:<11} observed mode={seen:<6} | simulator truth: {truth['mode']}, "
            f"{truth['hashrate_ths']:.0f} TH/s, {truth['power_w']:.0f} W"
        )

    say("\n4. The market recovers: waking them up (boards take minutes; the sim runs 30x)")
    for address in losers:
        await observer.drivers[address].apply(Mode.NORMAL, None, 10)
    for _ in range(8):
        await asyncio.sleep(1.5)
        ramp = await observer.cycle(losers)
        line = ", ".join(
            f"{r.hashrate_ths:5.1f}" if isinstance(r, Observation) else " n/a "
            for r in ramp.readings.values()
        )
        say(f"   TH/s: {line}")
    stats = ctl.stats()
    say(
        f"\nSimulator served {stats['requests']} requests ({stats['reads']} reads, "
        f"{stats['writes']} writes) with {stats['cpu_s']:.1f} s CPU."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the simulator up afterwards (Ctrl-C to stop)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    control = Path(tempfile.mkdtemp()) / "sim.sock"
    args_line = [*FLEET, "--time-scale", "30"]
    say("Starting: rigpilot sim " + " ".join(args_line))
    sim = launch.start(args_line, control)
    try:
        asyncio.run(run(control, sim.rigs))
        if args.keep_running:
            say(f"\nSimulator still running (pid {sim.proc.pid}, control {control}); Ctrl-C stops.")
            sim.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
