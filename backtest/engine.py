"""The replay: a market history through the live policies and guards, on simulated physics, with
always-on and the plain threshold as baselines over the same rows.

The policy run decides through the cohort optimiser (``backtest/cohorts.py``), which calls the
same tick stages as the live loop (policies/tick.py); the books are ``backtest/ledger.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from backtest.classes import ProgressFn, RampFn, ReplayConfig, RigClass, classes_of
from backtest.cohorts import Counters, PolicyFailed, PolicyRun
from backtest.inputs import Fleet, Market
from backtest.ledger import Prices, Strategy, Unit
from backtest.physics import RigPhysics
from policies.api import MarketView, Policy
from policies.economics import cost_per_day, revenue_usd_per_day
from policies.guards import (
    Setting,
)
from policies.values import Mode

__all__ = ["Outcome", "PolicyFailed", "ProgressFn", "RampFn", "Replay", "ReplayConfig", "replay"]


@dataclass(slots=True)
class Replay:
    """The outcome of one strategy over the history."""

    name: str
    strategy: Strategy
    ramp_kw_per_min: float
    counters: Counters | None = None


@dataclass(slots=True)
class Outcome:
    """The policy run and both baselines, over the same history and fleet."""

    market: Market
    fleet: Fleet
    classes: list[RigClass]
    config: ReplayConfig
    policy: Replay
    always_on: Replay
    threshold: Replay
    failures: tuple[PolicyFailed, ...] = ()
    """The policies that failed during the replay; the fleet held at each such tick."""


# ---------------------------------------------------------------------------------------------
# running everything


def _units(
    strategy: Strategy, classes: Sequence[RigClass], start: float, plain: bool = False
) -> None:
    """One cohort per class (``plain``: one per rig), every rig running at normal."""
    steady: dict[tuple[str, float, float], RigPhysics] = {}
    for c in classes:
        key = (c.spec.key, c.health, c.ambient_c)
        if key not in steady:
            steady[key] = RigPhysics.running(c.spec, c.health, c.ambient_c, start)
        rigs = list(range(c.first, c.first + c.count))
        for members in [[i] for i in rigs] if plain else [rigs]:
            strategy.units.append(
                Unit(
                    strategy.new_uid(), c, members, steady[key].copy(), Setting(Mode.NORMAL), start
                )
            )


def replay(
    market: Market,
    fleet: Fleet,
    policies: Sequence[Policy],
    config: ReplayConfig,
    progress: ProgressFn | None = None,
    on_ramp: RampFn | None = None,
) -> Outcome:
    """Run the policies, always-on and the plain threshold over ``market`` with ``fleet``.
    ``on_ramp`` is told the policy run's ramp memory after each guard step (an audit of the
    power-ups the replay keeps: bench/backtest.py --ramp-audit, tests).

    Deterministic: the same inputs give the same outcome."""
    # As in the daemon, one tick schedules power-up starts up to the next tick. The replay
    # starts a granted rig at the tick, not at its slot within the tick (docs/backtest.md).
    config = dataclasses.replace(
        config, guards=dataclasses.replace(config.guards, ramp_horizon_s=config.tick_s)
    )
    classes = classes_of(fleet)
    prices = Prices.of(market)
    terms = config.economics
    rows = market.rows
    interval = float(market.interval_s)

    live = Strategy(prices, terms, classes)
    _units(live, classes, market.start, config.plain)
    run = PolicyRun(live, policies, config, progress, on_ramp)
    p0_live = live.initial_power_w()

    thr = Strategy(prices, terms, classes)
    _units(thr, classes, market.start)
    p0_thr = thr.initial_power_w()
    on_ratio = {}
    for u in thr.units:
        ths, w = u.phys.hashrate_ths, u.phys.power_w
        on_ratio[u.uid] = (ths, w)

    always = Strategy(prices, terms, classes)
    _units(always, classes, market.start)

    total = len(rows)
    step = max(1, total // 100)
    normal, sleep = Setting.of(Mode.NORMAL, None), Setting.of(Mode.SLEEP, None)
    for i, row in enumerate(rows):
        t0 = row.t
        t1 = t0 + interval
        view = MarketView(
            row.hashprice_usd_per_ph_day, row.power_price_usd_per_kwh, "backtest", "backtest"
        )
        run.merge(t0)
        t = t0
        while True:
            run.tick(t, view)
            nxt = run.next_tick(t)
            if nxt is None or nxt >= t1 - 1e-9:
                live.advance(t1, i)
                break
            live.advance(nxt, i)
            t = nxt
        live.end_row(t1)

        hp, pp = prices.hp[i], prices.pp[i]
        for u in thr.units:
            ths, w = on_ratio[u.uid]
            on = revenue_usd_per_day(ths, hp, terms) - cost_per_day(w, pp, terms) >= 0
            thr.command(u, normal if on else sleep, t0)
        thr.advance(t1, i)
        thr.end_row(t1)

        always.advance(t1, i)
        always.end_row(t1)
        if progress is not None and (i % step == 0 or i == total - 1):
            progress(i + 1, total)

    end = market.end
    for s in (live, thr, always):
        s.finish(end)
    return Outcome(
        market,
        fleet,
        classes,
        config,
        Replay("policy", live, live.steepest_ramp_kw_per_min(market.start, p0_live), run.counters),
        Replay("always-on", always, 0.0),
        Replay("threshold", thr, thr.steepest_ramp_kw_per_min(market.start, p0_thr)),
        tuple(run.failures.values()),
    )
