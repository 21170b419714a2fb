"""Fleet observation cost: rigpilot's observer vs the raw floor vs naive pyasic, 10,000 rigs.

Starts ``python -m simulator`` with a mixed fleet in a private network namespace (the
simulator runs in its own process, on the other core), then measures, in this run:

1. identification of every rig (pyasic detection + details), cached to an inventory file;
2. a "restarted daemon" in a fresh process: load the cached inventory, time the first
   complete observation cycle, then the CPU per rig of further full cycles, and its RSS;
3. the floor: one raw RPC request per rig (``stats`` / ``summary``), JSON-decoded, nothing else;
4. naive pyasic: ``get_data()`` gathered under a semaphore, on a sample of rigs;
5. pyasic-rs (``bench/pyasic_rs_probe.py``) when a Python with pyasic-rs is given.

Ends with ``RESULT rigs=... cpu_ms_per_rig=... floor_ms_per_rig=... pyasic_ms_per_rig=...
wall_s=... rss_mb=... first_cycle_s=...``.

Usage: python -m bench.observe [--rigs 10000] [--cycles 3] [--pyasic-sample 400]
                               [--pyasic-rs-python /tmp/rsvenv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {"cpu_ms_per_rig": 0.4, "wall_s": 10.0, "rss_mb": 300.0, "first_cycle_s": 10.0}


def fleet_args(rigs: int) -> list[str]:
    """A mixed fleet: 50 % Antminer (3 models), 50 % Whatsminer (3 models, 1/6 on API v3)."""
    share = rigs // 6
    rest = rigs - 5 * share
    return [
        "--antminer",
        f"s19jpro:{share}",
        "--antminer",
        f"s19xp:{share}",
        "--antminer",
        f"s21:{share}",
        "--whatsminer",
        f"m30s+:{share}",
        "--whatsminer",
        f"m50s:{share}",
        "--whatsminer",
        f"m60s@20251209.16.Rel2:{rest}",
    ]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def floor(addresses: list[tuple[str, str]], concurrency: int) -> tuple[float, int]:
    """CPU ms per rig for one raw request + json decode, nothing else."""
    from drivers.transport import DriverError, decode, request

    ok = 0
    index = 0

    async def worker() -> None:
        nonlocal ok, index
        while index < len(addresses):
            address, make = addresses[index]
            index += 1
            payload = b'{"command":"stats"}' if make == "antminer" else b'{"command":"summary"}'
            try:
                decode(await request(address, 4028, payload, 5.0))
                ok += 1
            except DriverError:
                pass

    c0 = cpu()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (cpu() - c0) / len(addresses) * 1000, ok


async def naive_pyasic(addresses: list[str], concurrency: int) -> tuple[float, int, float]:
    """CPU ms per rig for pyasic get_data() (all fields) under a semaphore, on warm objects."""
    import pyasic

    sem = asyncio.Semaphore(concurrency)

    async def get(address: str) -> Any:
        async with sem:
            return await asyncio.wait_for(pyasic.get_miner(address), 30)

    miners = [m for m in await asyncio.gather(*(get(a) for a in addresses)) if m is not None]

    async def data(miner: Any) -> Any:
        async with sem:
            return await asyncio.wait_for(miner.get_data(), 60)

    c0, t0 = cpu(), time.monotonic()
    results = await asyncio.gather(*(data(m) for m in miners), return_exceptions=True)
    ok = sum(1 for r in results if not isinstance(r, BaseException) and r.hashrate is not None)
    return (cpu() - c0) / max(1, len(miners)) * 1000, ok, time.monotonic() - t0


def restart_phase(cache: Path, cycles: int, concurrency: int) -> None:
    """Run in a fresh process: what a restarted daemon does with a cached inventory."""
    t_start = time.monotonic()
    from daemon.observer import Observer, ObserverSettings
    from drivers.inventory import Inventory

    async def main() -> dict[str, Any]:
        inventory = Inventory(cache)
        loaded = inventory.load()
        observer = Observer(inventory, ObserverSettings(concurrency=concurrency, timeout_s=5.0))
        first = await observer.cycle()
        first_s = time.monotonic() - t_start
        c0, t0 = cpu(), time.monotonic()
        walls, oks = [], []
        for _ in range(cycles):
            cycle = await observer.cycle()
            walls.append(cycle.duration_s)
            oks.append(cycle.ok)
        spent = cpu() - c0
        return {
            "loaded": loaded,
            "first_cycle_s": round(first_s, 2),
            "first_ok": first.ok,
            "first_failed": first.failed,
            "cpu_ms_per_rig": round(spent / cycles / max(1, loaded) * 1000, 4),
            "wall_s": round(max(walls), 2),
            "ok": min(oks),
            "total_wall_s": round(time.monotonic() - t0, 2),
            "rss_mb": round(rss_mb(), 1),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


async def identify_all(addresses: list[str], cache: Path, concurrency: int) -> dict[str, Any]:
    from drivers.identify import driver_for
    from drivers.inventory import Inventory

    inventory = Inventory(cache)
    c0, t0 = cpu(), time.monotonic()
    failures = await inventory.ensure(addresses, concurrency, 30.0)
    for identity in inventory.rigs.values():
        driver_for(identity)
    return {
        "identified": len(inventory.rigs),
        "failed": len(failures),
        "cpu_ms_per_rig": (cpu() - c0) / len(addresses) * 1000,
        "wall_s": time.monotonic() - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--pyasic-sample", type=int, default=400)
    parser.add_argument(
        "--pyasic-rs-python",
        default=None,
        help="a Python that has pyasic-rs installed (measured if given)",
    )
    parser.add_argument("--restart-phase", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restart_phase is not None:
        restart_phase(args.restart_phase, args.cycles, args.concurrency)
        return 0

    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-"))
    control = work / "sim.sock"
    sim = launch.start(fleet_args(args.rigs), control)
    ctl, rigs = sim.control, sim.rigs
    try:
        addresses = [r["address"] for r in rigs]
        print(f"simulator: {len(rigs)} rigs (pid {sim.proc.pid})", flush=True)

        cache = work / "inventory.json"
        ident = asyncio.run(identify_all(addresses, cache, 64))
        print(
            f"identify (pyasic detection, once, cached): {ident['identified']} rigs, "
            f"{ident['failed']} failed, {ident['cpu_ms_per_rig']:.2f} ms CPU/rig, "
            f"{ident['wall_s']:.1f} s wall",
            flush=True,
        )

        sim_cpu0 = ctl.stats()["cpu_s"]
        restart = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.observe",
                "--restart-phase",
                str(cache),
                "--cycles",
                str(args.cycles),
                "--concurrency",
                str(args.concurrency),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        daemon = json.loads(restart.stdout.strip().splitlines()[-1])
        sim_cpu = ctl.stats()["cpu_s"] - sim_cpu0
        print(
            f"restarted observer: loaded {daemon['loaded']} cached identities, first complete "
            f"cycle {daemon['first_cycle_s']} s after process start "
            f"({daemon['first_ok']} ok, {daemon['first_failed']} failed); then "
            f"{args.cycles} cycles: {daemon['cpu_ms_per_rig']} ms CPU/rig/cycle, slowest "
            f"{daemon['wall_s']} s wall, RSS {daemon['rss_mb']} MB "
            f"(simulator used {sim_cpu:.1f} s CPU meanwhile)",
            flush=True,
        )

        pairs = [(r["address"], r["make"]) for r in rigs]
        floor_ms, floor_ok = asyncio.run(floor(pairs, args.concurrency))
        print(
            f"floor (one raw request per rig, decoded): {floor_ms:.3f} ms CPU/rig, {floor_ok} ok",
            flush=True,
        )

        step = max(1, len(addresses) // args.pyasic_sample)
        sample = addresses[::step][: args.pyasic_sample]
        pyasic_ms, pyasic_ok, pyasic_wall = asyncio.run(naive_pyasic(sample, 64))
        print(
            f"naive pyasic get_data() on {len(sample)} rigs: {pyasic_ms:.2f} ms CPU/rig, "
            f"{pyasic_ok} ok, {pyasic_wall:.1f} s wall",
            flush=True,
        )

        rs: dict[str, Any] = {"available": False, "reason": "no --pyasic-rs-python given"}
        if args.pyasic_rs_python:
            listing = work / "rs_addresses.txt"
            listing.write_text("\n".join(sample))
            out = subprocess.run(
                [
                    args.pyasic_rs_python,
                    str(REPO / "bench" / "pyasic_rs_probe.py"),
                    "--addresses-file",
                    str(listing),
                    "--concurrency",
                    "64",
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=600,
            )
            rs = (
                json.loads(out.stdout.strip().splitlines()[-1])
                if out.stdout.strip()
                else {"available": False, "reason": out.stderr[-200:]}
            )
        print(f"pyasic-rs: {json.dumps(rs)}", flush=True)
    finally:
        sim.stop()

    figures = {
        "rigs": len(rigs),
        "cpu_ms_per_rig": daemon["cpu_ms_per_rig"],
        "floor_ms_per_rig": round(floor_ms, 4),
        "pyasic_ms_per_rig": round(pyasic_ms, 3),
        "pyasic_rs_ms_per_rig": rs.get("data_cpu_ms_per_rig", "na"),
        "wall_s": daemon["wall_s"],
        "rss_mb": daemon["rss_mb"],
        "first_cycle_s": daemon["first_cycle_s"],
        "identify_ms_per_rig": round(ident["cpu_ms_per_rig"], 2),
    }
    ok = all(float(figures[k]) <= v for k, v in TARGETS.items()) and daemon["ok"] == len(rigs)
    print(
        "RESULT "
        + " ".join(f"{k}={v}" for k, v in figures.items())
        + f" ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
