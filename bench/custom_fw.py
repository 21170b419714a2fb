"""Custom firmware read cost: each driver's observe vs pyasic's ``get_data()``, same rigs, same run
(client CPU only; the simulator runs in its own process).

Usage: python -m bench.custom_fw [--firmware epic] [--rigs 300] [--cycles 3] [--concurrency 64]
Ends with one ``RESULT firmware=... rigs=... driver_ms_per_rig=... pyasic_ms_per_rig=...`` line
per firmware. ``--firmware`` is repeatable (``epic``, ``vnish``; ``luxos`` for comparison).
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
sys.path.insert(0, str(REPO))

from bench.observe import cpu  # noqa: E402

FIRMWARES = ("epic", "vnish", "luxos")


async def measure(addresses: list[str], cycles: int, concurrency: int) -> tuple[float, float]:
    """CPU per rig per cycle of the drivers' observe and of pyasic's get_data, after one
    unmeasured cycle of each (the ePIC driver reads ``/capabilities`` once, on its first)."""
    import pyasic

    from drivers.identify import driver_for, identify

    sem = asyncio.Semaphore(concurrency)

    async def bounded(call: Any) -> Any:
        async with sem:
            return await call

    identities = await asyncio.gather(*(bounded(identify(a)) for a in addresses))
    drivers = [driver_for(i) for i in identities]
    miners = await asyncio.gather(*(bounded(pyasic.get_miner(a)) for a in addresses))
    figures = []
    for run in (
        lambda: [d.observe(10.0, time.time()) for d in drivers],
        lambda: [m.get_data() for m in miners],
    ):
        await asyncio.gather(*(bounded(c) for c in run()))  # warm-up, not measured
        c0 = cpu()
        for _ in range(cycles):
            await asyncio.gather(*(bounded(c) for c in run()))
        figures.append((cpu() - c0) / (cycles * len(addresses)) * 1000)
    return figures[0], figures[1]


def main() -> int:
    from simulator import launch
    from simulator.netns import ensure_private_netns

    parser = argparse.ArgumentParser(prog="python -m bench.custom_fw")
    parser.add_argument("--firmware", action="append", choices=FIRMWARES)
    parser.add_argument("--rigs", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    ensure_private_netns()
    results = []
    for firmware in args.firmware or ["epic"]:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-{firmware}-"))
        sim = launch.start(
            [f"--{firmware}", f"s19jpro:{args.rigs}"], folder / "control.sock", folder / "sim.log"
        )
        try:
            addresses = [r["address"] for r in sim.rigs]
            driver_ms, pyasic_ms = asyncio.run(measure(addresses, args.cycles, args.concurrency))
        finally:
            sim.stop()
        print(
            f"{firmware} driver observe: {driver_ms:.3f} ms CPU/rig; "
            f"pyasic get_data(): {pyasic_ms:.3f}"
        )
        results.append(
            f"RESULT firmware={firmware} rigs={args.rigs} driver_ms_per_rig={driver_ms:.3f} "
            f"pyasic_ms_per_rig={pyasic_ms:.3f}"
        )
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
