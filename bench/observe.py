"""Fleet observation cost: rigpilot's observer vs the raw floor vs naive pyasic, 10,000 rigs.

Starts ``python -m simulator`` with a mixed fleet in a private network namespace (the
simulator runs in its own process, on the other core): by default every firmware family the
drivers read, in the shares of MIXED_SHARES (stock Antminer and Whatsminer, LuxOS, Braiins OS,
VNish, ePIC); ``--fleet stock`` for the stock models only. Then measures, in this run:

1. identification of every rig (pyasic detection + details), cached to an inventory file;
2. a "restarted daemon" in a fresh process: load the cached inventory, time the first
   complete observation cycle, then the CPU per rig of further full cycles, and its RSS; then
   each firmware family's rigs (grouped by the driver that reads them) in passes of their own
   with the same observer, the families in turn, ``--cycles`` rounds (at least 5): the median
   pass is the family's CPU per rig per cycle;
3. the floor: one raw RPC request per stock rig (``stats`` / ``summary``), JSON-decoded,
   nothing else;
4. naive pyasic: ``get_data()`` gathered under a semaphore, on up to ``--pyasic-sample`` rigs
   of each family, shown beside the observer's figure for that family;
5. pyasic-rs (``bench/pyasic_rs_probe.py``) when a Python with pyasic-rs is given (on the rigs
   of step 4);
6. ``rigpilot run``'s observer, the worker pool (daemon/workers.py), in a fresh process for
   each worker count of ``--workers`` (default 1 and 2): its first complete cycle, then
   ``--cycles`` full cycles: wall time, the controller's RSS, CPU per rig per cycle (the
   controller's and the workers' together), and the speed-up of each count over the first.

Ends with ``RESULT rigs=... cpu_ms_per_rig=... cpu_ms_<family>=... floor_ms_per_rig=...
pyasic_ms_per_rig=... pyasic_ms_<family>=... wall_s=... rss_mb=... first_cycle_s=...
pool_wall_s_1=... pool_wall_s_2=... speedup_2=...``; ``ok=yes`` when every target is met
(each family's CPU per rig per cycle included).

At 100,000 rigs (``--rigs 100000 --identify-sample 200 --skip-in-process --skip-baselines``)
identifying every rig with pyasic would take a quarter of an hour of CPU: ``--identify-sample``
identifies that many rigs of each model and gives the others the identity of one of them with
the address replaced (serial, MAC and reply fingerprint left out: the per-cycle "rig changed"
check is skipped for those), which changes nothing else a read does.

Usage: python -m bench.observe [--rigs 10000] [--cycles 3] [--fleet mixed|stock]
                               [--pyasic-sample 40]
                               [--pyasic-rs-python /tmp/rsvenv/bin/python]
                               [--workers 1,2] [--identify-sample N]
                               [--skip-in-process] [--skip-baselines] [--sim-processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {"cpu_ms_per_rig": 0.4, "wall_s": 10.0, "rss_mb": 300.0, "first_cycle_s": 10.0}
POOL_TARGETS = {"wall_s_per_100k": 30.0, "rss_mb": 1500.0, "speedup_2": 1.7}


def fleet_args(rigs: int) -> list[str]:
    """The stock fleet: 50 % Antminer (3 models), 50 % Whatsminer (3 models, 1/6 on API v3).
    The fleet of the other benchmarks (curtail, power_off, hostile, soak)."""
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


# The mixed fleet's shares, in percent (docs/benchmarks.md says why these). Stock firmware is
# still most of a fleet; of the custom firmwares, LuxOS and Braiins OS run most tuned fleets
# (issue 18), VNish many small ones, ePIC fewer. Each family gets at least 5 %: 500 rigs at
# 10,000, enough for its own CPU figure.
MIXED_SHARES: tuple[tuple[str, str, int], ...] = (
    ("--antminer", "s19jpro", 10),
    ("--antminer", "s19xp", 10),
    ("--antminer", "s21", 10),
    ("--whatsminer", "m30s+", 10),
    ("--whatsminer", "m50s", 10),
    ("--whatsminer", "m60s@20251209.16.Rel2", 10),
    ("--luxos", "s19jpro", 15),
    ("--braiins", "s19jpro", 10),
    ("--vnish", "s19jpro", 10),
    ("--epic", "s19jpro", 5),
)


def mixed_fleet_args(rigs: int) -> list[str]:
    """The observer's mixed fleet: every firmware family the drivers read (MIXED_SHARES), the
    rounding remainder on the first group."""
    counts = [rigs * share // 100 for _, _, share in MIXED_SHARES]
    counts[0] += rigs - sum(counts)
    args: list[str] = []
    for (flag, model, _), count in zip(MIXED_SHARES, counts, strict=True):
        if count > 0:
            args += [flag, f"{model}:{count}"]
    return args


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def floor(addresses: list[tuple[str, str]], concurrency: int) -> tuple[float, int]:
    """CPU ms per rig for one raw request + json decode, nothing else (stock rigs: ``stats`` to
    an Antminer, ``summary`` to a Whatsminer)."""
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


STOCK_MAKES = frozenset({"antminer", "whatsminer"})


async def pyasic_by_family(
    groups: dict[str, list[str]], sample: int, concurrency: int
) -> dict[str, dict[str, Any]]:
    """Naive pyasic on up to ``sample`` rigs of each family (spread over its addresses)."""
    result: dict[str, dict[str, Any]] = {}
    for family, addresses in groups.items():
        step = max(1, len(addresses) // max(1, sample))
        chosen = addresses[::step][:sample]
        ms, ok, wall = await naive_pyasic(chosen, concurrency)
        result[family] = {
            "rigs": len(addresses),
            "sample": chosen,
            "cpu_ms_per_rig": round(ms, 3),
            "ok": ok,
            "wall_s": round(wall, 1),
        }
    return result


def print_families(families: dict[str, dict[str, Any]]) -> None:
    """One line per firmware family: the observer's CPU per rig per cycle, pyasic's beside."""
    if not families:
        return
    print(
        f"{'family':<16} {'rigs':>6}  {'observer CPU/rig/cycle, median (passes)':>40}  "
        "pyasic get_data() CPU/rig"
    )
    for family, seen in families.items():
        ours = (
            f"{seen['cpu_ms_per_rig']:.3f} ms ({'/'.join(f'{x:.2f}' for x in seen['passes_ms'])})"
            if "cpu_ms_per_rig" in seen
            else "-"
        )
        theirs = seen.get("pyasic")
        pyasic = (
            f"{theirs['cpu_ms_per_rig']:.2f} ms ({len(theirs['sample'])} rigs, {theirs['ok']} ok)"
            if theirs
            else "-"
        )
        print(f"{family:<16} {seen['rigs']:>6}  {ours:>40}  {pyasic}", flush=True)


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


def family_addresses(cache: Path) -> dict[str, list[str]]:
    """The cached inventory's addresses by firmware family (the driver that reads them)."""
    from drivers.inventory import Inventory

    inventory = Inventory(cache)
    inventory.load()
    groups: dict[str, list[str]] = {}
    for address, identity in inventory.rigs.items():
        groups.setdefault(identity.driver, []).append(address)
    return dict(sorted(groups.items()))


