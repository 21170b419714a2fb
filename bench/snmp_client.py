"""The SNMP client's CPU: 24-outlet APC PDU reads and outlet SETs against simulated PDUs.

Starts ``python -m simulator`` with ``--pdus`` simulated 24-outlet APC PDUs (one S19j Pro on
each outlet, time scale 1) in a private network namespace, then, in this process, with the
driver of drivers/switches/snmp.py as the daemon uses it (every PDU read at once, as a tick's
switch sweep does):

1. ``--sweeps`` sweeps reading every outlet's state and power of every PDU (two GETs of 24
   objects per PDU), after one warm-up sweep: CPU per PDU read;
2. one SET of 24 outlets per PDU (every outlet off, as ``daemon/power.py`` batches them), then
   on again: CPU per 24-outlet SET;
3. ``--single-sets`` single-outlet SETs, each PDU's outlet 1 off and on: CPU per SET of one.

CPU is this process's (user + system), so the simulator's share is not in it. Ends with
``RESULT pdus=... sweeps=... read_cpu_ms=... set24_cpu_ms=... set1_cpu_ms=... sweep_wall_s=...``.

Usage: python -m bench.snmp_client [--pdus 42] [--sweeps 5] [--single-sets 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.observe import cpu  # noqa: E402

OUTLETS = 24


async def run(addresses: list[str], sweeps: int, single_sets: int) -> dict[str, Any]:
    from drivers.switches.snmp import ApcPdu

    outlets = tuple(range(1, OUTLETS + 1))
    pdus = [ApcPdu(f"pdu{i}", a, outlets) for i, a in enumerate(addresses)]
    timeout_s = 10.0

    async def sweep() -> None:
        readings = await asyncio.gather(*(p.read_outlets(timeout_s=timeout_s) for p in pdus))
        assert all(len(r) == OUTLETS for r in readings)

    await sweep()  # warm-up: sockets, cached requests
    per_read: list[float] = []
    walls: list[float] = []
    for _ in range(sweeps):
        c0, t0 = cpu(), time.perf_counter()
        await sweep()
        per_read.append((cpu() - c0) / len(pdus) * 1000.0)
        walls.append(time.perf_counter() - t0)

    per_set24: list[float] = []
    for on in (False, True):
        c0 = cpu()
        states = dict.fromkeys(outlets, on)
        await asyncio.gather(*(p.set_outlets(states, timeout_s=timeout_s) for p in pdus))
        per_set24.append((cpu() - c0) / len(pdus) * 1000.0)

    per_set1: list[float] = []
    for _ in range(single_sets):
        for on in (False, True):
            c0 = cpu()
            await asyncio.gather(*(p.set_outlet(1, on, timeout_s=timeout_s) for p in pdus))
            per_set1.append((cpu() - c0) / len(pdus) * 1000.0)
    await sweep()
    return {
        "read_cpu_ms": round(statistics.median(per_read), 2),
        "read_cpu_ms_min": round(min(per_read), 2),
        "set24_cpu_ms": round(statistics.median(per_set24), 2),
        "set1_cpu_ms": round(statistics.median(per_set1), 2),
        "sweep_wall_s": round(statistics.median(walls), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pdus", type=int, default=42)
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--single-sets", type=int, default=2)
    args = parser.parse_args()

    from simulator import launch
    from simulator.fleet import addresses as address_range
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-snmp-"))
    pdu_args = [a for _ in range(args.pdus) for a in ("--pdu", f"apc:{OUTLETS}")]
    sim = launch.start(
        ["--antminer", f"s19jpro:{args.pdus * OUTLETS}", *pdu_args, "--time-scale", "1"],
        work / "sim.sock",
        timeout_s=120,
    )
    try:
        addresses = list(address_range("127.2.0.1", args.pdus))
        figures = asyncio.run(run(addresses, args.sweeps, args.single_sets))
    finally:
        sim.stop()
    figures = {"pdus": args.pdus, "sweeps": args.sweeps, **figures}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
