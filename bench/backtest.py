"""Backtest cost: a month (8,640 rows) and a year (105,120 rows) at 5 minutes for 1,000 rigs.

A synthetic, seeded year, built in memory: hashprice a slow random walk between about 25 and 55
USD/PH/day with hourly noise; power price a daily cycle (3-5.5 ¢/kWh) with 5-minute noise, a
scarcity spike about twice a week (to 0.3-2 USD/kWh, 10-90 minutes) and a windy night with
negative prices about once a week. Every row has new prices (nothing repeats). Fleet: 400
S19j Pro (health 0.90-1.00 in 3 buckets), 300 S21 (0.97-1.03, 3 buckets), 200 M30S+ at 30 °C
ambient, 100 M60S: 8 classes. ``breakeven`` with the guards' defaults (dwell 600 s,
hysteresis 0.25 USD/day, ramp 100 kW/min and 1 rig/s, 30 s ticks) unless flags say otherwise.

Timed: ``replay`` (the policy run and both baselines, with the physics). Baseline, same run: a
plain loop over the same rows applying the on/off threshold to 8 classes at constant power (the
least any replay must do: touch every row). Reports are not timed.

Each run ends with ``RESULT rows=... rigs=... wall_s=... cpu_s=... baseline_s=... ticks=...
decide_calls=... guard_calls=... peak_cohorts=... target_s=5|30 ok=yes|no`` (targets: a month
in 5 s, a year in 30 s, issue 21).

``--breakdown`` also prints where the replay's time goes: inside ``apply_guards`` (the live
guards' own work), in the replay's guard path around it (cohorts shown rig by rig, splits), in
the policies' path, and everything else (views, skipping checks, physics, accounts), each timed
with a wrapper around that function.

``--ramp-audit`` also prints the most kW the guards granted in any 60 s window (the power-ups
the replay kept, at their start slots) next to the budget, and fails the run above it. The
steepest ramp in the summary is measured on the physics (the fleet's 1-minute mean power), where
a waking rig's draw rises over its boot and frequency ramp, so it can pass the budget a little.

Usage: python -m bench.backtest [--days 30 --days 365] [--rigs-per-s 1.0] [--profile]
       [--breakdown] [--ramp-audit]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backtest.engine import RampFn, ReplayConfig, replay  # noqa: E402
from backtest.inputs import Fleet, Market, RigGroup  # noqa: E402
from backtest.report import summary  # noqa: E402
from backtest.synthetic import synthetic_market  # noqa: E402
from policies.economics import Economics, cost_per_day, revenue_usd_per_day  # noqa: E402
from policies.guards import GuardConfig, RampGrant  # noqa: E402
from policies.registry import load_policy  # noqa: E402
from simulator.models import MODELS  # noqa: E402


def fleet() -> Fleet:
    return Fleet(
        "bench fleet",
        (
            RigGroup(MODELS["s19jpro"], 400, 0.95, 0.05, 3),
            RigGroup(MODELS["s21"], 300, 1.0, 0.03, 3),
            RigGroup(MODELS["m30s+"], 200, ambient_c=30.0),
            RigGroup(MODELS["m60s"], 100),
        ),
    )


def baseline(market: Market, points: list[tuple[float, float, int]], terms: Economics) -> float:
    """The plain threshold loop: per row, per class, on iff its margin at normal is >= 0."""
    profit = 0.0
    dt_day = market.interval_s / 86_400.0
    for row in market.rows:
        hp, pp = row.hashprice_usd_per_ph_day or 0.0, row.power_price_usd_per_kwh or 0.0
        for ths, w, n in points:
            margin = revenue_usd_per_day(ths, hp, terms) - cost_per_day(w, pp, terms)
            if margin >= 0:
                profit += margin * n * dt_day
    return profit


TARGETS_S = {30: 5.0, 365: 30.0}
"""Issue 21: a month of 5-minute rows for 1,000 rigs in 5 s, a year in 30 s (2-core machine)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--days", type=int, action="append", help="days to replay (default: 30, then 365)"
    )
    parser.add_argument("--rigs-per-s", type=float, default=1.0, help="ramp_rigs_per_s")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="time the replay's parts")
    parser.add_argument(
        "--ramp-audit", action="store_true", help="the most kW granted in any 60 s window"
    )
    args = parser.parse_args()
    ok = True
    for days in args.days or sorted(TARGETS_S):
        ok = run(days, args) and ok
    return 0 if ok else 1


