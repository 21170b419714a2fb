"""Curtailment: every rig of a 10,000-rig simulated fleet to sleep, through the reconciler.

Starts ``python -m simulator`` with the mixed fleet of ``bench/observe.py`` in real time
(``--time-scale 1``: a rig takes about 4 s to ramp its boards down) in a private network
namespace, and measures, in this run:

1. identification of every rig (pyasic detection, once, as in ``bench.observe``);
2. the baseline: naive pyasic, ``get_miner()`` then ``stop_mining()`` gathered under a
   semaphore (64), on a sample of rigs spread over every model; CPU per rig of the stops only
   (detection excluded), per make. The sampled rigs are then reset to normal with the
   simulator's control API;
3. one routine observation cycle (the daemon observes all along; this warms the drivers);
4. the trigger, t0: every rig's target becomes SLEEP. Then the daemon's loop: observe ->
   ``Reconciler.plan`` -> ``Actuator.send`` (live) -> ``Reconciler.record``, until every rig is
   observed asleep (``daemon.reconciler.satisfied``). Reported: time from t0 until every
   command has been sent (first observation cycle included), until every rig is observed
   asleep, and the CPU per rig of the sends alone.

Ends with ``RESULT rigs=... sent_s=... asleep_s=... cmd_cpu_ms_per_rig=...
pyasic_stop_cpu_ms_per_rig=... ok=yes|no``.

Usage: python -m bench.curtail [--rigs 10000] [--concurrency 256] [--pyasic-sample 400]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.observe import cpu, fleet_args, identify_all  # noqa: E402

TARGETS = {"sent_s": 10.0, "asleep_s": 30.0}


@dataclass
class Curtailment:
    """What the trigger-to-asleep loop measured."""

    sent_s: float = float("nan")
    asleep_s: float = float("nan")
    first_cycle_s: float = 0.0
    send_wall_s: float = 0.0
    send_cpu_s: float = 0.0
    commands: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    cycles: list[tuple[float, int, int]] = field(default_factory=list)  # (t, asleep, failed)
    asleep: int = 0
    not_responding: int = 0
    by_driver: dict[str, float] = field(default_factory=dict)  # CPU s of sends per driver
    by_driver_n: dict[str, int] = field(default_factory=dict)


async def naive_pyasic_stop(groups: dict[str, list[str]], concurrency: int) -> dict[str, Any]:
    """CPU ms per rig of pyasic ``stop_mining()`` (detection done first, not counted), per make."""
    import pyasic

    sem = asyncio.Semaphore(concurrency)

    async def get(address: str) -> Any:
        async with sem:
            return await asyncio.wait_for(pyasic.get_miner(address), 30)

    async def stop(miner: Any) -> Any:
        async with sem:
            return await asyncio.wait_for(miner.stop_mining(), 60)

    out: dict[str, Any] = {}
    total_cpu, total_n = 0.0, 0
    for make, addresses in groups.items():
        miners = [m for m in await asyncio.gather(*(get(a) for a in addresses)) if m is not None]
        c0, t0 = cpu(), time.monotonic()
        results = await asyncio.gather(*(stop(m) for m in miners), return_exceptions=True)
        spent = cpu() - c0
        ok = sum(1 for r in results if r is True)
        out[make] = {
            "rigs": len(miners),
            "ok": ok,
            "cpu_ms_per_rig": spent / max(1, len(miners)) * 1000,
            "wall_s": time.monotonic() - t0,
            "errors": sorted({type(r).__name__ for r in results if isinstance(r, BaseException)}),
        }
        total_cpu += spent
        total_n += len(miners)
    out["all"] = {"rigs": total_n, "cpu_ms_per_rig": total_cpu / max(1, total_n) * 1000}
    return out


async def curtail(
    cache: Path, concurrency: int, observe_concurrency: int, limit_s: float
) -> Curtailment:
    from daemon.observer import Observer, ObserverSettings
    from daemon.reconciler import (
        Actuator,
        Command,
        CommandResult,
        Reconciler,
        Target,
        satisfied,
    )
    from drivers.inventory import Inventory
    from policies.values import Mode

    inventory = Inventory(cache)
    inventory.load()
    observer = Observer(inventory, ObserverSettings(concurrency=observe_concurrency, timeout_s=5.0))
    reconciler = Reconciler()
    actuator = Actuator(observer.drivers, dry_run=False, concurrency=concurrency)
    routine = await observer.cycle()  # the daemon's routine cycle before the trigger
    from daemon.gctune import tune_gc

    tune_gc()  # as `rigpilot run` does once its fleet is built (daemon/gctune.py)
    print(
        f"routine cycle before the trigger: {routine.ok} ok, {routine.failed} failed, "
        f"{routine.duration_s:.1f} s",
        flush=True,
    )

    out = Curtailment()
    t0 = time.monotonic()  # the trigger
    targets = {
        rid: Target(rid, Mode.SLEEP, None, "bench: curtail everything", "bench")
        for rid in observer.drivers
    }
    unsent = set(targets)
    while time.monotonic() - t0 < limit_s:
        if out.cycles:  # the daemon's loop has a cadence; here, at most two cycles a second
            await asyncio.sleep(max(0.0, out.cycles[-1][0] + 0.5 - (time.monotonic() - t0)))
        cycle = await observer.cycle()
        if not out.cycles:
            out.first_cycle_s = time.monotonic() - t0
        readings = cycle.readings
        asleep = sum(1 for rid, t in targets.items() if satisfied(t, readings.get(rid)))
        out.cycles.append((time.monotonic() - t0, asleep, cycle.failed))
        print(
            f"  t+{time.monotonic() - t0:5.1f} s: cycle {cycle.duration_s:.1f} s, "
            f"{asleep} asleep, {cycle.failed} unread",
            flush=True,
        )
        if asleep == len(targets):
            out.asleep_s = time.monotonic() - t0
            break
        commands = reconciler.plan(targets, readings, time.time())
        if commands:
            # sent one driver at a time, to tell their CPU apart (sends are CPU-bound here)
            by_driver: dict[str, list[Command]] = {}
            for cmd in commands:
                by_driver.setdefault(observer.drivers[cmd.rig_id].name, []).append(cmd)
            results: list[CommandResult] = []
            w0 = time.monotonic()
            for name, group in by_driver.items():
                c0 = cpu()
                results += await actuator.send(group)
                spent = cpu() - c0
                out.send_cpu_s += spent
                out.by_driver[name] = out.by_driver.get(name, 0.0) + spent
                out.by_driver_n[name] = out.by_driver_n.get(name, 0) + len(group)
            out.send_wall_s += time.monotonic() - w0
            out.commands += len(commands)
            reconciler.record(results)
            for r in results:
                out.outcomes[r.outcome.value] += 1
                if r.outcome.value == "sent":
                    unsent.discard(r.command.rig_id)
            outcomes = dict(Counter(r.outcome.value for r in results))
            print(
                f"  t+{time.monotonic() - t0:5.1f} s: sent {len(commands)} commands in "
                f"{time.monotonic() - w0:.1f} s ({outcomes})",
                flush=True,
            )
            if not unsent and math.isnan(out.sent_s):  # the first time all are sent
                out.sent_s = time.monotonic() - t0
    final = out.cycles[-1][1] if out.cycles else 0
    out.asleep = final
    out.not_responding = len(reconciler.not_responding)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256, help="the actuator's")
    parser.add_argument("--observe-concurrency", type=int, default=256)
    parser.add_argument("--pyasic-sample", type=int, default=400)
    parser.add_argument("--limit-s", type=float, default=180.0, help="give up after this long")
    args = parser.parse_args()

    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-"))
    sim = launch.start([*fleet_args(args.rigs), "--time-scale", "1"], work / "sim.sock")
    ctl, rigs = sim.control, sim.rigs
    try:
        addresses = [r["address"] for r in rigs]
        print(f"simulator: {len(rigs)} rigs (pid {sim.proc.pid}), time scale 1", flush=True)

        cache = work / "inventory.json"
        ident = asyncio.run(identify_all(addresses, cache, 64))
        print(
            f"identify (pyasic detection, once, cached): {ident['identified']} rigs, "
            f"{ident['failed']} failed, {ident['wall_s']:.1f} s wall",
            flush=True,
        )

        step = max(1, len(rigs) // args.pyasic_sample)
        sample = rigs[::step][: args.pyasic_sample]
        groups: dict[str, list[str]] = {}
        for r in sample:
            groups.setdefault(r["make"], []).append(r["address"])
        naive = asyncio.run(naive_pyasic_stop(groups, 64))
        for make, figures in naive.items():
            if make != "all":
                print(
                    f"naive pyasic stop_mining() on {figures['rigs']} {make}: "
                    f"{figures['cpu_ms_per_rig']:.2f} ms CPU/rig, {figures['ok']} ok, "
                    f"{figures['wall_s']:.1f} s wall, errors {figures['errors']}",
                    flush=True,
                )
        modes = Counter(ctl.rig(r["address"])["mode"] for r in sample)
        for r in sample:
            ctl.reset(r["address"])
        print(
            f"naive pyasic, all {naive['all']['rigs']} sampled: "
            f"{naive['all']['cpu_ms_per_rig']:.2f} ms CPU/rig (true modes after: {dict(modes)}; "
            f"reset to normal)",
            flush=True,
        )

        sim_cpu0 = ctl.stats()["cpu_s"]
        run = asyncio.run(curtail(cache, args.concurrency, args.observe_concurrency, args.limit_s))
        sim_cpu = ctl.stats()["cpu_s"] - sim_cpu0
        truth = Counter(ctl.rig(a)["mode"] for a in addresses[:: max(1, len(addresses) // 200)])
    finally:
        sim.stop()

    cmd_ms = run.send_cpu_s / max(1, run.commands) * 1000
    print(
        f"curtail (actuator concurrency {args.concurrency}): {run.commands} commands "
        f"({dict(run.outcomes)}), all sent {run.sent_s:.1f} s after the trigger "
        f"(first observation cycle {run.first_cycle_s:.1f} s, sends {run.send_wall_s:.1f} s "
        f"wall), all observed asleep {run.asleep_s:.1f} s after it; sends "
        f"{cmd_ms:.2f} ms CPU/command; {run.asleep}/{len(rigs)} asleep, "
        f"{run.not_responding} not responding; simulator used {sim_cpu:.1f} s CPU meanwhile; "
        f"true mode of 200 sampled rigs afterwards: {dict(truth)}",
        flush=True,
    )
    for name, spent in sorted(run.by_driver.items()):
        n = run.by_driver_n[name]
        print(f"  {name}: {n} commands, {spent / max(1, n) * 1000:.2f} ms CPU/command")
    figures = {
        "rigs": len(rigs),
        "sent_s": round(run.sent_s, 2),
        "asleep_s": round(run.asleep_s, 2),
        "cmd_cpu_ms_per_rig": round(cmd_ms, 3),
        "pyasic_stop_cpu_ms_per_rig": round(naive["all"]["cpu_ms_per_rig"], 3),
        "concurrency": args.concurrency,
    }
    ok = all(float(figures[k]) <= v for k, v in TARGETS.items()) and run.asleep == len(rigs)
    print(
        "RESULT "
        + " ".join(f"{k}={v}" for k, v in figures.items())
        + f" ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
