"""Decision cost: the ``breakeven`` policy and the guards over 10,000 rigs per tick.

Builds a synthetic fleet in memory (no simulator, no sockets): 10,000 ``RigView``s over ten
catalogue models on three drivers' mode sets (stock Antminer: sleep/low/normal; Whatsminer API
v2: sleep/low/normal/high/limit; API v3: sleep/normal/limit), each with a health factor, a chip
temperature (a few run hot, so the thermal guard trips), 1 % unread, and mode points from
``daemon.rig_economics.mode_points`` as the daemon builds them (the Whatsminers, which report
their watts, with their efficiency learned from them: ``daemon.efficiency.learn`` each tick,
from an estimate trusted before the run). Then runs ``--ticks`` ticks,
``now`` advancing 10 s a tick, the hashprice swinging across the fleet's break-even range (one
tick with a stale power price), the rigs obeying the previous tick's desired state, and times:

- ``BreakevenPolicy().decide``;
- ``PowerCapPolicy().decide`` with a cap below the fleet's draw, and ``combine`` of the two
  (measured separately: they are reported, not counted in the total);
- ``apply_guards`` with the ``GuardState`` carried across ticks (dwell 60 s, so dwell,
  hysteresis and the ramp all act within the run), with two group overrides.

There is one implementation of each: ``decide`` rig by rig, and ``apply_guards`` running every
rig through the per-rig chain (``policies.guards.rig.decide_rig``) and every rise through the
ramp (``policies.guards.ramp.apply_ramp``); this times it. Baseline, same run: a plain loop
over the same rigs as tuples of (TH/s, W) computing each rig's best margin with arithmetic, no
objects. Building views and points is the shell's work and is reported but not counted.

Ends with ``RESULT rigs=... decide_ms=... guards_ms=... total_ms=... baseline_ms=...
target_ms=100 ok=yes|no`` (medians per tick; ok compares the median total to the target).

Usage: python -m bench.decide [--rigs 10000] [--ticks 30] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.efficiency import RigEfficiency, learn  # noqa: E402
from daemon.rig_economics import mode_points  # noqa: E402
from policies.api import Intent, MarketView, RigView, Site  # noqa: E402
from policies.breakeven import BreakevenPolicy  # noqa: E402
from policies.combine import combine  # noqa: E402
from policies.economics import Economics  # noqa: E402
from policies.guards import (  # noqa: E402
    Desired,
    GuardConfig,
    GuardState,
    Override,
    apply_guards,
)
from policies.power_cap import PowerCapPolicy  # noqa: E402
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId  # noqa: E402

TARGET_MS = 100.0
TICK_S = 10.0
T0 = 1_795_000_000.0  # 2026-11-19, any fixed time will do
POWER_PRICE = 0.06

# (make, catalogue model, driver) — the mix a mixed site might have
MODELS: tuple[tuple[Make, str, str], ...] = (
    (Make.ANTMINER, "S19 Pro", "antminer-stock"),
    (Make.ANTMINER, "S19j Pro", "antminer-stock"),
    (Make.ANTMINER, "S19 XP", "antminer-stock"),
    (Make.ANTMINER, "S21", "antminer-stock"),
    (Make.ANTMINER, "S21 Pro", "antminer-stock"),
    (Make.ANTMINER, "S21 XP", "antminer-stock"),
    (Make.WHATSMINER, "M30S", "whatsminer-v2"),
    (Make.WHATSMINER, "M30S+", "whatsminer-v2"),
    (Make.WHATSMINER, "M50S", "whatsminer-v2"),
    (Make.WHATSMINER, "M60S", "whatsminer-v3"),
)
DRIVER_MODES: Mapping[str, frozenset[Mode]] = {
    "antminer-stock": frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL}),
    "whatsminer-v2": frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT}),
    "whatsminer-v3": frozenset({Mode.SLEEP, Mode.NORMAL, Mode.LIMIT}),
}


@dataclass(slots=True)
class SimRig:
    """What the benchmark knows of one rig: its identity and physical traits, and its mode."""

    identity: Identity
    modes: frozenset[Mode]
    group: str
    health: float
    temp_c: float
    readable: bool
    mode: Mode
    learned: RigEfficiency | None = None


def trained(identity: Identity) -> RigEfficiency | None:
    """A Whatsminer's efficiency as learned before the run (25 samples over 24 minutes at its
    rated normal figures: trusted); None for the Antminers, whose watts are estimated."""
    from drivers import catalogue

    if identity.make is not Make.WHATSMINER:
        return None
    entry = catalogue.lookup(identity.make.value, identity.model)
    assert entry is not None
    learned: RigEfficiency | None = None
    for k in range(25):
        at = T0 - 1500.0 + 60.0 * k
        obs = Observation(
            identity, at, entry.hashrate_ths, entry.power_w, PowerSource.REPORTED, Mode.NORMAL, True
        )
        learned = learn(learned, obs, entry, settling=False)
    assert learned is not None and learned.reference is Mode.NORMAL
    return learned


def make_fleet(rigs: int, rng: random.Random) -> list[SimRig]:
    fleet = []
    learned: dict[str, RigEfficiency | None] = {}
    for i in range(rigs):
        make, model, driver = MODELS[i % len(MODELS)]
        address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        identity = Identity(address, make, model, "fw", driver, serial=f"SN{i:06d}")
        hot = rng.random() < 0.005
        if model not in learned:
            learned[model] = trained(identity)
        fleet.append(
            SimRig(
                identity=identity,
                modes=DRIVER_MODES[driver],
                group=f"row{i // 500}",
                health=rng.uniform(0.85, 1.02),
                temp_c=rng.uniform(91.0, 97.0) if hot else rng.uniform(60.0, 84.0),
                readable=rng.random() >= 0.01,
                mode=Mode.NORMAL if rng.random() < 0.9 else Mode.LOW,
                learned=learned[model],
            )
        )
    return fleet


def observe(rig: SimRig, now: float, rng: random.Random) -> RigView:
    """The RigView the daemon would build from a fresh reading of ``rig``."""
    from drivers import catalogue

    entry = catalogue.lookup(rig.identity.make.value, rig.identity.model)
    assert entry is not None, rig.identity.model
    mining = rig.mode not in (Mode.SLEEP, Mode.OFF)
    figures = entry.figures(rig.mode if rig.mode in (Mode.LOW, Mode.HIGH) else Mode.NORMAL)
    assert figures is not None
    ths = figures.hashrate_ths * rig.health * rng.uniform(0.98, 1.02) if mining else 0.0
    watts = ths * figures.j_per_th if mining else catalogue.SLEEP_POWER_W
    reported = rig.identity.make is Make.WHATSMINER
    obs = Observation(
        identity=rig.identity,
        observed_at=now - rng.uniform(0.0, 8.0),
        hashrate_ths=ths,
        power_w=watts,
        power_source=PowerSource.REPORTED if reported else PowerSource.ESTIMATED,
        mode=rig.mode,
        mining=mining,
        max_chip_temp_c=rig.temp_c + rng.uniform(-1.0, 1.0) if mining else 40.0,
    )
    rig.learned = learn(rig.learned, obs, entry, settling=False)
    points = tuple(mode_points(obs, rig.modes, entry, learned=rig.learned))
    return RigView(
        rig_id=rig.identity.rig_id,
        observation=obs if rig.readable else None,
        modes=rig.modes,
        points=points,
        group=rig.group,
        power_limit_range_w=(500, 6000) if Mode.LIMIT in rig.modes else None,
    )


def hashprice_at(tick: int) -> float:
    """Swings between 25 and 55 USD/PH/day: across the break-even of every model at 6 ¢/kWh."""
    return 40.0 + 15.0 * math.sin(tick * 2 * math.pi / 12)


def baseline_rows(fleet: Sequence[RigView]) -> list[list[tuple[float, float]]]:
    """The same rigs as plain (TH/s, W) rows of their supported points."""
    return [
        [(p.hashrate_ths, p.power_w) for p in rig.points if p.mode in rig.modes] for rig in fleet
    ]


def baseline(rows: list[list[tuple[float, float]]], hashprice: float, price: float) -> float:
    """Each rig's best margin with plain arithmetic; returns the sum so nothing is optimised out."""
    fee = 0.98
    rev = hashprice / 1000.0 * fee
    cost = 24.0 / 1000.0 * price
    total = 0.0
    for row in rows:
        best = -math.inf
        for ths, w in row:
            margin = ths * rev - w * cost
            if margin > best:  # noqa: PLR1730 (a branch costs less than a call to max)
                best = margin
        total += best
    return total


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def line(name: str, values: Sequence[float], rigs: int) -> str:
    median = statistics.median(values)
    return (
        f"  {name:<26} median {median:8.2f} ms   p95 {p95(values):8.2f} ms"
        f"   ({median * 1000 / rigs:.2f} µs/rig)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile decide and guards")
    parser.add_argument(
        "--gc-default",
        action="store_true",
        help="keep CPython's default GC thresholds instead of the daemon's (daemon/gctune.py)",
    )
    args = parser.parse_args()

    rng = random.Random(args.seed)
    rigs = make_fleet(args.rigs, rng)
    if not args.gc_default:
        from daemon.gctune import tune_gc

        tune_gc()  # as `rigpilot run` does once its fleet is built
    terms = Economics(pool_fee=0.02)
    # As `rigpilot run` sets it: power-up start slots up to the next tick.
    config = GuardConfig(min_dwell_s=60.0, economics=terms, ramp_horizon_s=TICK_S)
    policy, capper = BreakevenPolicy(), PowerCapPolicy()
    overrides = [
        Override(Mode.SLEEP, T0 + 1e6, "ops", "cooling work", group="row3"),
        Override(Mode.LOW, T0 + 150.0, "ops", "PDU test", group="row7", bypass_dwell=True),
    ]
    state = GuardState()

    build_ms: list[float] = []
    decide_ms: list[float] = []
    cap_ms: list[float] = []
    combine_ms: list[float] = []
    guards_ms: list[float] = []
    total_ms: list[float] = []
    base_ms: list[float] = []
    changes: dict[str, int] = {}
    held_back = 0
    intents_n = 0
    profiler = cProfile.Profile() if args.profile else None

    for tick in range(args.ticks):
        now = T0 + tick * TICK_S
        t = time.perf_counter()
        fleet = [observe(r, now, rng) for r in rigs]
        build_ms.append(ms(t))
        stale = tick == args.ticks // 2
        market = MarketView(hashprice_at(tick), None if stale else POWER_PRICE, "bench", "bench")
        draw_kw = sum(r.observation.power_w or 0.0 for r in fleet if r.observation) / 1000.0
        site = Site(economics=terms, power_cap_kw=draw_kw * 0.97)

        if profiler is not None:
            profiler.enable()
        t = time.perf_counter()
        intents = policy.decide(market, fleet, site, now)
        decide_ms.append(ms(t))
        t = time.perf_counter()
        desired, state = apply_guards(intents, fleet, market, state, config, overrides, now, tick)
        guards_ms.append(ms(t))
        if profiler is not None:
            profiler.disable()
        total_ms.append(decide_ms[-1] + guards_ms[-1])
        t = time.perf_counter()
        capped = capper.decide(market, fleet, site, now)
        cap_ms.append(ms(t))
        t = time.perf_counter()
        both: Mapping[RigId, Intent] = combine([intents, capped], fleet)
        combine_ms.append(ms(t))
        del both

        rows = baseline_rows(fleet)
        t = time.perf_counter()
        baseline(rows, market.hashprice_usd_per_ph_day or 0.0, POWER_PRICE)
        base_ms.append(ms(t))

        intents_n += len(intents)
        held_back += _obey(rigs, desired, changes)

    print(
        f"{args.rigs} rigs ({len(MODELS)} models, 3 drivers' mode sets), {args.ticks} ticks of "
        f"{TICK_S:.0f} s, hashprice {min(map(hashprice_at, range(args.ticks))):.1f}–"
        f"{max(map(hashprice_at, range(args.ticks))):.1f} USD/PH/day at "
        f"{POWER_PRICE} USD/kWh (tick {args.ticks // 2}: power price stale)",
        flush=True,
    )
    print(
        f"  {intents_n / args.ticks:.0f} intents/tick; desired changes by decider: "
        + ", ".join(f"{k} {v}" for k, v in sorted(changes.items(), key=lambda kv: -kv[1]))
        + f"; {held_back} rig-ticks held back by a guard",
        flush=True,
    )
    print("per tick:")
    print(line("breakeven decide", decide_ms, args.rigs))
    print(line("apply_guards", guards_ms, args.rigs))
    print(line("total (decide + guards)", total_ms, args.rigs))
    print(line("power-cap decide", cap_ms, args.rigs))
    print(line("combine (2 policies)", combine_ms, args.rigs))
    print(line("baseline (plain loop)", base_ms, args.rigs))
    print(line("(shell: build views)", build_ms, args.rigs))
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    figures = {
        "rigs": args.rigs,
        "decide_ms": round(statistics.median(decide_ms), 2),
        "decide_p95_ms": round(p95(decide_ms), 2),
        "guards_ms": round(statistics.median(guards_ms), 2),
        "guards_p95_ms": round(p95(guards_ms), 2),
        "total_ms": round(statistics.median(total_ms), 2),
        "total_p95_ms": round(p95(total_ms), 2),
        "power_cap_ms": round(statistics.median(cap_ms), 2),
        "combine_ms": round(statistics.median(combine_ms), 2),
        "baseline_ms": round(statistics.median(base_ms), 3),
        "target_ms": int(TARGET_MS),
        "gc": "default" if args.gc_default else "daemon",
    }
    ok = statistics.median(total_ms) <= TARGET_MS
    print(
        "RESULT "
        + " ".join(f"{k}={v}" for k, v in figures.items())
        + f" ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


def _obey(rigs: list[SimRig], desired: Mapping[RigId, Desired], changes: dict[str, int]) -> int:
    """The rigs take the desired modes (instantly); counts changes by decider, and holds."""
    held = 0
    for rig in rigs:
        want = desired[rig.identity.rig_id]
        held += want.held_back
        if want.mode in (Mode.UNKNOWN, Mode.LIMIT) or want.mode is rig.mode:
            continue
        changes[want.decided_by] = changes.get(want.decided_by, 0) + 1
        rig.mode = want.mode
    return held


if __name__ == "__main__":
    sys.exit(main())
