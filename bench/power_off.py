"""True off at scale: a simulated fleet on simulated 24-outlet APC PDUs taken from hashing to
off, then back on under the site ramp, through the daemon's own ControlLoop.

Starts ``python -m simulator`` with ``bench/observe.py``'s mixed fleet and one ``--pdu apc:24``
per 24 rigs (time scale 1) in a private network namespace, identifies every rig, then runs the
real loop (observer, switch sweep over SNMP, a policy asking for ``off``, guards, reconciler,
``daemon/power.py``'s steps, actuator) tick after tick and measures:

1. off: from the trigger, when each rig's firmware sleep was sent, when it was first observed
   asleep, and when its outlet was switched off; targets: every sleep sent <= 10 s after the
   trigger, every outlet off <= 30 s after its rig was observed asleep;
2. on: the policy asks for normal again; for ``--on-window-s`` the ramp's grants and the outlet
   power-ups are recorded; the most kW granted in any 60 s (the ramp guard's own estimate of
   each rig's rise) must stay within ``--ramp-kw-per-min`` plus one rig. The same window at the
   catalogue's rated watts of the rigs whose outlets went on is printed beside it
   (``on_rated_max_kw_per_min``): the two differ where the guard's estimate of a rig differs
   from its rating.

Ends with ``RESULT rigs=... pdus=... sleep_sent_max_s=... off_after_asleep_max_s=...
all_off_s=... on_max_kw_per_min=... ok=yes|no``.

Usage: python -m bench.power_off [--rigs 10000] [--ramp-kw-per-min 100] [--on-window-s 180]
[--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.observe import cpu, fleet_args, identify_all  # noqa: E402

OUTLETS = 24
TARGETS = {"sleep_sent_max_s": 10.0, "off_after_asleep_max_s": 30.0}


class Asked:
    name = "asked"

    def __init__(self) -> None:
        from policies.values import Mode

        self.mode = Mode.NORMAL

    def decide(self, market: Any, fleet: Sequence[Any], site: Any, now: float) -> dict[str, Any]:
        from policies.api import Intent

        return {r.rig_id: Intent(r.rig_id, self.mode, "bench", self.name) for r in fleet}


async def run(  # noqa: C901, PLR0912  the benchmark's scenario, step by step
    cache: Path,
    addresses: list[str],
    pdus: list[str],
    ramp_kw_per_min: float,
    on_window_s: float,
    limit_s: float,
    profile: bool = False,
) -> dict[str, Any]:
    from daemon.gctune import tune_gc
    from daemon.loop import ControlLoop
    from daemon.observer import Observer, ObserverSettings
    from daemon.power import PowerSwitches
    from daemon.reconciler import Actuator, CommandResult, Outcome, Reconciler
    from drivers.inventory import Inventory
    from drivers.switches.snmp import ApcPdu
    from market.hashprice import PushedHashprice
    from market.power import PushedPrice
    from market.service import Market
    from policies.api import Site
    from policies.economics import Economics
    from policies.guards import GuardConfig
    from policies.values import Mode, Observation, QuoteKind

    inventory = Inventory(cache)
    inventory.load()
    observer = Observer(inventory, ObserverSettings(concurrency=256, timeout_s=5.0))
    observer.sync_drivers()
    wiring = {a: [(f"pdu{i // OUTLETS}", i % OUTLETS + 1)] for i, a in enumerate(addresses)}
    switches = {
        f"pdu{p}": ApcPdu(f"pdu{p}", address, tuple(range(1, OUTLETS + 1)))
        for p, address in enumerate(pdus)
    }
    power = PowerSwitches(switches, wiring, dict.fromkeys(switches, 5.0))
    hashprice, price = PushedHashprice(ttl_s=3600), PushedPrice(ttl_s=3600)
    terms = Economics(pool_fee=0.02, overhead=1.0)
    policy = Asked()
    loop = ControlLoop(
        observer=observer,
        market=Market({QuoteKind.HASHPRICE: [hashprice], QuoteKind.POWER_PRICE: [price]}),
        policies=[policy],
        site=Site(economics=terms),
        guard_config=GuardConfig(
            min_dwell_s=0.0,
            ramp_kw_per_min=ramp_kw_per_min,
            ramp_rigs_per_s=100.0,
            economics=terms,
        ),
        reconciler=Reconciler(confirm_deadline_s=120.0),
        actuator=Actuator(
            observer.drivers,
            dry_run=False,
            concurrency=256,
            timeout_s=10.0,
            switch=power.switch_rig,
            max_wait_s=5.0,
        ),
        market_refresh_s=0.0,
        power=power,
    )
    sent: list[CommandResult] = []
    send = loop.actuator.send

    async def recording(commands: Sequence[Any]) -> list[CommandResult]:
        results = await send(commands)
        sent.extend(r for r in results if r.outcome is Outcome.SENT)
        return results

    loop.actuator.send = recording  # type: ignore[method-assign]

    async def tick() -> Any:
        now = time.time()
        hashprice.push(80.0, now, "bench")
        price.push(0.05, now, "bench")
        return await loop.tick()

    report = await tick()  # routine tick: everything hashing, nothing to do
    tune_gc()
    print(f"routine tick: {report.summary()}", flush=True)

    policy.mode = Mode.OFF
    t0 = time.time()
    c0 = cpu()
    asleep_at: dict[str, float] = {}
    off_observed: set[str] = set()
    while time.time() - t0 < limit_s and len(off_observed) < len(addresses):
        if profile and not asleep_at and not off_observed:  # the first off tick, profiled
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            report = await tick()
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(30)
        else:
            report = await tick()
        for rig, reading in report.readings.items():
            if isinstance(reading, Observation):
                if reading.mode is Mode.SLEEP and not reading.mining:
                    asleep_at.setdefault(rig, reading.observed_at)
                if reading.mode is Mode.OFF:
                    off_observed.add(rig)
        print(
            f"  t+{time.time() - t0:5.1f} s: {report.commands} commands, "
            f"{len(asleep_at)} seen asleep, {len(off_observed)} observed off "
            f"(tick {report.duration_s:.1f} s, observe {report.observe_duration_s:.1f} s)",
            flush=True,
        )
    off_cpu = cpu() - c0
    all_off_s = time.time() - t0 if len(off_observed) == len(addresses) else math.nan
    sleep_sent: dict[str, float] = {}
    outlet_off: dict[str, float] = {}
    for r in sent:
        c = r.command
        if c.mode is Mode.SLEEP and c.switch is None:
            sleep_sent.setdefault(c.rig_id, r.at)
        if c.switch is False:
            outlet_off.setdefault(c.rig_id, r.at)
    sleep_max = max((t - t0 for t in sleep_sent.values()), default=math.nan)
    gaps = [outlet_off[r] - asleep_at[r] for r in outlet_off if r in asleep_at]
    off_gap_max = max(gaps, default=math.nan)

    # ---- back on, under the ramp ----
    policy.mode = Mode.NORMAL
    sent.clear()
    grants: dict[tuple[str, float], float] = {}
    t1 = time.time()
    while time.time() - t1 < on_window_s:
        report = await tick()
        for g in loop.guard_state.ramp_log:
            if g.at >= t1:
                grants[(g.rig_id, g.at)] = g.kw
        print(
            f"  on t+{time.time() - t1:5.1f} s: {report.commands} commands "
            f"(tick {report.duration_s:.1f} s)",
            flush=True,
        )
    ups = sorted(
        (r.at, observer.drivers[r.command.rig_id]) for r in sent if r.command.switch is True
    )
    watts: list[tuple[float, float]] = []
    for t, d in ups:
        rated = d.entry.figures(Mode.NORMAL) if d.entry else None
        watts.append((t, rated.hashrate_ths * rated.j_per_th if rated else 3500.0))

    def worst_minute(points: list[tuple[float, float]]) -> float:
        points = sorted(points)
        return max(
            (sum(w for u, w in points[i:] if u < t + 60.0) for i, (t, _) in enumerate(points)),
            default=0.0,
        )

    window_max_kw = worst_minute([(at, kw) for (_, at), kw in grants.items()])
    rated_max_kw = worst_minute([(t, w / 1000.0) for t, w in watts])
    biggest_kw = max(grants.values(), default=0.0)
    return {
        "sleep_sent": len(sleep_sent),
        "sleep_sent_max_s": round(sleep_max, 2),
        "outlets_off": len(outlet_off),
        "off_after_asleep_max_s": round(off_gap_max, 2),
        "all_off_s": round(all_off_s, 1),
        "off_cpu_s": round(off_cpu, 1),
        "outlets_on": len(ups),
        "on_max_kw_per_min": round(window_max_kw, 1),
        "on_rated_max_kw_per_min": round(rated_max_kw, 1),
        "on_limit_kw_per_min": round(ramp_kw_per_min + biggest_kw, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_080)
    parser.add_argument("--ramp-kw-per-min", type=float, default=100.0)
    parser.add_argument("--on-window-s", type=float, default=180.0)
    parser.add_argument("--limit-s", type=float, default=300.0)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the first off tick (slows it down)"
    )
    args = parser.parse_args()

    from simulator import launch
    from simulator.fleet import addresses as address_range
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    pdus = math.ceil(args.rigs / OUTLETS)
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-"))
    pdu_args = [a for _ in range(pdus) for a in ("--pdu", f"apc:{OUTLETS}")]
    sim = launch.start(
        [*fleet_args(args.rigs), *pdu_args, "--time-scale", "1"], work / "sim.sock", timeout_s=120
    )
    try:
        addresses = [r["address"] for r in sim.rigs]
        pdu_addresses = list(address_range("127.2.0.1", pdus))
        print(f"simulator: {len(addresses)} rigs on {pdus} PDUs (pid {sim.proc.pid})", flush=True)
        cache = work / "inventory.json"
        ident = asyncio.run(identify_all(addresses, cache, 64))
        print(
            f"identify: {ident['identified']} rigs, {ident['failed']} failed, "
            f"{ident['wall_s']:.1f} s",
            flush=True,
        )
        figures = asyncio.run(
            run(
                cache,
                addresses,
                pdu_addresses,
                args.ramp_kw_per_min,
                args.on_window_s,
                args.limit_s,
                args.profile,
            )
        )
    finally:
        sim.stop()
    figures = {"rigs": len(addresses), "pdus": pdus, **figures}
    ok = (
        all(float(figures[k]) <= v for k, v in TARGETS.items())
        and figures["outlets_off"] == len(addresses)
        and figures["on_max_kw_per_min"] <= figures["on_limit_kw_per_min"]
    )
    print(
        "RESULT "
        + " ".join(f"{k}={v}" for k, v in figures.items())
        + f" ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
