"""The column paths (``policies/columns.py``, ``policies/guards/columnar.py``) give exactly what
the per-rig code gives: the same intents in the same order, the same desired state per rig
(reasons included), the same guard memory and ramp log, tick after tick."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_guards import (
    T0,
    RigTick,
    Scenario,
    Tick,
    configs,
    overrides_for,
    rig_specs,
    scenarios,
    settings_for,
    tick_inputs,
)

from bench.decide import make_fleet, observe
from policies.api import Intent, MarketView, RigView, Site
from policies.breakeven import BreakevenPolicy
from policies.columns import FleetViews, IntentColumns
from policies.economics import Economics, ModePoint
from policies.guards import (
    Desired,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
    apply_guards,
)
from policies.guards.columnar import DesiredColumns
from policies.values import Mode, PowerSource, RigId

SITE = Site(economics=Economics(pool_fee=0.02))


def same(
    got: tuple[Mapping[RigId, Desired], GuardState],
    want: tuple[Mapping[RigId, Desired], GuardState],
) -> None:
    """Equal answers: the same rigs in the same order, equal values, equal reason texts."""
    desired, state = got
    expected, expected_state = want
    assert list(desired) == list(expected)
    for rid, d in expected.items():
        assert desired[rid] == d, rid
        assert desired[rid].reason == d.reason, rid
    assert state == expected_state
    assert state.as_of == expected_state.as_of


def run_both(sc: Scenario, columns_intents: bool = False) -> None:
    """Run the scenario through the column path, and check every tick against the per-rig
    path given the same inputs."""
    state, now = GuardState(), T0
    last: dict[RigId, Setting] = {}
    for tick in sc.ticks:
        now += tick.dt_s
        fleet, intents, market = tick_inputs(sc, tick, last, now, "breakeven")
        args = (market, state, sc.config, sc.overrides, now, sc.seed)
        want = apply_guards(intents, fleet, *args)
        got = apply_guards(intents, FleetViews(fleet), *args)
        assert isinstance(got[0], DesiredColumns)
        same(got, want)
        state = got[1]
        last = {r: d.setting for r, d in got[0].items()}


@st.composite
def calm_scenarios(draw: st.DrawFn, max_ticks: int = 30) -> Scenario:
    """Runs where most rigs are in the plain situations the column path answers itself: read
    fresh, cool, prices known, the policy moving each rig between two settings, few overrides."""
    n = draw(st.integers(1, 8))
    specs = tuple(draw(rig_specs(i)) for i in range(n))
    plain = [st.sampled_from(sorted(s.modes - {Mode.LIMIT})).map(Setting) for s in specs]
    pairs = [
        (draw(settings_for(s) if draw(st.integers(0, 5)) == 0 else p), draw(p))
        for s, p in zip(specs, plain, strict=True)
    ]
    ticks = []
    for _ in range(draw(st.integers(1, max_ticks))):
        rigs = []
        for s, pair in zip(specs, pairs, strict=True):
            rigs.append(
                RigTick(
                    seen=draw(st.sampled_from(["fresh"] * 12 + ["old", "none"])),
                    temp_c=draw(
                        st.floats(30.0, 78.0)
                        if draw(st.integers(0, 9)) < 8
                        else st.one_of(st.none(), st.floats(60.0, 99.0))
                    ),
                    follows=draw(st.sampled_from([True] * 8 + [False])),
                    drift=draw(settings_for(s)),
                    intent=draw(st.sampled_from([*pair, pair[0], None])),
                )
            )
        ticks.append(
            Tick(
                dt_s=draw(st.sampled_from([0.0, 1.0, 5.0, 30.0, 61.0, 300.0, 700.0])),
                hashprice=draw(st.sampled_from([None, *[float(x) for x in range(25, 70)]])),
                power_price=draw(st.sampled_from([None, *[x / 100 for x in range(2, 10)] * 3])),
                rigs=tuple(rigs),
            )
        )
    span = sum(t.dt_s for t in ticks) + 1.0
    overrides = tuple(draw(st.lists(overrides_for(specs, span), max_size=1)))
    return Scenario(draw(configs()), specs, overrides, tuple(ticks), draw(st.integers(0, 2**32)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_guards_on_columns_give_what_the_per_rig_path_gives(sc: Scenario) -> None:
    run_both(sc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calm_scenarios())
def test_guards_on_columns_in_calm_runs(sc: Scenario) -> None:
    run_both(sc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calm_scenarios(max_ticks=15), st.sampled_from([0.0, 60.0, 600.0]))
def test_a_larger_fleet_of_the_same_rigs(sc: Scenario, dwell: float) -> None:
    # Many copies of the scenario's rigs, so the ramp picks among many rises with equal keys.
    many = replace(
        sc,
        config=replace(sc.config, min_dwell_s=dwell),
        specs=tuple(replace(s, rig_id=f"{s.rig_id}-{k:02d}") for k in range(12) for s in sc.specs),
        ticks=tuple(replace(t, rigs=t.rigs * 12) for t in sc.ticks),
    )
    run_both(many)


# ---------------------------------------------------------------------------------------------
# breakeven on columns


def same_intents(got: Mapping[RigId, Intent], want: Mapping[RigId, Intent]) -> None:
    assert list(got) == list(want)
    for rid, intent in want.items():
        assert got[rid] == intent, rid  # mode, policy, limit and the reason's text


@pytest.mark.parametrize("hashprice", [22.0, 31.5, 40.0, 47.0, 58.0])
def test_breakeven_on_columns_gives_the_same_intents_in_the_same_order(hashprice: float) -> None:
    rng = random.Random(11)
    rigs = make_fleet(600, rng)
    fleet = [observe(r, T0, rng) for r in rigs]
    market = MarketView(hashprice, 0.06, "test", "test")
    want = BreakevenPolicy().decide(market, fleet, SITE, T0)
    got = BreakevenPolicy().decide(market, FleetViews(fleet), SITE, T0)
    assert isinstance(got, IntentColumns)
    same_intents(got, want)


POINT_MODES_ = [Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH]


@st.composite
def odd_views(draw: st.DrawFn, i: int) -> RigView:
    """Views of every shape: missing and unsupported points, exact ties between modes, points
    out of the usual order, a mode given twice, a point for LIMIT, zero hashrate."""
    modes = frozenset(draw(st.sets(st.sampled_from(list(Mode)), max_size=6)))
    tie = draw(st.booleans())
    points = []
    for mode in draw(st.lists(st.sampled_from([*POINT_MODES_, Mode.LIMIT]), max_size=5)):
        ths = draw(st.sampled_from([0.0, 50.0, 100.0, 120.0]) if tie else st.floats(0.0, 300.0))
        watts = draw(st.sampled_from([10.0, 2500.0, 3000.0]) if tie else st.floats(0.0, 6000.0))
        points.append(ModePoint(mode, ths, watts, PowerSource.ESTIMATED))
    return RigView(f"r{draw(st.integers(0, 40)):02d}-{i}", None, modes, tuple(points))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=0, max_size=25).flatmap(
        lambda ks: st.tuples(*(odd_views(i) for i in range(len(ks))))
    ),
    st.floats(0.0, 120.0),
    st.floats(-0.05, 0.3),
)
def test_breakeven_on_columns_for_views_of_every_shape(
    fleet: Sequence[RigView], hashprice: float, price: float
) -> None:
    market = MarketView(hashprice, price)
    want = BreakevenPolicy().decide(market, list(fleet), SITE, T0)
    got = BreakevenPolicy().decide(market, FleetViews(fleet), SITE, T0)
    same_intents(got, want)


def test_breakeven_on_columns_with_a_shared_id_decides_as_the_per_rig_path() -> None:
    rng = random.Random(3)
    fleet = [observe(r, T0, rng) for r in make_fleet(4, rng)]
    fleet.append(replace(fleet[0], points=fleet[1].points))
    market = MarketView(40.0, 0.06)
    want = BreakevenPolicy().decide(market, fleet, SITE, T0)
    got = BreakevenPolicy().decide(market, FleetViews(fleet), SITE, T0)
    assert not isinstance(got, IntentColumns)
    same_intents(got, want)


def test_intent_columns_behave_as_a_mapping() -> None:
    rng = random.Random(5)
    fleet = FleetViews([observe(r, T0, rng) for r in make_fleet(20, rng)])
    intents = BreakevenPolicy().decide(MarketView(40.0, 0.06), fleet, SITE, T0)
    assert isinstance(intents, IntentColumns)
    first = next(iter(intents))
    assert intents[first] is intents[first]  # made once, kept
    assert first in intents and "nope" not in intents
    with pytest.raises(KeyError):
        intents["nope"]
    assert len(intents) == len(list(intents)) == 20


# ---------------------------------------------------------------------------------------------
# the guards on the policy's columns, and the memory's columns


def bench_ticks(
    n_rigs: int, ticks: int, config: GuardConfig, overrides: Sequence[Override], columns: bool
) -> list[tuple[Mapping[RigId, Desired], GuardState]]:
    rng = random.Random(17)
    rigs = make_fleet(n_rigs, rng)
    state = GuardState()
    out = []
    for tick in range(ticks):
        now = T0 + 10.0 * tick
        fleet: Sequence[RigView] = [observe(r, now, rng) for r in rigs]
        if columns:
            fleet = FleetViews(fleet)
        price = None if tick == 5 else 0.06
        market = MarketView(40.0 + 15.0 * math.sin(tick * 2 * math.pi / 12), price)
        intents = BreakevenPolicy().decide(market, fleet, SITE, now)
        desired, state = apply_guards(intents, fleet, market, state, config, overrides, now, tick)
        out.append((desired, state))
        for r in rigs:  # the rigs obey
            mode = desired[r.identity.rig_id].mode
            if mode not in (Mode.UNKNOWN, Mode.LIMIT):
                r.mode = mode
    return out


def test_guards_on_the_policy_columns_over_a_swinging_market() -> None:
    config = GuardConfig(min_dwell_s=60.0, economics=SITE.economics, ramp_horizon_s=10.0)
    overrides = [
        Override(Mode.SLEEP, T0 + 1e6, "ops", "cooling work", group="row0"),
        Override(Mode.LOW, T0 + 45.0, "ops", "PDU test", group="row1", bypass_dwell=True),
        Override(Mode.HIGH, T0 + 1e6, "ops", "burn-in", rig_ids=frozenset({"SN000007"})),
    ]
    per_rig = bench_ticks(1200, 16, config, overrides, columns=False)
    on_columns = bench_ticks(1200, 16, config, overrides, columns=True)
    for got, want in zip(on_columns, per_rig, strict=True):
        assert isinstance(got[0], DesiredColumns)
        same(got, want)
    held = sum(d.held_back for desired, _ in on_columns for d in desired.values())
    assert held > 1000  # the guards had work to do: dwell, hysteresis, ramp


def test_memory_columns_are_used_only_for_the_memory_they_were_made_from() -> None:
    rng = random.Random(9)
    rigs = make_fleet(300, rng)
    config = GuardConfig(min_dwell_s=0.0, economics=SITE.economics)
    market = MarketView(40.0, 0.06)
    fleet = [observe(r, T0, rng) for r in rigs]
    intents = BreakevenPolicy().decide(market, fleet, SITE, T0)
    _, state = apply_guards(intents, FleetViews(fleet), market, GuardState(), config, (), T0, 1)
    assert state.columns is not None
    # The same memory for a fleet in another order; and other memory under the same columns.
    reordered = list(reversed(fleet))
    edited = dict(state.rigs)
    first = fleet[0].rig_id
    edited[first] = RigGuardState(Setting(Mode.SLEEP), T0 - 5.0, Setting(Mode.NORMAL), "x")
    for views, memory in ((reordered, state), (fleet, replace(state, rigs=edited))):
        now = T0 + 30.0
        market = MarketView(55.0, 0.05)
        intents = BreakevenPolicy().decide(market, views, SITE, now)
        want = apply_guards(intents, views, market, memory, config, (), now, 2)
        got = apply_guards(intents, FleetViews(views), market, memory, config, (), now, 2)
        same(got, want)