async def family_passes(
    observer: Any, groups: dict[str, list[str]], rounds: int
) -> dict[str, dict[str, Any]]:
    """Each family's CPU per rig per cycle: its rigs alone, in passes of the same (warm)
    observer after the full-fleet cycles; ``rounds`` rounds of one pass per family in turn, so
    a burst of load elsewhere on the machine lands on one pass, not on all of a family's; the
    median pass is the figure. The production observer is not touched: it observes a subset
    as it does for ``rigpilot observe ADDRESS...``."""
    passes: dict[str, list[float]] = {family: [] for family in groups}
    oks: dict[str, list[int]] = {family: [] for family in groups}
    for _ in range(max(1, rounds)):
        for family, addresses in groups.items():
            c0 = cpu()
            oks[family].append((await observer.cycle(addresses)).ok)
            passes[family].append((cpu() - c0) / len(addresses) * 1000)
    return {
        family: {
            "rigs": len(addresses),
            "cpu_ms_per_rig": round(statistics.median(passes[family]), 4),
            "passes_ms": [round(x, 3) for x in passes[family]],
            "ok": min(oks[family]),
        }
        for family, addresses in groups.items()
    }


def restart_phase(cache: Path, cycles: int, concurrency: int) -> None:
    """Run in a fresh process: what a restarted daemon does with a cached inventory; then each
    firmware family's rigs in their own passes (:func:`family_passes`)."""
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
        total_wall_s = round(time.monotonic() - t0, 2)
        families = await family_passes(observer, family_addresses(cache), max(5, cycles))
        return {
            "loaded": loaded,
            "families": families,
            "first_cycle_s": round(first_s, 2),
            "first_ok": first.ok,
            "first_failed": first.failed,
            "cpu_ms_per_rig": round(spent / cycles / max(1, loaded) * 1000, 4),
            "wall_s": round(max(walls), 2),
            "ok": min(oks),
            "total_wall_s": total_wall_s,
            "rss_mb": round(rss_mb(), 1),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def pool_phase(cache: Path, workers: int, cycles: int, concurrency: int) -> None:
    """Run in a fresh process: ``rigpilot run``'s observer (the worker pool) over a cached
    inventory, ``workers`` worker processes."""
    t_start = time.monotonic()
    from daemon.gctune import tune_gc
    from daemon.observer import ObserverSettings
    from daemon.workers import ObserverPool
    from drivers.inventory import Inventory

    async def main() -> dict[str, Any]:
        inventory = Inventory(cache)
        loaded = inventory.load()
        pool = ObserverPool(
            inventory, ObserverSettings(concurrency=concurrency, timeout_s=5.0), workers=workers
        )
        pool.sync_drivers()
        tune_gc()  # as rigpilot run does once its loop is built
        try:
            first = await pool.cycle()
            first_s = time.monotonic() - t_start
            pids = [p.pid for p in pool.procs if p.pid is not None]
            c0, w0 = cpu(), sum(proc_cpu_s(p) for p in pids)
            walls, oks = [], []
            for _ in range(cycles):
                cycle = await pool.cycle()
                walls.append(cycle.duration_s)
                oks.append(cycle.ok)
            controller = cpu() - c0
            spent = controller + sum(proc_cpu_s(p) for p in pids) - w0
            worker_rss = [round(proc_rss_mb(p), 1) for p in pids]
        finally:
            await pool.close()
        walls.sort()
        return {
            "workers": pool.size,
            "loaded": loaded,
            "first_cycle_s": round(first_s, 2),
            "first_ok": first.ok,
            "cpu_ms_per_rig": round(spent / cycles / max(1, loaded) * 1000, 4),
            "controller_cpu_ms_per_rig": round(controller / cycles / max(1, loaded) * 1000, 4),
            "wall_s": round(walls[len(walls) // 2], 2),
            "slowest_wall_s": round(walls[-1], 2),
            "ok": min(oks),
            "rss_mb": round(rss_mb(), 1),
            "worker_rss_mb": worker_rss,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


async def identify_all(addresses: list[str], cache: Path, concurrency: int) -> dict[str, Any]:
    """Identify every address with pyasic, cached to ``cache``."""
    rigs = [{"address": a, "model": "", "firmware": ""} for a in addresses]
    return await identify_fleet(rigs, cache, concurrency, 0)


async def identify_fleet(
    rigs: list[dict[str, Any]], cache: Path, concurrency: int, sample: int
) -> dict[str, Any]:
    """Identify every rig (``sample`` 0), or ``sample`` rigs of each model and clone their
    identity onto the others of the same model (module docstring)."""
    from dataclasses import replace

    from drivers.identify import driver_for
    from drivers.inventory import Inventory

    groups: dict[tuple[str, str], list[str]] = {}
    for rig in rigs:
        groups.setdefault((rig["model"], rig["firmware"]), []).append(rig["address"])
    chosen = [a for g in groups.values() for a in (g[:sample] if sample else g)]
    inventory = Inventory(cache)
    c0, t0 = cpu(), time.monotonic()
    failures = await inventory.ensure(chosen, concurrency, 30.0)
    spent, wall = cpu() - c0, time.monotonic() - t0
    for identity in inventory.rigs.values():
        driver_for(identity)
    cloned = 0
    if sample:
        for members in groups.values():
            known = [inventory.rigs[a] for a in members[:sample] if a in inventory.rigs]
            if not known:
                continue
            extra = {k: v for k, v in known[0].extra.items() if k != "fingerprint"}
            for address in members[sample:]:
                clone = replace(known[0], address=address, serial=None, mac=None, extra=extra)
                inventory.put(clone)
                cloned += 1
        inventory.save()
    return {
        "identified": len(inventory.rigs) - cloned,
        "cloned": cloned,
        "failed": len(failures),
        "cpu_ms_per_rig": spent / max(1, len(chosen)) * 1000,
        "wall_s": wall,
    }


def run_phase(flag: str, cache: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run a measurement phase of this module in a fresh process; its JSON result."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.observe",
            flag,
            str(cache),
            "--cycles",
            str(args.cycles),
            "--concurrency",
            str(args.concurrency),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def in_process(
    ctl: Any, cache: Path, args: argparse.Namespace, rigs: int
) -> tuple[dict[str, Any], bool]:
    """The restarted observer's phase, reported: its figures (``families`` among them, one
    entry per firmware family) and whether its targets are met."""
    sim_cpu0 = ctl.stats()["cpu_s"]
    daemon = run_phase("--restart-phase", cache, args)
    sim_cpu = ctl.stats()["cpu_s"] - sim_cpu0
    print(
        f"restarted observer: loaded {daemon['loaded']} cached identities, first "
        f"complete cycle {daemon['first_cycle_s']} s after process start "
        f"({daemon['first_ok']} ok, {daemon['first_failed']} failed); then "
        f"{args.cycles} cycles: {daemon['cpu_ms_per_rig']} ms CPU/rig/cycle, slowest "
        f"{daemon['wall_s']} s wall, RSS {daemon['rss_mb']} MB "
        f"(simulator used {sim_cpu:.1f} s CPU meanwhile)",
        flush=True,
    )
    figures = {k: daemon[k] for k in ("cpu_ms_per_rig", "wall_s", "rss_mb", "first_cycle_s")}
    ok = daemon["ok"] == rigs and all(float(figures[k]) <= v for k, v in TARGETS.items())
    families: dict[str, dict[str, Any]] = daemon["families"]
    for family, seen in families.items():
        figures[f"cpu_ms_{family}"] = seen["cpu_ms_per_rig"]
        ok = ok and seen["ok"] == seen["rigs"]
        if family != "pyasic":  # the target is the stock and fast-path families' (issue 18)
            ok = ok and seen["cpu_ms_per_rig"] <= TARGETS["cpu_ms_per_rig"]
    return {**figures, "families": families}, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument(
        "--pyasic-sample",
        type=int,
        default=40,
        help="rigs of each firmware family pyasic's get_data() is measured on (default 40)",
    )
    parser.add_argument(
        "--pyasic-rs-python",
        default=None,
        help="a Python that has pyasic-rs installed (measured if given)",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker counts of the pool to measure, comma-separated (default 1,2; '' none)",
    )
    parser.add_argument(
        "--identify-sample",
        type=int,
        default=0,
        help="identify this many rigs per model and clone the rest (default 0: identify all)",
    )
    parser.add_argument(
        "--skip-in-process", action="store_true", help="skip the in-process observer phase"
    )
    parser.add_argument(
        "--skip-baselines", action="store_true", help="skip the floor and naive pyasic phases"
    )
    parser.add_argument(
        "--sim-processes",
        type=int,
        default=1,
        help="simulator processes, each serving its own address block (default 1)",
    )
    parser.add_argument(
        "--fleet",
        choices=("mixed", "stock"),
        default="mixed",
        help="mixed: every firmware family (MIXED_SHARES; default); stock: stock Antminers and "
        "Whatsminers only (the fleet of the figures before 2026-12-07)",
    )
    parser.add_argument("--restart-phase", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pool-phase", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pool-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restart_phase is not None:
        restart_phase(args.restart_phase, args.cycles, args.concurrency)
        return 0
    if args.pool_phase is not None:
        pool_phase(args.pool_phase, args.pool_workers, args.cycles, args.concurrency)
        return 0
    counts = [int(n) for n in args.workers.split(",") if n.strip()]

    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-"))
    control = work / "sim.sock"
    sim: launch.RunningSim | launch.RunningFleet
    fleet = (mixed_fleet_args if args.fleet == "mixed" else fleet_args)(args.rigs)
    if args.sim_processes > 1:  # one address block each (docs/simulator.md)
        sim = launch.start_blocks(fleet, work, args.sim_processes, 300.0)
    else:
        sim = launch.start(fleet, control, timeout_s=300.0)
    ctl, rigs = sim.control, sim.rigs
    figures: dict[str, Any] = {"rigs": len(rigs)}
    families: dict[str, dict[str, Any]] = {}
    ok = True
    try:
        pids = (
            [s.proc.pid for s in sim.sims]
            if isinstance(sim, launch.RunningFleet)
            else [sim.proc.pid]
        )
        print(f"simulator: {len(rigs)} rigs (pids {pids})", flush=True)

        cache = work / "inventory.json"
        ident = asyncio.run(identify_fleet(rigs, cache, 64, args.identify_sample))
        print(
            f"identify (pyasic detection, once, cached): {ident['identified']} rigs, "
            f"{ident['failed']} failed, {ident['cpu_ms_per_rig']:.2f} ms CPU/rig, "
            f"{ident['wall_s']:.1f} s wall"
            + (f"; {ident['cloned']} more given a sampled identity" if ident["cloned"] else ""),
            flush=True,
        )
        figures["identify_ms_per_rig"] = round(ident["cpu_ms_per_rig"], 2)

        if not args.skip_in_process:
            daemon, seen_ok = in_process(ctl, cache, args, len(rigs))
            families = daemon.pop("families")
            figures |= daemon
            ok = ok and seen_ok

        base_wall: float | None = None
        for n in counts:
            sim_cpu0 = ctl.stats()["cpu_s"]
            pool = run_phase("--pool-phase", cache, args, "--pool-workers", str(n))
            sim_cpu = ctl.stats()["cpu_s"] - sim_cpu0
            base_wall = base_wall or pool["wall_s"]
            speedup = base_wall / pool["wall_s"] if pool["wall_s"] else 0.0
            print(
                f"worker pool, {pool['workers']} worker(s): first complete cycle "
                f"{pool['first_cycle_s']} s after process start ({pool['first_ok']} ok); then "
                f"{args.cycles} cycles: median {pool['wall_s']} s wall (slowest "
                f"{pool['slowest_wall_s']} s), {pool['ok']} ok, {pool['cpu_ms_per_rig']} ms "
                f"CPU/rig/cycle ({pool['controller_cpu_ms_per_rig']} ms of it the "
                f"controller's), controller RSS {pool['rss_mb']} MB, workers' RSS "
                f"{pool['worker_rss_mb']} MB, speed-up over {counts[0]} worker(s) "
                f"{speedup:.2f}x (simulator used {sim_cpu:.1f} s CPU meanwhile)",
                flush=True,
            )
            figures |= {
                f"pool_wall_s_{n}": pool["wall_s"],
                f"pool_cpu_ms_per_rig_{n}": pool["cpu_ms_per_rig"],
                f"pool_rss_mb_{n}": pool["rss_mb"],
            }
            if n != counts[0]:
                figures[f"speedup_{n}"] = round(speedup, 2)
            ok = ok and pool["ok"] == len(rigs) and pool["rss_mb"] <= POOL_TARGETS["rss_mb"]
            ok = ok and pool["wall_s"] <= POOL_TARGETS["wall_s_per_100k"] * max(
                1.0, len(rigs) / 100_000
            )
        if "speedup_2" in figures:
            ok = ok and figures["speedup_2"] >= POOL_TARGETS["speedup_2"]

        if not args.skip_baselines:
            stock = [(r["address"], r["make"]) for r in rigs if r["make"] in STOCK_MAKES]
            floor_ms, floor_ok = asyncio.run(floor(stock, args.concurrency))
            print(
                f"floor (one raw request per stock rig, decoded): {floor_ms:.3f} ms CPU/rig, "
                f"{floor_ok} of {len(stock)} ok",
                flush=True,
            )
            figures["floor_ms_per_rig"] = round(floor_ms, 4)
            per_family = asyncio.run(
                pyasic_by_family(family_addresses(cache), args.pyasic_sample, 64)
            )
            weighted = sum(f["cpu_ms_per_rig"] * f["rigs"] for f in per_family.values())
            counted = sum(f["rigs"] for f in per_family.values())
            figures["pyasic_ms_per_rig"] = round(weighted / max(1, counted), 3)
            print(
                f"naive pyasic get_data(), up to {args.pyasic_sample} rigs of each family: "
                f"{figures['pyasic_ms_per_rig']} ms CPU/rig (weighted by the fleet's shares)",
                flush=True,
            )
            for family, seen in per_family.items():
                figures[f"pyasic_ms_{family}"] = seen["cpu_ms_per_rig"]
                families.setdefault(family, {"rigs": seen["rigs"]})["pyasic"] = seen
            sample = [a for f in per_family.values() for a in f["sample"]]

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
            figures["pyasic_rs_ms_per_rig"] = rs.get("data_cpu_ms_per_rig", "na")
    finally:
        sim.stop()

    print_families(families)
    print(
        "RESULT "
        + " ".join(f"{k}={v}" for k, v in figures.items())
        + f" ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
