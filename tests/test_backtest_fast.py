"""The replay's shortcuts against ``--exact`` on a market and fleet that exercise them: new
prices every row (hysteresis re-asked), cohorts of many rigs woken by a tight ramp (power-ups
shown rig by rig, split and merged again), several classes competing for the ramp."""

from __future__ import annotations

import dataclasses

from backtest.engine import Outcome, ReplayConfig, read_again_at, replay
from backtest.inputs import Fleet, Market, RigGroup
from backtest.physics import RigPhysics, state_key
from backtest.report import summary
from backtest.synthetic import synthetic_market
from policies.guards import GuardConfig, Setting
from policies.registry import load_policy
from policies.values import Mode, Observation
from simulator.models import MODELS

FLEET = Fleet(
    "mixed",
    (
        RigGroup(MODELS["s19jpro"], 40, 0.95, 0.05, 2),
        RigGroup(MODELS["s21"], 30),
        RigGroup(MODELS["m30s+"], 20, ambient_c=30.0),
    ),
)


def _run(market: Market, exact: bool, **guards: float) -> Outcome:
    config = ReplayConfig(guards=GuardConfig(**guards), exact=exact)  # type: ignore[arg-type]
    return replay(market, FLEET, [load_policy("breakeven")], config)


def _same(fast: Outcome, exact: Outcome) -> None:
    assert summary(fast) == summary(exact)
    for a, b in ((fast.policy, exact.policy), (fast.threshold, exact.threshold)):
        s, t = a.strategy, b.strategy
        assert s.row_energy_ws == t.row_energy_ws
        assert s.row_hash_ths_s == t.row_hash_ths_s
        assert s.row_hashing == t.row_hashing
        assert s.rig_changes == t.rig_changes
        assert s.rig_revenue == t.rig_revenue
        assert s.rig_cost == t.rig_cost
        assert a.ramp_kw_per_min == b.ramp_kw_per_min


def test_fast_equals_exact_with_a_tight_ramp() -> None:
    # two days: a negative-price night and daily swings, new prices each row
    market = synthetic_market(2)
    fast = _run(market, False, ramp_kw_per_min=20.0)
    exact = _run(market, True, ramp_kw_per_min=20.0)
    _same(fast, exact)
    assert fast.policy.counters is not None and exact.policy.counters is not None
    assert fast.policy.counters.ticks < exact.policy.counters.ticks
    assert sum(fast.policy.strategy.rig_changes) > 0


def test_fast_equals_exact_with_slow_starts() -> None:
    market = synthetic_market(2)
    fast = _run(market, False, ramp_rigs_per_s=0.2)
    exact = _run(market, True, ramp_rigs_per_s=0.2)
    _same(fast, exact)


Wake = tuple[list[tuple[float, float]], list[tuple[float, float]], object, bool, float]


def _wake(base: RigPhysics, start: float, cached: bool) -> Wake:
    """``base`` told to wake at ``start`` and run 20 minutes of 30 s ticks."""
    rig = base.copy()
    rig.command(Setting(Mode.NORMAL), start)
    events: list[tuple[float, float]] = []

    def sink(t: float, dw: float) -> None:
        events.append((t - start, dw))

    sums = []
    for k in range(1, 40):
        end = start + 30.0 * k
        if cached or rig.settled:  # settled: constant, nothing cached
            sums.append(rig.run(end, sink, 3.0))
        else:
            sums.append(rig._integrate(end, sink, 3.0))
            rig.state.t = end
        assert rig.state.t == end
    return sums, events, state_key(rig.state), rig.settled, rig.power_w


def test_a_replayed_physics_segment_is_the_integrated_one() -> None:
    # A wake-up integrated step by step, and the same wake-up of other rigs later, recorded
    # and then replayed from the segment cache: same states, energy, hashes, power levels.
    t0 = 1_767_225_600.0
    base = RigPhysics.running(MODELS["s21"], 0.97, 25.0, t0)
    base.command(Setting(Mode.SLEEP), t0)
    base.run(t0 + 600.0)
    assert base.settled
    direct = _wake(base, t0 + 600.0, cached=False)
    assert direct[3]  # settled on the way
    assert _wake(base, t0 + 4200.0, cached=True) == direct
    assert _wake(base, t0 + 7800.0, cached=True) == direct


def test_an_observation_read_again_keeps_every_other_field() -> None:
    values = {f.name: f"v{n}" for n, f in enumerate(dataclasses.fields(Observation))}
    obs = Observation(**values)  # type: ignore[arg-type]
    assert read_again_at(obs, 5.0) == dataclasses.replace(obs, observed_at=5.0)