def run(days: int, args: argparse.Namespace) -> bool:
    """Replay ``days`` of the synthetic history; print the figures; whether within target."""
    market = synthetic_market(days)
    rigs = fleet()
    terms = Economics()
    config = ReplayConfig(
        ("breakeven",), GuardConfig(economics=terms, ramp_rigs_per_s=args.rigs_per_s)
    )
    policy = load_policy("breakeven")

    points = [
        (MODELS[k].hashrate_ths, MODELS[k].power_w, n)
        for k, n in (("s19jpro", 400), ("s21", 300), ("m30s+", 200), ("m60s", 100))
    ]
    t, base_cpu = time.perf_counter(), time.process_time()
    baseline(market, points, terms)
    base_s, base_cpu = time.perf_counter() - t, time.process_time() - base_cpu

    spent = _timed_parts() if args.breakdown else None
    starts, on_ramp = kept_starts() if args.ramp_audit else (None, None)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    t, cpu = time.perf_counter(), time.process_time()
    outcome = replay(market, rigs, [policy], config, on_ramp=on_ramp)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
    c = outcome.policy.counters
    assert c is not None
    pol, always, thr = summary(outcome)
    print(
        f"{len(market.rows)} rows ({days} days at 5 min), {rigs.rigs} rigs, breakeven, "
        f"ramp {config.guards.ramp_rigs_per_s:g} rigs/s and {config.guards.ramp_kw_per_min:g} "
        f"kW/min, {config.tick_s:g} s ticks"
    )
    print(
        f"  replay {wall:.2f} s wall, {cpu:.2f} s CPU ({wall / len(market.rows) * 1e6:.1f} µs/row);"
        f" baseline plain threshold loop {base_s:.3f} s wall, {base_cpu:.3f} s CPU"
    )
    print(
        f"  {c.ticks} ticks, policies called {c.decide_calls}x, guards {c.guard_calls}x, "
        f"at most {c.peak_units} cohorts, {c.views} views built, {c.shown_again} guard calls made "
        "again with more of a cohort shown"
    )
    for f in (pol, always, thr):
        print(
            f"  {f.name:<10} profit {f.profit_usd:>14,.0f} USD, {f.mode_changes_per_rig_mean:7.1f} "
            f"changes/rig, ramp {f.steepest_ramp_kw_per_min:8.1f} kW/min"
        )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    if spent is not None:
        guards, path, decide = spent["apply_guards"], spent["guard path"], spent["policies"]
        rest = wall - path - decide
        print(
            f"  breakdown: the tick's guard stage {guards:.2f} s ({guards / wall:.0%}), the "
            f"replay's guard path around it {path - guards:.2f} s ({(path - guards) / wall:.0%}), "
            f"policies {decide:.2f} s ({decide / wall:.0%}), the rest {rest:.2f} s "
            f"({rest / wall:.0%})"
        )
    within = True
    if starts is not None:
        budget = config.guards.ramp_kw_per_min
        peak = peak_kw_in_minute(starts)
        within = peak <= budget + 1e-6
        print(
            f"  ramp audit: {len(starts)} power-ups granted; the most kW granted in any 60 s "
            f"{peak:.2f} (budget {budget:g}): {'within' if within else 'OVER THE BUDGET'}"
        )
    target = TARGETS_S.get(days)
    ok = target is not None and wall <= target and within
    print(
        f"RESULT rows={len(market.rows)} rigs={rigs.rigs} rigs_per_s={args.rigs_per_s:g} "
        f"wall_s={wall:.2f} cpu_s={cpu:.2f} baseline_s={base_s:.3f} baseline_cpu_s={base_cpu:.3f} "
        f"ticks={c.ticks} "
        f"decide_calls={c.decide_calls} guard_calls={c.guard_calls} peak_cohorts={c.peak_units} "
        f"target_s={target if target is not None else '-'} ok={'yes' if ok else 'no'}"
    )
    return ok


def kept_starts() -> tuple[dict[tuple[float, str], float], RampFn]:
    """The power-ups the replay keeps, (start slot, rig id) -> kW, filled by the returned
    ``on_ramp`` callback for ``replay`` (the ramp's memory after each guard step)."""
    kept: dict[tuple[float, str], float] = {}

    def keep(log: tuple[RampGrant, ...]) -> None:
        kept.update(((g.at, g.rig_id), g.kw) for g in log)

    return kept, keep


def peak_kw_in_minute(starts: dict[tuple[float, str], float]) -> float:
    """The most kW started in any window (t - 60 s, t]."""
    ordered = sorted((at, kw) for (at, _), kw in starts.items())
    peak = total = 0.0
    first = 0
    for at, kw in ordered:
        total += kw
        while ordered[first][0] <= at - 60.0:
            total -= ordered[first][1]
            first += 1
        peak = max(peak, total)
    return peak


def _timed_parts() -> dict[str, float]:
    """Wrap the replay's parts with timers; returns the running totals (seconds)."""
    from backtest import cohorts

    spent = {"apply_guards": 0.0, "guard path": 0.0, "policies": 0.0}

    def timed(owner: object, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started

        setattr(owner, name, wrapper)

    timed(cohorts, "guard", "apply_guards")
    timed(cohorts.PolicyRun, "_guard", "guard path")
    timed(cohorts.PolicyRun, "_decide", "policies")
    return spent


if __name__ == "__main__":
    sys.exit(main())
