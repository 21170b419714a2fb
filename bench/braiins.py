"""Braiins OS read cost: the Braiins OS driver's REST read (three GETs on one connection, the
power target's a fourth at times) vs pyasic's ``get_data()`` (gRPC on 50051 + the cgminer API
on 4028), same rigs, same run, after one unmeasured cycle of each (client CPU only; the
simulator runs in its own process).

Also the cost of one command per rig: the driver's ``limit`` (power target + resume) against
pyasic's ``set_power_limit()``.

Usage: python -m bench.braiins [--rigs 300] [--cycles 3] [--concurrency 64] [--pyasic-sample N]
Ends with ``RESULT rigs=... driver_ms_per_rig=... pyasic_ms_per_rig=... driver_cmd_ms=...
pyasic_cmd_ms=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.observe import cpu  # noqa: E402


async def measure(
    addresses: list[str], cycles: int, concurrency: int, sample: int
) -> tuple[float, float, float, float]:
    """Driver and pyasic CPU per rig: reads (per cycle) and one command; pyasic on the first
    ``sample`` rigs (none: its figures are nan)."""
    import pyasic

    from drivers.identify import driver_for, identify
    from policies.values import Mode

    sem = asyncio.Semaphore(concurrency)

    async def bounded(call: Any) -> Any:
        async with sem:
            return await call

    identities = await asyncio.gather(*(bounded(identify(a)) for a in addresses))
    drivers = [driver_for(i) for i in identities]
    miners = await asyncio.gather(*(bounded(pyasic.get_miner(a)) for a in addresses[:sample]))
    # one unmeasured cycle of each first: the driver's login, connection and first read of
    # the power target in force happen once, not every cycle (as custom_fw's warm-up)
    await asyncio.gather(*(bounded(d.observe(10.0, time.time())) for d in drivers))
    c0 = cpu()
    for _ in range(cycles):
        await asyncio.gather(*(bounded(d.observe(10.0, time.time())) for d in drivers))
    driver_ms = (cpu() - c0) / (cycles * len(drivers)) * 1000
    await asyncio.gather(*(bounded(m.get_data()) for m in miners))
    c0 = cpu()
    for _ in range(cycles):
        await asyncio.gather(*(bounded(m.get_data()) for m in miners))
    pyasic_ms = (cpu() - c0) / (cycles * len(miners)) * 1000 if miners else math.nan
    c0 = cpu()
    await asyncio.gather(*(bounded(d.apply(Mode.LIMIT, 2500, 10.0)) for d in drivers))
    driver_cmd_ms = (cpu() - c0) / len(drivers) * 1000
    c0 = cpu()
    await asyncio.gather(*(bounded(m.set_power_limit(2600)) for m in miners))
    pyasic_cmd_ms = (cpu() - c0) / len(miners) * 1000 if miners else math.nan
    return driver_ms, pyasic_ms, driver_cmd_ms, pyasic_cmd_ms


def main() -> int:
    from simulator import launch
    from simulator.netns import ensure_private_netns

    parser = argparse.ArgumentParser(prog="python -m bench.braiins")
    parser.add_argument("--rigs", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--pyasic-sample",
        type=int,
        default=None,
        help="measure pyasic on this many of the rigs (default all; 0: none)",
    )
    args = parser.parse_args()
    ensure_private_netns()
    folder = Path(tempfile.mkdtemp(prefix="bench-braiins-"))
    sim = launch.start(
        ["--braiins", f"s19jpro:{args.rigs}"], folder / "control.sock", folder / "sim.log"
    )
    try:
        addresses = [r["address"] for r in sim.rigs]
        driver_ms, pyasic_ms, driver_cmd, pyasic_cmd = asyncio.run(
            measure(
                addresses,
                args.cycles,
                args.concurrency,
                len(addresses) if args.pyasic_sample is None else args.pyasic_sample,
            )
        )
    finally:
        sim.stop()
    print(
        f"Braiins OS driver observe: {driver_ms:.3f} ms CPU/rig; pyasic get_data(): {pyasic_ms:.3f}"
    )
    print(
        f"command: driver limit {driver_cmd:.3f} ms CPU/rig; "
        f"pyasic set_power_limit {pyasic_cmd:.3f}"
    )
    print(
        f"RESULT rigs={args.rigs} driver_ms_per_rig={driver_ms:.3f} "
        f"pyasic_ms_per_rig={pyasic_ms:.3f} driver_cmd_ms={driver_cmd:.3f} "
        f"pyasic_cmd_ms={pyasic_cmd:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
