"""``make demo``: a simulated fleet, driven by unmodified pyasic, end to end.

Until the control loop exists (``rigpilot run``), this is the demo: it starts ``rigpilot sim``
with a mixed fleet (one rig hung, one slow), finds the rigs with pyasic, reads them, puts the
rigs that lose money at the February 2026 hashprice to sleep, checks the simulator's true
state, then wakes them and watches their hashrate ramp back up.

    python -m scripts.demo [--keep-running]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
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
    import pyasic

    from simulator.client import SimControl

    ctl = SimControl(control)
    say(f"\n1. Finding {len(rigs)} rigs with pyasic.get_miner (10 s deadline each)")
    t0 = time.monotonic()
    miners = await asyncio.gather(*(bounded(pyasic.get_miner(r["address"]), 10) for r in rigs))
    say(f"   done in {time.monotonic() - t0:.1f} s")
    found: dict[str, Any] = {}
    for rig, miner in zip(rigs, miners, strict=True):
        if miner is None or isinstance(miner, Exception):
            say(f"   {rig['address']:<11} no answer ({type(miner).__name__})")
        else:
            found[rig["address"]] = miner
            say(
                f"   {rig['address']:<11} {miner.make!s:<10} {miner.raw_model!s:<10} "
                f"{type(miner).__name__}"
            )

    say("\n2. Reading them (get_data: hashrate, boards, watts, mining)")
    include = ["hashrate", "hashboards", "wattage", "is_mining"]
    datas = await asyncio.gather(
        *(bounded(m.get_data(include=include), 10) for m in found.values())
    )
    say(f"   {'address':<11} {'model':<10} {'TH/s':>7} {'W':>6} {'J/TH':>6} {'max chip':>8}")
    efficiency: dict[str, float] = {}
    for address, data in zip(found, datas, strict=True):
        if isinstance(data, Exception):
            say(f"   {address:<11} read failed: {type(data).__name__}")
            continue
        truth = ctl.rig(address)
        ths = float(data.hashrate or 0)
        watts = data.wattage
        chip = max((b.chip_temp or 0 for b in data.hashboards), default=0)
        # Stock Antminers report no power: take the simulator's true figure, flagged.
        power = float(watts) if watts else float(truth["power_w"])
        flag = "" if watts else "*"
        efficiency[address] = power / ths if ths else float("inf")
        say(
            f"   {address:<11} {data.model!s:<10} {ths:7.1f} {power:5.0f}{flag:1} "
            f"{efficiency[address]:6.1f} {chip:8.0f}"
        )
    say("   * stock Antminer firmware reports no watts; shown: the simulator's true power")

    say(
        f"\n3. Hashprice ${HASHPRICE_USD_PER_PH_DAY}/PH/day, power ${POWER_USD_PER_KWH}/kWh: "
        "rigs whose break-even power price is below that lose money"
    )
    losers = [a for a, j in efficiency.items() if breakeven_usd_per_kwh(j) < POWER_USD_PER_KWH]
    for address in losers:
        say(
            f"   sleep {address} (break-even ${breakeven_usd_per_kwh(efficiency[address]):.3f}"
            f"/kWh at {efficiency[address]:.1f} J/TH)"
        )
    results = await asyncio.gather(*(bounded(found[a].stop_mining(), 20) for a in losers))
    await asyncio.sleep(1.0)
    for address, ok in zip(losers, results, strict=True):
        truth = ctl.rig(address)
        say(
            f"   {address:<11} pyasic said {ok!s:<5} -> true state: mode={truth['mode']}, "
            f"{truth['hashrate_ths']:.0f} TH/s, {truth['power_w']:.0f} W"
        )

    say("\n4. The market recovers: waking them up (the boards take minutes; sim runs 30x)")
    await asyncio.gather(*(bounded(found[a].resume_mining(), 20) for a in losers))
    for _ in range(8):
        await asyncio.sleep(1.5)
        line = ", ".join(f"{ctl.rig(a)['hashrate_ths']:5.1f}" for a in losers)
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
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    control = Path(tempfile.mkdtemp()) / "sim.sock"
    cmd = [
        sys.executable,
        "-m",
        "simulator",
        *FLEET,
        "--time-scale",
        "30",
        "--json",
        "--control",
        str(control),
        "--netns",
        "current",
    ]
    say("Starting: rigpilot sim " + " ".join(cmd[3:]))
    sim = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    try:
        assert sim.stdout is not None
        rigs = json.loads(sim.stdout.readline())
        while not control.exists():
            time.sleep(0.05)
        asyncio.run(run(control, rigs))
        if args.keep_running:
            say(f"\nSimulator still running (pid {sim.pid}, control {control}); Ctrl-C stops.")
            sim.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
