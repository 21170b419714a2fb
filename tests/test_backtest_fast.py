"""The replay's shortcuts against ``--exact`` on a market and fleet that exercise them: new
prices every row (hysteresis re-asked), cohorts of many rigs woken by a tight ramp (power-ups
shown rig by rig, split and merged again), several classes competing for the ramp."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest.cohorts import read_again
from backtest.engine import Outcome, ReplayConfig, replay
from backtest.frozen import maker, replacer
from backtest.inputs import Fleet, Market, MarketRow, RigGroup, load_fleet, load_market
from backtest.physics import RigPhysics, state_key
from backtest.ramp_view import DrawOrder, by_draw_then_id, rig_ids
from backtest.report import summary
from backtest.synthetic import synthetic_market
from policies.api import RigView, Site
from policies.guards import FailSafe, GuardConfig, Setting
from policies.guards.ramp import jitter, jitter_shift
from policies.registry import load_policy
from policies.values import Identity, Mode, Observation
from simulator.models import MODELS

T0 = 1_767_225_600.0
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "backtest"
SAMPLE_MARKET, SAMPLE_FLEET = SAMPLE / "feb2026.csv", SAMPLE / "fleet.toml"

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
    sums = []
    for k in range(1, 40):
        end = start + 30.0 * k
        if cached or rig.settled:  # settled: constant, nothing cached
            sums.append(rig.run(end, events, 3.0))
        else:
            levels: list[tuple[float, float, float]] = []
            sums.append(rig._integrate(end, levels))
            events.extend((t, (new_w - old_w) * 3.0) for t, new_w, old_w in levels)
            rig.state.t = end
        assert rig.state.t == end
    since = [(t - start, dw) for t, dw in events]
    return sums, since, state_key(rig.state), rig.settled, rig.power_w


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
    assert read_again(obs, 5.0) == dataclasses.replace(obs, observed_at=5.0)


@pytest.mark.parametrize("cls", [Observation, RigView, Identity])
def test_a_frozen_value_made_through_its_slots_is_the_one_its_init_makes(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    values = [f"v{n}" for n in range(len(fields))]
    made, built = maker(cls)(*values), cls(*values)
    assert type(made) is cls and made == built and hash(made) == hash(built)
    assert [getattr(made, f.name) for f in fields] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, "x")  # still frozen
    for f in fields:
        again = replacer(cls, f.name)(built, "new")
        assert again == dataclasses.replace(built, **{f.name: "new"})


def test_only_frozen_slots_dataclasses_built_by_their_fields_are_made_through_slots() -> None:
    @dataclasses.dataclass(slots=True)
    class Open:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            assert self.a > 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="Open is not a frozen slots dataclass"):
        maker(Open)
    with pytest.raises(TypeError, match="Checked has a __post_init__"):
        maker(Checked)
    with pytest.raises(TypeError, match="Derived has fields its __init__ does not take"):
        maker(Derived)
    with pytest.raises(TypeError, match="RigView has no field 'nope'"):
        replacer(RigView, "nope")


# ---------------------------------------------------------------------------------------------
# the cohort optimiser against the plain replay (every rig its own cohort, every call made)

MODEL_KEYS = ("s19jpro", "s21", "m30s+")


@st.composite
def market_and_fleet(draw: st.DrawFn) -> tuple[Market, Fleet]:
    rows = []
    for i in range(draw(st.integers(6, 60))):
        hp = draw(st.none() | st.floats(20.0, 60.0)) if draw(st.booleans()) else 45.0
        pp = draw(st.sampled_from([None, -0.02, 0.03, 0.05, 0.07, 0.09, 0.5, 2.0]))
        rows.append(MarketRow(T0 + 300.0 * i, hp, pp))
    groups = tuple(
        RigGroup(
            MODELS[draw(st.sampled_from(MODEL_KEYS))],
            draw(st.integers(1, 6)),
            draw(st.sampled_from([0.9, 1.0])),
            ambient_c=draw(st.sampled_from([25.0, 35.0])),
        )
        for _ in range(draw(st.integers(1, 3)))
    )
    return Market("drawn", 300, tuple(rows)), Fleet("drawn", groups)


def _equal_to_the_plain_replay(market: Market, fleet: Fleet, config: ReplayConfig) -> Outcome:
    policies = [load_policy(n) for n in config.policies]
    cohorts = replay(market, fleet, policies, config)
    plain = replay(market, fleet, policies, dataclasses.replace(config, plain=True))
    a, b = cohorts.policy.strategy, plain.policy.strategy
    assert a.rig_changes == b.rig_changes
    assert a.row_hashing == b.row_hashing
    # Sums of the same terms, flushed at other moments: equal to the last bits or nearly.
    for x, y in (
        (a.rig_revenue, b.rig_revenue),
        (a.rig_cost, b.rig_cost),
        (a.rig_energy_ws, b.rig_energy_ws),
        (a.row_energy_ws, b.row_energy_ws),
        (a.row_hash_ths_s, b.row_hash_ths_s),
    ):
        assert x == pytest.approx(y, rel=1e-9, abs=1e-6)
    assert cohorts.policy.ramp_kw_per_min == pytest.approx(plain.policy.ramp_kw_per_min)
    assert cohorts.failures == plain.failures
    return cohorts


RAMPS = {
    "free": (1e6, 1000.0),  # never binds
    "kW": (12.0, 1000.0),  # a few rigs a minute by power
    "slots": (1e6, 1 / 30),  # one start per 30 s tick
    "both": (20.0, 0.1),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    market_and_fleet(),
    st.sampled_from([0.0, 600.0]),
    st.sampled_from([0.0, 0.25]),
    st.sampled_from(list(FailSafe)),
    st.sampled_from(sorted(RAMPS)),
    st.integers(0, 3),
)
def test_the_cohort_replay_equals_the_plain_replay_on_drawn_markets_and_fleets(
    drawn: tuple[Market, Fleet], dwell: float, band: float, failsafe: FailSafe, ramp: str, seed: int
) -> None:
    # With a binding ramp, which of several rigs alike starts first is each rig's own jitter
    # (policies/guards/ramp.py): a cohort shows the members first in that order, by rig id.
    market, fleet = drawn
    kw_per_min, rigs_per_s = RAMPS[ramp]
    guards = GuardConfig(
        min_dwell_s=dwell,
        hysteresis_usd_per_day=band,
        stale_failsafe=failsafe,
        ramp_kw_per_min=kw_per_min,
        ramp_rigs_per_s=rigs_per_s,
    )
    _equal_to_the_plain_replay(market, fleet, ReplayConfig(guards=guards, seed=seed))


@pytest.mark.parametrize("ramp", sorted(RAMPS))
def test_the_cohort_replay_equals_the_plain_replay_on_the_sample(ramp: str) -> None:
    market = load_market(SAMPLE_MARKET)
    market = dataclasses.replace(market, rows=market.rows[:288])  # the first day
    kw_per_min, rigs_per_s = RAMPS[ramp]
    guards = GuardConfig(ramp_kw_per_min=kw_per_min, ramp_rigs_per_s=rigs_per_s)
    _equal_to_the_plain_replay(market, load_fleet(SAMPLE_FLEET), ReplayConfig(guards=guards))


def test_a_cohort_shown_short_of_what_the_ramp_grants_is_shown_again() -> None:
    # A waiting cohort is shown as many rigs as the ramp's kW would take of the rise its
    # policy asks for, plus one (backtest/ramp_view.py). Here the guards ask for less: the
    # schedule wants high, the prices go stale, and the fail-safe wakes the rigs to normal
    # only, so the ramp grants more of them than were shown. The replay must notice (the last
    # rig shown was granted) and ask again with more shown, or it would differ from the plain
    # replay.
    schedule = [
        {"name": "night", "start": "00:00", "end": "01:00", "mode": "sleep", "timezone": "UTC"},
        {"name": "day", "start": "01:00", "end": "24:00", "mode": "high", "timezone": "UTC"},
    ]
    rows = tuple(
        MarketRow(T0 + 300.0 * i, 45.0 if i < 12 else None, 0.05 if i < 12 else None)
        for i in range(30)
    )
    fleet = Fleet("one class", (RigGroup(MODELS["m30s+"], 30),))
    guards = GuardConfig(stale_failsafe=FailSafe.NORMAL, ramp_kw_per_min=20.0)
    site = Site(params={"schedule": schedule})
    config = ReplayConfig(("schedule",), guards, site)
    cohorts = _equal_to_the_plain_replay(Market("stale", 300, rows), fleet, config)
    assert cohorts.policy.counters is not None
    assert cohorts.policy.counters.shown_again > 0
    assert sum(cohorts.policy.strategy.row_hashing[-1:]) == 30  # all woken, by the fail-safe


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 3000), min_size=1, max_size=60, unique=True),
    st.integers(1, 61),
    st.integers(0, 3),
    st.floats(0.0, 1e9, allow_nan=False),
)
def test_a_cohorts_first_rigs_are_the_front_of_the_ramps_order(
    members: list[int], n: int, seed: int, now: float
) -> None:
    # DrawOrder keeps a cohort's members sorted by their own draws for the hour and finds the
    # first ones at a tick by bisection: the same rigs, in the same order, as sorting them all
    # by the ramp's jitter (then id), at that tick, a later tick of the hour, the next hour,
    # and after the cohort lost members.
    members = sorted(members)

    def front(rigs: list[int], m: int, at: float) -> list[str]:
        draw = jitter(seed, at)
        return sorted(rig_ids(rigs), key=lambda r: (draw(r), r))[:m]

    # the class (the cohort's rigs and others), or a class alike it was merged with
    for rigs in (range(members[0], members[-1] + 1), range(members[0], members[0] + 1)):
        order = DrawOrder(seed)
        m = min(n, len(members))
        for at in (now, now + 30.0, now + 3600.0):
            shift = jitter_shift(seed, at)
            assert order.first("u1", members, rigs, m, at, shift) == front(members, m, at)
        rest = members[::2]
        m = min(m, len(rest))
        at = now + 3630.0
        assert order.first("u1", rest, rigs, m, at, jitter_shift(seed, at)) == front(rest, m, at)


def test_rigs_with_equal_draws_are_ordered_by_id() -> None:
    ids = ["rig10", "rig2", "rig9", "rig3"]
    assert by_draw_then_id([5, 3, 5, 1], ids) == [3, 1, 0, 2]  # "rig10" < "rig9"
    assert by_draw_then_id([5, 3, 4, 1], ids) == [3, 1, 2, 0]
