"""The guards: one test per guard, and property tests holding every safety invariant over long
random runs (markets, fleets, intents, overrides, unreadable rigs, stale prices, jumping
temperatures) driven by a fake clock. docs/guards.md maps each invariant to its test here."""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest
from helpers import identity, observation, rig_view
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.api import Intent, MarketView, RigView
from policies.economics import ModePoint
from policies.guards import (
    DWELL,
    HYSTERESIS,
    NO_INTENT,
    NO_OBSERVATION,
    OVERRIDE,
    RAMP,
    STALE_INPUT,
    THERMAL,
    Desired,
    FailSafe,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
    apply_guards,
)
from policies.guards.core import next_rig_state
from policies.guards.model import THERMAL_EMERGENCY, RampGrant
from policies.guards.power import is_raise
from policies.guards.ramp import (
    JITTER_ORDER_S,
    JITTER_SPAN,
    Rise,
    Send,
    first_rises,
    jitter,
    jitter_hour,
    jitter_shift,
    make_rise,
    new_grants,
    order_rises,
    prune_log,
    ramp_held,
    ramp_sends,
    rig_draws,
)
from policies.guards.rig import Decision, decide_rig, intents_for
from policies.values import Mode, Observation, PowerSource, RigId

T0 = 1_700_000_000.0
POLICY = "breakeven"
PRICES = MarketView(hashprice_usd_per_ph_day=50.0, power_price_usd_per_kwh=0.04)
STALE = MarketView(hashprice_usd_per_ph_day=None, power_price_usd_per_kwh=0.04)
WATTS = {Mode.SLEEP: 15.0, Mode.LOW: 2500.0, Mode.NORMAL: 3250.0, Mode.HIGH: 4000.0}
THS = {Mode.SLEEP: 0.0, Mode.LOW: 80.0, Mode.NORMAL: 100.0, Mode.HIGH: 115.0}
ALL_MODES = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH})
QUIET = GuardConfig(min_dwell_s=0.0, hysteresis_usd_per_day=0.0, ramp_kw_per_min=1e6)


# ---------------------------------------------------------------------------------------------
# builders


def observe(
    rid: RigId, mode: Mode, at: float, temp_c: float | None = 60.0, limit_w: int | None = None
) -> Observation:
    mining = mode not in (Mode.SLEEP, Mode.OFF)
    return observation(
        rid,
        mode,
        ths=THS.get(mode, 90.0) if mining else 0.0,
        watts=WATTS.get(mode, float(limit_w or 3000)),
        source=PowerSource.REPORTED,
        at=at,
        mining=mining,
        ident=identity(rid, firmware="test"),
        max_chip_temp_c=temp_c,
        power_limit_w=limit_w if mode is Mode.LIMIT else None,
    )


def points(modes: frozenset[Mode], scale: float = 1.0) -> tuple[ModePoint, ...]:
    return tuple(
        ModePoint(m, THS[m] * scale, WATTS[m], PowerSource.ESTIMATED)
        for m in sorted(modes & ALL_MODES, key=lambda m: WATTS[m])
    )


def make_rig(
    rid: RigId,
    obs: Observation | None,
    modes: frozenset[Mode] = ALL_MODES,
    group: str = "",
    scale: float = 1.0,
) -> RigView:
    limits = (1000, 4000) if Mode.LIMIT in modes else None
    return rig_view(obs, modes, points(modes, scale), rig_id=rid, group=group, limits_w=limits)


def rig_at(
    rid: RigId,
    mode: Mode,
    now: float,
    temp_c: float | None = 60.0,
    *,
    group: str = "",
    scale: float = 1.0,
) -> RigView:
    return make_rig(rid, observe(rid, mode, now, temp_c), group=group, scale=scale)


def want(rid: RigId, mode: Mode, limit_w: int | None = None) -> Intent:
    return Intent(rid, mode, f"{POLICY} wants {mode.value}", POLICY, limit_w)


def tick_inputs(
    sc: Scenario, tick: Tick, last: Mapping[RigId, Setting], now: float, policy: str = POLICY
) -> tuple[list[RigView], dict[RigId, Intent], MarketView]:
    """A scenario tick as the guards are given it: the fleet as seen at ``now`` (each rig at
    its ``last`` desired setting unless the tick says otherwise), the intents, the market."""
    fleet = [
        view(s, rt, last.get(s.rig_id), now, sc.config.observation_ttl_s)
        for s, rt in zip(sc.specs, tick.rigs, strict=True)
    ]
    intents = {
        s.rig_id: Intent(s.rig_id, rt.intent.mode, "test", policy, rt.intent.power_limit_w)
        for s, rt in zip(sc.specs, tick.rigs, strict=True)
        if rt.intent is not None
    }
    return fleet, intents, MarketView(tick.hashprice, tick.power_price)


def run(
    fleet: Sequence[RigView],
    intents: Sequence[Intent] = (),
    *,
    market: MarketView = PRICES,
    state: GuardState | None = None,
    config: GuardConfig = QUIET,
    overrides: Sequence[Override] = (),
    now: float = T0,
    seed: int = 7,
) -> tuple[Mapping[RigId, Desired], GuardState]:
    return apply_guards(
        {i.rig_id: i for i in intents},
        fleet,
        market,
        state if state is not None else GuardState(),
        config,
        overrides,
        now,
        seed,
    )


def pin(mode: Mode, *rids: RigId, bypass: bool = False, until: float = T0 + 3600) -> Override:
    return Override(mode, until, "ops", "maintenance", frozenset(rids), bypass_dwell=bypass)


# ---------------------------------------------------------------------------------------------
# 1. operator overrides


def test_override_pins_a_rig_and_beats_the_policy() -> None:
    out, _ = run(
        [rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.HIGH)], overrides=[pin(Mode.LOW, "a")]
    )
    assert (out["a"].mode, out["a"].decided_by) == (Mode.LOW, OVERRIDE)
    assert "ops" in out["a"].reason and "maintenance" in out["a"].reason


def test_expired_override_is_ignored() -> None:
    late = pin(Mode.SLEEP, "a", until=T0)
    out, _ = run([rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.HIGH)], overrides=[late])
    assert (out["a"].mode, out["a"].decided_by) == (Mode.HIGH, POLICY)


def test_override_by_group_and_specific_beats_group() -> None:
    group = Override(Mode.SLEEP, T0 + 60, "ops", "row 3 work", group="row3")
    fleet = [
        rig_at("a", Mode.NORMAL, T0, group="row3"),
        rig_at("b", Mode.NORMAL, T0, group="row3"),
        rig_at("c", Mode.NORMAL, T0, group="row4"),
    ]
    out, _ = run(fleet, overrides=[group, pin(Mode.LOW, "b")])
    assert [out[r].mode for r in "abc"] == [Mode.SLEEP, Mode.LOW, Mode.NORMAL]


def test_override_respects_dwell_unless_it_says_so() -> None:
    config = replace(QUIET, min_dwell_s=600.0)
    _, state = run([rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.LOW)], config=config)
    later = T0 + 60
    fleet = [rig_at("a", Mode.LOW, later)]
    out, _ = run(fleet, state=state, config=config, now=later, overrides=[pin(Mode.SLEEP, "a")])
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (Mode.LOW, DWELL, True)
    bypass = [pin(Mode.SLEEP, "a", bypass=True)]
    out, _ = run(fleet, state=state, config=config, now=later, overrides=bypass)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.SLEEP, OVERRIDE)


def test_override_validation() -> None:
    with pytest.raises(ValueError, match="rig_ids or a group"):
        Override(Mode.SLEEP, T0, "ops", "")
    with pytest.raises(ValueError, match="power_limit_w"):
        Override(Mode.LIMIT, T0, "ops", "", frozenset({"a"}))
    with pytest.raises(ValueError, match="real mode"):
        Override(Mode.UNKNOWN, T0, "ops", "", frozenset({"a"}))
    one = Override(Mode.LIMIT, T0, "ops", "x", frozenset({"a", "b"}), power_limit_w=2000)
    assert Override.from_dict(json.loads(json.dumps(one.to_dict()))) == one


# ---------------------------------------------------------------------------------------------
# 2. thermal protection


def test_hot_rig_goes_low_and_critical_rig_sleeps() -> None:
    fleet = [rig_at("hot", Mode.NORMAL, T0, 91.0), rig_at("crit", Mode.NORMAL, T0, 97.0)]
    no_low = [make_rig("nolow", observe("nolow", Mode.NORMAL, T0, 91.0), ALL_MODES - {Mode.LOW})]
    out, _ = run([*fleet, *no_low], [want(r.rig_id, Mode.HIGH) for r in [*fleet, *no_low]])
    assert {r: (d.mode, d.decided_by) for r, d in out.items()} == {
        "hot": (Mode.LOW, THERMAL),
        "crit": (Mode.SLEEP, THERMAL),
        "nolow": (Mode.SLEEP, THERMAL),
    }


def test_thermal_outranks_an_override_that_would_raise_but_not_one_that_lowers() -> None:
    fleet = [rig_at("a", Mode.NORMAL, T0, 92.0), rig_at("b", Mode.NORMAL, T0, 92.0)]
    overrides = [pin(Mode.HIGH, "a", bypass=True), pin(Mode.OFF, "b")]
    out, _ = run(fleet, overrides=overrides)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.LOW, THERMAL)
    assert (out["b"].mode, out["b"].decided_by) == (Mode.OFF, OVERRIDE)


def test_thermal_latch_holds_until_the_rig_cools_below_resume() -> None:
    config = replace(QUIET, min_dwell_s=0.0)
    _, state = run([rig_at("a", Mode.NORMAL, T0, 93.0)], config=config)
    for step, temp in enumerate([85.0, 81.0, 80.5]):
        now = T0 + 30 * (step + 1)
        out, state = run(
            [rig_at("a", Mode.LOW, now, temp)], [want("a", Mode.NORMAL)], state=state, now=now
        )
        assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (Mode.LOW, THERMAL, True)
    now = T0 + 200
    out, _ = run([rig_at("a", Mode.LOW, now, 79.0)], [want("a", Mode.NORMAL)], state=state, now=now)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.NORMAL, POLICY)


def test_sleeping_rig_without_chip_temps_resumes_after_the_cooldown() -> None:
    config = replace(QUIET, thermal_cooldown_s=300.0)
    _, state = run([rig_at("a", Mode.NORMAL, T0, 97.0)], config=config)
    asleep = T0 + 100
    out, state = run(
        [rig_at("a", Mode.SLEEP, asleep, None)], [want("a", Mode.NORMAL)], state=state,
        config=config, now=asleep,
    )  # fmt: skip
    assert (out["a"].mode, out["a"].decided_by) == (Mode.SLEEP, THERMAL)
    later = T0 + 301
    out, _ = run(
        [rig_at("a", Mode.SLEEP, later, None)], [want("a", Mode.NORMAL)], state=state,
        config=config, now=later,
    )  # fmt: skip
    assert (out["a"].mode, out["a"].decided_by) == (Mode.NORMAL, POLICY)


def test_hashing_rig_with_unreadable_chips_is_not_raised() -> None:
    out, _ = run([rig_at("a", Mode.LOW, T0, None)], [want("a", Mode.HIGH)])
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (Mode.LOW, THERMAL, True)
    out, _ = run([rig_at("a", Mode.LOW, T0, None)], [want("a", Mode.SLEEP)])
    assert out["a"].mode is Mode.SLEEP


# ---------------------------------------------------------------------------------------------
# 3. stale inputs


def test_stale_price_holds_by_default() -> None:
    out, _ = run([rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.SLEEP)], market=STALE)
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (
        Mode.NORMAL,
        STALE_INPUT,
        True,
    )
    assert "hashprice stale" in out["a"].reason


@pytest.mark.parametrize(
    ("failsafe", "mode"), [(FailSafe.SLEEP, Mode.SLEEP), (FailSafe.NORMAL, Mode.NORMAL)]
)
def test_stale_price_applies_the_configured_failsafe(failsafe: FailSafe, mode: Mode) -> None:
    config = replace(QUIET, stale_failsafe=failsafe)
    fleet = [rig_at("a", Mode.LOW, T0)]
    out, _ = run(fleet, [want("a", Mode.HIGH)], market=STALE, config=config)
    assert (out["a"].mode, out["a"].decided_by) == (mode, STALE_INPUT)


def test_policy_exempt_from_prices_and_overrides_still_act_on_stale_prices() -> None:
    config = replace(QUIET, stale_exempt_policies=frozenset({POLICY}))
    out, _ = run(
        [rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.SLEEP)], market=STALE, config=config
    )
    assert out["a"].mode is Mode.SLEEP
    out, _ = run([rig_at("a", Mode.NORMAL, T0)], market=STALE, overrides=[pin(Mode.LOW, "a")])
    assert (out["a"].mode, out["a"].decided_by) == (Mode.LOW, OVERRIDE)


def test_old_observation_counts_as_none() -> None:
    config = replace(QUIET, observation_ttl_s=180)
    _, state = run([rig_at("a", Mode.LOW, T0 - 1000)], config=config, now=T0 - 1000)
    old = make_rig("a", observe("a", Mode.LOW, T0 - 1000))
    out, _ = run([old], [want("a", Mode.HIGH)], config=config, state=state)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.LOW, NO_OBSERVATION)
    out, _ = run([old], [want("a", Mode.HIGH)], config=config)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.UNKNOWN, NO_OBSERVATION)


# ---------------------------------------------------------------------------------------------
# 4. dwell and hysteresis


def test_dwell_holds_a_second_change_and_lets_it_through_later() -> None:
    config = replace(QUIET, min_dwell_s=600.0)
    _, state = run([rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.SLEEP)], config=config)
    early = T0 + 599
    out, state2 = run(
        [rig_at("a", Mode.SLEEP, early)], [want("a", Mode.NORMAL)], state=state,
        config=config, now=early,
    )  # fmt: skip
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (Mode.SLEEP, DWELL, True)
    assert out["a"].reason == "last change 599 s ago; minimum dwell 600 s"  # written lazily
    on_time = T0 + 600
    out, _ = run(
        [rig_at("a", Mode.SLEEP, on_time)], [want("a", Mode.NORMAL)], state=state2,
        config=config, now=on_time,
    )  # fmt: skip
    assert (out["a"].mode, out["a"].decided_by) == (Mode.NORMAL, POLICY)


def test_hysteresis_holds_a_flip_back_within_the_band() -> None:
    config = replace(QUIET, hysteresis_usd_per_day=0.5)
    # normal earns 0.1 TH... break-even at 50 USD/PH/day is 0.0628 USD/kWh for this rig
    _, state = run(
        [rig_at("a", Mode.NORMAL, T0)], [want("a", Mode.SLEEP)], config=config,
        market=MarketView(50.0, 0.0640),
    )  # fmt: skip
    fleet = [rig_at("a", Mode.SLEEP, T0 + 60)]
    near = MarketView(50.0, 0.0620)  # normal now pays ~ +0.06 USD/day over sleep
    out, _ = run(
        fleet, [want("a", Mode.NORMAL)], state=state, config=config, market=near, now=T0 + 60
    )
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (
        Mode.SLEEP,
        HYSTERESIS,
        True,
    )
    far = MarketView(50.0, 0.0500)  # ~ +0.97 USD/day: beyond the band
    out, _ = run(
        fleet, [want("a", Mode.NORMAL)], state=state, config=config, market=far, now=T0 + 60
    )
    assert (out["a"].mode, out["a"].decided_by) == (Mode.NORMAL, POLICY)


# ---------------------------------------------------------------------------------------------
# 5. the power-up ramp


def test_ramp_lets_the_most_profitable_up_first_and_continues_next_tick() -> None:
    config = replace(QUIET, ramp_kw_per_min=7.0, ramp_rigs_per_s=10.0)
    fleet = [
        rig_at("poor", Mode.SLEEP, T0, scale=0.8),
        rig_at("rich", Mode.SLEEP, T0, scale=1.3),
        rig_at("mid", Mode.SLEEP, T0, scale=1.0),
    ]
    intents = [want(r.rig_id, Mode.NORMAL) for r in fleet]
    out, state = run(fleet, intents, config=config)
    assert [out[r].mode for r in ("rich", "mid", "poor")] == [Mode.NORMAL, Mode.NORMAL, Mode.SLEEP]
    assert (out["poor"].decided_by, out["poor"].held_back) == (RAMP, True)
    assert out["poor"].reason == (  # written lazily
        "power-up to normal (+3.23 kW, asked by breakeven) postponed by the ramp limit: "
        "0.53 kW left in the minute and 8 start slots left this tick"
    )
    assert out["rich"].reason == "breakeven wants normal"
    out, state = run(fleet, intents, config=config, state=state, now=T0 + 59)
    assert out["poor"].mode is Mode.SLEEP
    out, _ = run(fleet, intents, config=config, state=state, now=T0 + 60)
    assert (out["poor"].mode, out["poor"].decided_by) == (Mode.NORMAL, POLICY)


def test_ramp_counts_rigs_per_second() -> None:
    config = replace(QUIET, ramp_rigs_per_s=0.5)  # one rig every 2 s
    fleet = [rig_at(f"r{i}", Mode.SLEEP, T0) for i in range(3)]
    intents = [want(r.rig_id, Mode.LOW) for r in fleet]
    state = GuardState()
    ups = []
    for now in (T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4):
        out, state = run(fleet, intents, config=config, state=state, now=now)
        ups.append(sorted(r for r, d in out.items() if d.mode is Mode.LOW))
        fleet = [rig_at(r, out[r].mode, now) for r in out]
    assert [len(u) for u in ups] == [1, 1, 2, 2, 3]


def test_ramp_spaces_power_ups_over_the_tick() -> None:
    # 1 rig/s with 30 s ticks: 30 rigs a tick, starting 1 s apart, not one rig a tick.
    config = replace(QUIET, ramp_rigs_per_s=1.0, ramp_horizon_s=30.0)
    fleet = [rig_at(f"r{i:02d}", Mode.SLEEP, T0) for i in range(40)]
    intents = [want(r.rig_id, Mode.LOW) for r in fleet]
    out, state = run(fleet, intents, config=config)
    up = sorted((d.start_at or T0) for d in out.values() if d.mode is Mode.LOW)
    assert up == [T0 + k for k in range(30)]
    assert [g.at for g in state.ramp_log] == up
    assert sum(1 for d in out.values() if d.held_back and d.decided_by == RAMP) == 10
    # The next tick (here an early one, 10 s later) starts where the last left off.
    fleet = [rig_at(r, out[r].mode, T0 + 10) for r in out]
    out, state = run(fleet, intents, config=config, state=state, now=T0 + 10)
    assert [g.at for g in state.ramp_log][30:] == [T0 + 30 + k for k in range(10)]
    assert all(d.mode is Mode.LOW and not d.held_back for d in out.values())
    assert sorted(d.start_at for d in out.values() if d.start_at and d.start_at >= T0 + 30) == [
        T0 + 30 + k for k in range(10)
    ]


def test_resends_take_the_slots_and_kw_the_guards_left() -> None:
    # A tick's guards granted 5 rigs (slots T0..T0+4, 5 × 3.235 kW); three retried power-ups
    # and one retried curtailment are then offered: the retries queue behind the grants, and
    # the kW budget (20 kW a minute) stops the second; a lowering always goes.
    config = replace(QUIET, ramp_rigs_per_s=1.0, ramp_horizon_s=30.0, ramp_kw_per_min=20.0)
    fleet = [rig_at(f"r{i}", Mode.SLEEP, T0) for i in range(5)]
    _, state = run(fleet, [want(r.rig_id, Mode.NORMAL) for r in fleet], config=config)
    assert [g.at for g in state.ramp_log] == [T0 + k for k in range(5)]
    up = [
        Send(rig_at(f"x{i}", Mode.SLEEP, T0), Setting(Mode.SLEEP), Setting(Mode.NORMAL), POLICY)
        for i in range(3)
    ]
    down = Send(rig_at("y", Mode.HIGH, T0), Setting(Mode.HIGH), Setting(Mode.SLEEP), POLICY)
    allowed, log = ramp_sends([*up, down], state.ramp_log, PRICES, config, 7, T0)
    assert allowed.pop("y") is None  # a lowering is never ramped
    assert len(allowed) == 1 and list(allowed.values()) == [T0 + 5]
    assert log[:5] == state.ramp_log and [g.at for g in log[5:]] == [T0 + 5]
    # A minute later the budget is back: the two left go, one second apart.
    later = T0 + 61
    rest = [s for s in up if s.rig.rig_id not in allowed]
    allowed, log = ramp_sends(rest, log, PRICES, config, 7, later)
    assert sorted(v or later for v in allowed.values()) == [later, later + 1]
    # An operator's pin goes first (the guards' order), and an unobserved setting is a raise.
    pinned = Send(rig_at("z", Mode.SLEEP, T0), Setting(Mode.UNKNOWN), Setting(Mode.LOW), OVERRIDE)
    allowed, _ = ramp_sends(
        [*rest, pinned], log, PRICES, replace(config, ramp_kw_per_min=3.0), 7, later + 120
    )
    assert list(allowed) == ["z"]


DAY = 86_400.0


def test_a_clock_stepped_back_does_not_stretch_the_dwell() -> None:
    # Changed at T0 (dwell 600 s); the next tick's clock reads a day earlier. The dwell
    # counts from the step (as if no time had passed), not until the clock is back at T0.
    config = replace(QUIET, min_dwell_s=600.0)
    _, state = run([rig_at("r", Mode.NORMAL, T0)], [want("r", Mode.LOW)], config=config)
    assert state.rigs["r"].changed_at == T0 and state.as_of == T0
    back = T0 - DAY
    out, state = run(
        [rig_at("r", Mode.LOW, back)],
        [want("r", Mode.SLEEP)],
        config=config,
        state=state,
        now=back,
    )
    assert out["r"].decided_by == DWELL and state.rigs["r"].changed_at == back
    out, _ = run(
        [rig_at("r", Mode.LOW, back + 600)],
        [want("r", Mode.SLEEP)],
        config=config,
        state=state,
        now=back + 600,
    )
    assert out["r"].mode is Mode.SLEEP


def test_a_clock_stepped_back_does_not_stretch_the_thermal_cool_down() -> None:
    # Tripped at T0; asleep and without chip temperatures it may resume after the 300 s
    # cool-down, counted across a step back of a day.
    _, state = run([rig_at("r", Mode.NORMAL, T0, temp_c=99.0)], [want("r", Mode.NORMAL)])
    assert state.rigs["r"].thermal_at == T0
    back = T0 - DAY  # the first tick after the step counts as right after the last one
    asleep = make_rig("r", observe("r", Mode.SLEEP, back, temp_c=None))
    _, state = run([asleep], [want("r", Mode.NORMAL)], state=state, now=back)
    assert state.rigs["r"].thermal_cap is Mode.SLEEP and state.rigs["r"].thermal_at == back
    asleep = make_rig("r", observe("r", Mode.SLEEP, back + 300, temp_c=None))
    _, state = run([asleep], [want("r", Mode.NORMAL)], state=state, now=back + 300)
    assert state.rigs["r"].thermal_cap is None, "cooled 300 s after the trip, step or not"


def test_a_clock_stepped_back_does_not_stretch_the_ramp() -> None:
    # The minute's kW are spent at T0; a day earlier by the clock, the budget is back a minute
    # later, and the start slots continue from the step, not from T0.
    config = replace(QUIET, ramp_kw_per_min=4.0, ramp_rigs_per_s=1.0, ramp_horizon_s=30.0)
    _, state = run([rig_at("a", Mode.SLEEP, T0)], [want("a", Mode.NORMAL)], config=config)
    assert [g.at for g in state.ramp_log] == [T0]
    back = T0 - DAY
    fleet = [rig_at("a", Mode.NORMAL, back), rig_at("b", Mode.SLEEP, back)]
    intents = [want("a", Mode.NORMAL), want("b", Mode.NORMAL)]
    out, state = run(fleet, intents, config=config, state=state, now=back)
    assert out["b"].decided_by == RAMP and [g.at for g in state.ramp_log] == [back]
    out, state = run(fleet, intents, config=config, state=state, now=back + 61)
    assert out["b"].mode is Mode.NORMAL and not out["b"].held_back


def test_guard_state_documents_keep_as_of() -> None:
    _, state = run([rig_at("r", Mode.NORMAL, T0)], [want("r", Mode.LOW)])
    again = GuardState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state and again.as_of == T0
    assert GuardState.from_dict({"rigs": {}, "ramp_log": []}).as_of is None


def test_new_grants_are_told_apart_from_earlier_ones_even_across_a_clock_step() -> None:
    # The shell ramps every power-up without a grant this tick: it must know which rigs the
    # guards just granted, also in the tick where the clock stepped back and the guards
    # shifted their log.
    config = replace(QUIET, ramp_rigs_per_s=1.0, ramp_horizon_s=30.0)
    first = [rig_at("a", Mode.SLEEP, T0)]
    _, s1 = run(first, [want("a", Mode.NORMAL)], config=config)
    assert new_grants(GuardState(), s1) == {"a"}
    both = [rig_at("a", Mode.NORMAL, T0 + 30), rig_at("b", Mode.SLEEP, T0 + 30)]
    intents = [want("a", Mode.NORMAL), want("b", Mode.NORMAL)]
    _, s2 = run(both, intents, config=config, state=s1, now=T0 + 30)
    assert new_grants(s1, s2) == {"b"}
    back = T0 - DAY
    both = [rig_at("a", Mode.NORMAL, back), rig_at("b", Mode.NORMAL, back)]
    both.append(rig_at("c", Mode.SLEEP, back))
    _, s3 = run(both, [*intents, want("c", Mode.NORMAL)], config=config, state=s2, now=back)
    assert new_grants(s2, s3) == {"c"}  # a and b's shifted grants are not new


def test_going_down_is_never_ramped() -> None:
    config = replace(QUIET, ramp_kw_per_min=1.0, ramp_rigs_per_s=0.01)
    fleet = [rig_at(f"r{i}", Mode.HIGH, T0) for i in range(5)]
    out, _ = run(fleet, [want(r.rig_id, Mode.SLEEP) for r in fleet], config=config)
    assert all(d.mode is Mode.SLEEP and not d.held_back for d in out.values())


def test_a_rig_larger_than_the_budget_goes_up_alone_after_a_quiet_minute() -> None:
    config = replace(QUIET, ramp_kw_per_min=3.0)  # big needs 3.985 kW, small 2.485 kW
    fleet = [rig_at("big", Mode.SLEEP, T0, scale=1.5), rig_at("small", Mode.SLEEP, T0)]
    intents = [want("big", Mode.HIGH), want("small", Mode.LOW)]
    out, state = run(fleet, intents, config=config)
    assert [out["big"].mode, out["small"].mode] == [Mode.HIGH, Mode.SLEEP]
    fleet = [rig_at("big", Mode.HIGH, T0, scale=1.5), rig_at("small", Mode.SLEEP, T0)]
    out, state = run(fleet, intents, config=config, state=state, now=T0 + 59)
    assert (out["small"].mode, out["small"].held_back) == (Mode.SLEEP, True)
    out, _ = run(fleet, intents, config=config, state=state, now=T0 + 60)
    assert out["small"].mode is Mode.LOW


def test_ramp_jitter_is_seeded() -> None:
    config = replace(QUIET, ramp_kw_per_min=10.0, ramp_rigs_per_s=1.0)
    fleet = [rig_at(f"r{i:02d}", Mode.SLEEP, T0) for i in range(20)]
    intents = [want(r.rig_id, Mode.NORMAL) for r in fleet]
    first = {s: run(fleet, intents, config=config, seed=s)[0] for s in range(8)}
    picked = {
        s: next(r for r, d in out.items() if d.mode is Mode.NORMAL) for s, out in first.items()
    }
    assert len(set(picked.values())) > 1
    assert run(fleet, intents, config=config, seed=3)[0] == first[3]


# ---------------------------------------------------------------------------------------------
# 6. rigs without an intent or an observation


def test_rig_without_intent_keeps_its_observed_mode() -> None:
    out, _ = run([rig_at("a", Mode.LOW, T0)])
    assert (out["a"].mode, out["a"].decided_by, out["a"].held_back) == (Mode.LOW, NO_INTENT, False)


def test_unobserved_rig_is_only_lowered_by_an_override() -> None:
    _, state = run([rig_at("a", Mode.LOW, T0)])
    blind = [make_rig("a", None)]
    out, _ = run(blind, [want("a", Mode.SLEEP)], state=state, now=T0 + 10)
    assert (out["a"].mode, out["a"].decided_by) == (Mode.LOW, NO_OBSERVATION)
    out, _ = run(blind, state=state, now=T0 + 10, overrides=[pin(Mode.HIGH, "a", bypass=True)])
    assert out["a"].mode is Mode.LOW
    out, _ = run(blind, state=state, now=T0 + 10, overrides=[pin(Mode.SLEEP, "a")])
    assert (out["a"].mode, out["a"].decided_by) == (Mode.SLEEP, OVERRIDE)


def test_never_observed_rig_is_left_alone() -> None:
    out, state = run([make_rig("a", None)], [want("a", Mode.HIGH)])
    assert out["a"].mode is Mode.UNKNOWN
    out, _ = run([rig_at("a", Mode.SLEEP, T0 + 5)], [want("a", Mode.HIGH)], state=state, now=T0 + 5)
    assert out["a"].mode is Mode.HIGH


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="thermal_resume_c"):
        GuardConfig(thermal_resume_c=95.0)
    with pytest.raises(ValueError, match="ramp_kw_per_min"):
        GuardConfig(ramp_kw_per_min=0.0)
    with pytest.raises(ValueError, match="finite"):
        GuardConfig(min_dwell_s=float("nan"))
    with pytest.raises(ValueError, match="ramp_horizon_s"):
        GuardConfig(ramp_horizon_s=0.0)
    assert GuardConfig(ramp_rigs_per_s=0.25).ramp_spacing_s == 4.0


def test_duplicate_rig_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        run([rig_at("a", Mode.LOW, T0), rig_at("a", Mode.LOW, T0)])


# ---------------------------------------------------------------------------------------------
# Property tests: random runs over many ticks with a fake clock


@dataclass(frozen=True)
class RigSpec:
    rig_id: RigId
    modes: frozenset[Mode]
    group: str
    scale: float


@dataclass(frozen=True)
class RigTick:
    seen: str  # "fresh", "old" (older than the TTL), "none" (unreadable)
    temp_c: float | None
    follows: bool  # the rig did what it was last told; otherwise it is found in `drift`
    drift: Setting
    intent: Setting | None


@dataclass(frozen=True)
class Tick:
    dt_s: float
    hashprice: float | None
    power_price: float | None
    rigs: tuple[RigTick, ...]


@dataclass(frozen=True)
class Scenario:
    config: GuardConfig
    specs: tuple[RigSpec, ...]
    overrides: tuple[Override, ...]
    ticks: tuple[Tick, ...]
    seed: int


@dataclass
class Step:
    """One tick as the guards saw it, and the test's own reading of each rig's hold setting."""

    now: float
    fleet: list[RigView]
    market: MarketView
    intents: dict[RigId, Intent]
    overrides: tuple[Override, ...]
    prior: GuardState
    desired: Mapping[RigId, Desired]
    state: GuardState
    hold: dict[RigId, Setting] = field(default_factory=dict)
    fresh: dict[RigId, Observation | None] = field(default_factory=dict)
    elapsed: float = 0.0
    """Time that really passed since the start: the clock's forward steps only (a step back,
    like an NTP correction, takes no time), which is what dwell, cool-down and the ramp
    measure."""
    resent: dict[RigId, tuple[Setting, float]] = field(default_factory=dict)
    """With ``simulate(..., resend=True)``: power-ups sent again through ``ramp_sends`` as the
    shell does, to rigs seen below their desired setting without a grant this tick: what each
    was seen doing, and when it starts."""


TEMPS = st.one_of(
    st.none(),
    st.floats(30.0, 78.0),
    st.floats(76.0, 96.0),
    st.floats(88.0, 115.0),
)
HASHING = (Mode.LOW, Mode.NORMAL, Mode.HIGH)


def settings_for(spec: RigSpec) -> st.SearchStrategy[Setting]:
    plain = st.sampled_from(sorted(spec.modes - {Mode.LIMIT}, key=lambda m: m.value)).map(Setting)
    if Mode.LIMIT not in spec.modes:
        return plain
    limited = st.integers(1000, 4000).map(lambda w: Setting(Mode.LIMIT, w))
    return st.one_of(plain, limited)


@st.composite
def configs(draw: st.DrawFn) -> GuardConfig:
    resume = draw(st.floats(70.0, 85.0))
    limit = draw(st.floats(resume + 1.0, 95.0))
    return GuardConfig(
        thermal_resume_c=resume,
        thermal_limit_c=limit,
        thermal_critical_c=draw(st.floats(limit, 100.0)),
        thermal_cooldown_s=draw(st.sampled_from([0.0, 120.0, 600.0])),
        stale_failsafe=draw(st.sampled_from(list(FailSafe))),
        observation_ttl_s=draw(st.sampled_from([30.0, 180.0])),
        min_dwell_s=draw(st.sampled_from([0.0, 5.0, 120.0, 600.0])),
        hysteresis_usd_per_day=draw(st.sampled_from([0.0, 0.25, 3.0])),
        ramp_kw_per_min=draw(st.floats(1.0, 20.0)),
        ramp_rigs_per_s=draw(st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0])),
        ramp_horizon_s=draw(st.sampled_from([1.0, 2.5, 10.0])),
    )


@st.composite
def rig_specs(draw: st.DrawFn, index: int) -> RigSpec:
    hashing = draw(st.sets(st.sampled_from(HASHING), min_size=1))
    extra = draw(st.sets(st.sampled_from([Mode.LIMIT, Mode.OFF]), max_size=2))
    return RigSpec(
        f"r{index}",
        frozenset({Mode.SLEEP, *hashing, *extra}),
        draw(st.sampled_from(["row1", "row2"])),
        draw(st.floats(0.5, 1.5)),
    )


@st.composite
def rig_ticks(draw: st.DrawFn, spec: RigSpec) -> RigTick:
    return RigTick(
        seen=draw(st.sampled_from(["fresh"] * 6 + ["old", "none"])),
        temp_c=draw(TEMPS),
        follows=draw(st.sampled_from([True, True, True, False])),
        drift=draw(settings_for(spec)),
        intent=draw(st.none() | settings_for(spec)),
    )


@st.composite
def overrides_for(draw: st.DrawFn, specs: Sequence[RigSpec], span_s: float) -> Override:
    mode = draw(st.sampled_from([Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.OFF]))
    by_group = draw(st.booleans())
    rids = frozenset(draw(st.sets(st.sampled_from([s.rig_id for s in specs]), min_size=1)))
    return Override(
        mode,
        T0 + draw(st.floats(0.0, span_s)),
        "ops",
        "test",
        frozenset() if by_group else rids,
        draw(st.sampled_from(["row1", "row2"])) if by_group else None,
        bypass_dwell=draw(st.booleans()),
    )


def sometimes_stale(prices: st.SearchStrategy[float]) -> st.SearchStrategy[float | None]:
    """A price that is missing (stale) about one tick in six."""
    return st.tuples(st.integers(0, 5), prices).map(lambda t: None if t[0] == 0 else t[1])


# Time between ticks; about one tick in twelve the clock is stepped back instead (an NTP
# correction, a VM restored), by a little or by an hour.
FORWARD_S = st.sampled_from([0.0, 0.4, 1.0, 3.0, 20.0, 61.0, 300.0, 900.0])
clock_steps = st.one_of(*[FORWARD_S] * 11, st.sampled_from([-0.5, -30.0, -700.0, -3600.0]))


@st.composite
def scenarios(draw: st.DrawFn, max_ticks: int = 40) -> Scenario:
    n = draw(st.integers(1, 6))
    specs = tuple(draw(rig_specs(i)) for i in range(n))
    ticks = []
    for _ in range(draw(st.integers(1, max_ticks))):
        ticks.append(
            Tick(
                dt_s=draw(clock_steps),
                hashprice=draw(sometimes_stale(st.floats(20.0, 90.0))),
                power_price=draw(sometimes_stale(st.floats(-0.02, 0.12))),
                rigs=tuple(draw(rig_ticks(s)) for s in specs),
            )
        )
    span = sum(max(t.dt_s, 0.0) for t in ticks) + 1.0
    overrides = tuple(draw(st.lists(overrides_for(specs, span), max_size=2)))
    return Scenario(draw(configs()), specs, overrides, tuple(ticks), draw(st.integers(0, 2**32)))


def observed_setting(last: Setting | None, rt: RigTick) -> Setting:
    if rt.follows and last is not None and last.mode is not Mode.UNKNOWN:
        return last
    return rt.drift


def view(spec: RigSpec, rt: RigTick, last: Setting | None, now: float, ttl: float) -> RigView:
    if rt.seen == "none":
        return make_rig(spec.rig_id, None, spec.modes, spec.group, spec.scale)
    setting = observed_setting(last, rt)
    at = now if rt.seen == "fresh" else now - ttl - 1.0
    mode = setting.mode if setting.mode is not Mode.UNKNOWN else Mode.SLEEP
    obs = observe(spec.rig_id, mode, at, rt.temp_c, setting.power_limit_w)
    return make_rig(spec.rig_id, obs, spec.modes, spec.group, spec.scale)


def simulate(sc: Scenario, resend: bool = False) -> Iterator[Step]:
    """Run the scenario tick by tick: each rig follows its last desired setting unless the
    scenario says it drifted, was unreadable, or is read late. With ``resend``, a rig seen
    fresh below its desired setting, and not granted this tick, is sent its setting again
    through ``ramp_sends`` (a retry, or a rig that fell asleep by itself), as the shell does."""
    state, now, elapsed = GuardState(), T0, 0.0
    last: dict[RigId, Setting] = {}
    for tick in sc.ticks:
        now += tick.dt_s
        elapsed += max(tick.dt_s, 0.0)
        fleet, intents, market = tick_inputs(sc, tick, last, now)
        step = Step(now, fleet, market, intents, sc.overrides, state, {}, state, elapsed=elapsed)
        for rig in fleet:
            obs = rig.observation
            fresh = obs if obs is not None and obs.observed_at == now else None
            step.fresh[rig.rig_id] = fresh
            step.hold[rig.rig_id] = hold_of(last.get(rig.rig_id), fresh)
        step.desired, step.state = apply_guards(
            intents, fleet, market, state, sc.config, sc.overrides, now, sc.seed
        )
        if resend:
            _resend(step, sc)
        yield step
        state = step.state
        last = {r: d.setting for r, d in step.desired.items()}


def _resend(step: Step, sc: Scenario) -> None:
    granted = new_grants(step.prior, step.state)
    sends = []
    for rig in step.fleet:
        obs, d = step.fresh[rig.rig_id], step.desired[rig.rig_id]
        if obs is None or rig.rig_id in granted or d.mode is Mode.UNKNOWN:
            continue
        seen = Setting.of(obs.mode, obs.power_limit_w)
        if seen != d.setting:
            sends.append(Send(rig, seen, d.setting, d.decided_by))
    allowed, log = ramp_sends(sends, step.state.ramp_log, step.market, sc.config, sc.seed, step.now)
    step.state = replace(step.state, ramp_log=log)
    for send in sends:
        if send.rig.rig_id in allowed and raises(send.rig, send.observed, send.target):
            at = allowed[send.rig.rig_id]
            step.resent[send.rig.rig_id] = (send.observed, step.now if at is None else at)


def hold_of(last: Setting | None, fresh: Observation | None) -> Setting:
    if last is not None and last.mode is not Mode.UNKNOWN:
        return last
    if fresh is not None:
        return Setting.of(fresh.mode, fresh.power_limit_w)
    return Setting(Mode.UNKNOWN)


def watts(rig: RigView, s: Setting) -> float | None:
    if s.mode is Mode.OFF:
        return 0.0
    if s.mode is Mode.LIMIT:
        return None if s.power_limit_w is None else float(s.power_limit_w)
    found = [p.power_w for p in rig.points if p.mode is s.mode]
    return found[0] if found else None


def raises(rig: RigView, before: Setting, after: Setting) -> bool:
    if before == after:
        return False
    a, b = watts(rig, after), watts(rig, before)
    if b is None:
        return after.mode not in (Mode.SLEEP, Mode.OFF)
    return a is None or a > b + 1e-6


def rise_kw(rig: RigView, before: Setting, after: Setting, fallback_w: float) -> float:
    a = watts(rig, after)
    if a is None:
        a = max([fallback_w, *(p.power_w for p in rig.points)])
    return max(0.0, a - (watts(rig, before) or 0.0)) / 1000.0


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@PROPERTY
@given(scenarios())
def test_invariant_1_thermal_outranks_economics_and_operator_raises(sc: Scenario) -> None:
    c = sc.config
    latched: dict[RigId, float] = {}  # rig -> last time seen at or above the limit
    for step in simulate(sc):
        for rig in step.fleet:
            rid, d, hold = rig.rig_id, step.desired[rig.rig_id], step.hold[rig.rig_id]
            obs = step.fresh[rid]
            temp = obs.max_chip_temp_c if obs is not None else None
            if d.decided_by == THERMAL:
                assert not raises(rig, hold, d.setting), "thermal never raises"
            if obs is not None and temp is not None and temp >= c.thermal_limit_c:
                latched[rid] = step.elapsed
                has_low = any(p.mode is Mode.LOW for p in rig.points)
                target = Mode.LOW if has_low and temp < c.thermal_critical_c else Mode.SLEEP
                assert not raises(rig, hold, d.setting), (rid, temp, d)
                limit = watts(rig, Setting(target))
                assert limit is not None
                got = watts(rig, d.setting)
                assert got is not None and got <= limit + 1e-6, (rid, temp, d)
                continue
            if rid in latched and obs is not None:
                cooled = temp is not None and temp < c.thermal_resume_c
                idle = temp is None and not obs.mining
                if cooled or (idle and step.elapsed - latched[rid] >= c.thermal_cooldown_s):
                    del latched[rid]
            if rid in latched or (obs is not None and temp is None and obs.mining):
                assert not raises(rig, hold, d.setting), (rid, d)


def exempt_from_dwell(step: Step, rig: RigView, d: Desired) -> bool:
    if d.decided_by in (THERMAL, THERMAL_EMERGENCY):  # thermal protection, its cut included
        return True
    live = [o for o in step.overrides if o.active(step.now) and o.matches(rig)]
    return d.decided_by == OVERRIDE and any(o.bypass_dwell for o in live)


@pytest.mark.slow
@PROPERTY
@given(scenarios())
def test_invariant_2_no_change_within_the_dwell_time(sc: Scenario) -> None:
    changed_at: dict[RigId, float] = {}
    for step in simulate(sc):
        for rig in step.fleet:
            rid, d = rig.rig_id, step.desired[rig.rig_id]
            if d.setting == step.hold[rid]:
                continue
            if rid in changed_at and not exempt_from_dwell(step, rig, d):
                assert step.elapsed - changed_at[rid] >= sc.config.min_dwell_s, (rid, d)
            changed_at[rid] = step.elapsed


@pytest.mark.slow
@pytest.mark.parametrize("resend", [False, True], ids=["guards", "guards+resends"])
@PROPERTY
@given(sc=scenarios())
def test_invariant_3_power_ups_stay_within_the_ramp_budget(sc: Scenario, resend: bool) -> None:
    # Every power-up starts at its slot (start_at, or the tick's time): the slots lie within
    # the tick's horizon, are at least 1/ramp_rigs_per_s apart across ticks, and the kW started
    # in any minute stay within the budget (or one rig goes alone). With resends, the shell's
    # power-ups without a grant from the guards (retries, rigs that fell below their setting)
    # share the same budgets. Slots are compared in elapsed time (a slot is ``at - now`` after
    # the tick), since the clock may step back between ticks.
    c = sc.config
    grants: list[tuple[float, float]] = []
    for step in simulate(sc, resend):
        for rig in step.fleet:
            d, hold = step.desired[rig.rig_id], step.hold[rig.rig_id]
            if raises(rig, hold, d.setting):
                at = step.now if d.start_at is None else d.start_at
                assert step.now <= at < step.now + c.ramp_horizon_s, (step.now, d)
                kw = rise_kw(rig, hold, d.setting, c.default_rig_power_w)
                grants.append((step.elapsed + at - step.now, kw))
            else:
                assert d.start_at is None, d
            if rig.rig_id in step.resent:
                seen, at = step.resent[rig.rig_id]
                assert step.now <= at < step.now + c.ramp_horizon_s, (step.now, at)
                kw = rise_kw(rig, seen, d.setting, c.default_rig_power_w)
                grants.append((step.elapsed + at - step.now, kw))
    grants.sort()
    for (a, _), (b, _) in itertools.pairwise(grants):
        assert b - a >= c.ramp_spacing_s - 1e-6, (a, b)
    for end, _ in grants:
        minute = [kw for at, kw in grants if end - 60.0 < at <= end]
        assert sum(minute) <= c.ramp_kw_per_min + 1e-6 or len(minute) == 1, (end, minute)


@pytest.mark.slow
@PROPERTY
@given(scenarios())
def test_invariant_4_stale_prices_never_drive_a_change(sc: Scenario) -> None:
    failsafe = {FailSafe.SLEEP: Mode.SLEEP, FailSafe.NORMAL: Mode.NORMAL}
    for step in simulate(sc):
        if step.market.hashprice_usd_per_ph_day is not None and (
            step.market.power_price_usd_per_kwh is not None
        ):
            continue
        for rig in step.fleet:
            d = step.desired[rig.rig_id]
            if d.setting == step.hold[rig.rig_id] or d.decided_by in (
                THERMAL,
                THERMAL_EMERGENCY,
                OVERRIDE,
            ):
                continue
            assert d.decided_by == STALE_INPUT, d
            assert d.mode is failsafe[sc.config.stale_failsafe], d


@pytest.mark.slow
@PROPERTY
@given(scenarios())
def test_invariant_6_rigs_without_an_observation_are_never_raised(sc: Scenario) -> None:
    for step in simulate(sc):
        for rig in step.fleet:
            rid, d, hold = rig.rig_id, step.desired[rig.rig_id], step.hold[rig.rig_id]
            if step.fresh[rid] is not None:
                continue
            assert not raises(rig, hold, d.setting), (rid, d)
            if d.setting != hold:
                assert d.decided_by == OVERRIDE, d
                assert watts(rig, d.setting) is not None
            if hold.mode is Mode.UNKNOWN:
                assert d.mode in (Mode.UNKNOWN, Mode.SLEEP, Mode.OFF), d


def snapshot(step: Step) -> object:
    return copy.deepcopy((step.intents, step.fleet, step.market, step.overrides, step.prior))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_ticks=15))
def test_deterministic_pure_and_persistable(sc: Scenario) -> None:
    for step in simulate(sc):
        before = snapshot(step)
        args = (step.intents, step.fleet, step.market)
        again = apply_guards(*args, step.prior, sc.config, step.overrides, step.now, sc.seed)
        assert again == (step.desired, step.state)
        assert snapshot(step) == before, "inputs untouched"
        restored = GuardState.from_dict(json.loads(json.dumps(step.prior.to_dict())))
        assert restored == step.prior
        from_disk = apply_guards(*args, restored, sc.config, step.overrides, step.now, sc.seed)
        assert from_disk == (step.desired, step.state)


def reference_guards(
    intents: dict[RigId, Intent],
    fleet: Sequence[RigView],
    market: MarketView,
    state: GuardState,
    config: GuardConfig,
    overrides: Sequence[Override],
    now: float,
    seed: int,
) -> tuple[dict[RigId, Desired], GuardState]:
    """``apply_guards`` written plainly: every rig through the per-rig chain (``decide_rig``),
    every rise ordered by ``order_rises``, the ramp's slots and budget counted one by one;
    after a clock step back, on the state shifted as documented."""
    if state.as_of is not None and now < state.as_of:
        state = state.shifted(now - state.as_of)
    per_rig = {}
    rises = []
    for rig in fleet:
        prior = state.rigs.get(rig.rig_id)
        hold, decision, latch = decide_rig(
            rig, intents_for(intents, rig), overrides, prior, market, config, now
        )
        per_rig[rig.rig_id] = (prior, hold, decision, latch)
        if is_raise(rig, hold, decision.setting):
            rises.append(make_rise(rig, hold, decision, market, config))
    kept = prune_log(state.ramp_log, now, config)
    minute = [g for g in kept if g.at > now - 60.0]
    kw_left = config.ramp_kw_per_min - sum(g.kw for g in minute)
    spacing = 1.0 / config.ramp_rigs_per_s
    slot = max([now, *(g.at + spacing for g in kept)])
    rigs_left = 0
    while slot + rigs_left * spacing < now + config.ramp_horizon_s - 1e-9:
        rigs_left += 1
    ramped: dict[RigId, Decision] = {}
    grants: list[RampGrant] = []
    blocked = False
    for rise in order_rises(rises, config, seed, now):
        alone = not minute and not grants
        if not blocked and rigs_left >= 1 and (rise.kw <= kw_left + 1e-9 or alone):
            at = slot + len(grants) * spacing
            d = rise.decision
            if at > now:
                d = Decision(d.setting, d.decided_by, d.reason, d.source, start_at=at)
            ramped[rise.rig.rig_id] = d
            grants.append(RampGrant(at, rise.rig.rig_id, rise.kw))
            kw_left -= rise.kw
            rigs_left -= 1
            continue
        blocked = True
        ramped[rise.rig.rig_id] = ramp_held(rise, kw_left, rigs_left)
    desired = {}
    rigs = dict(state.rigs)
    for rid, (prior, hold, decision, latch) in per_rig.items():
        final = ramped.get(rid, decision)
        s = final.setting
        desired[rid] = Desired(
            rid,
            s.mode,
            s.power_limit_w,
            final.reason_text,
            final.decided_by,
            final.held_back,
            final.start_at,
        )
        rigs[rid] = next_rig_state(prior, hold, final, latch, now)
    return desired, GuardState(rigs=rigs, ramp_log=kept + tuple(grants))


@pytest.mark.slow
@PROPERTY
@given(scenarios())
def test_apply_guards_gives_what_the_plain_reference_gives(sc: Scenario) -> None:
    # apply_guards orders only the rises the ramp can reach, counts start slots by arithmetic
    # and passes reasons on unformatted; over random runs it must equal the plain reference
    # (every rise ordered, slots counted one by one), reasons (written lazily) included.
    for step in simulate(sc):
        want = reference_guards(
            step.intents, step.fleet, step.market, step.prior, sc.config, step.overrides,
            step.now, sc.seed,
        )  # fmt: skip
        assert (step.desired, step.state) == want
        assert [d.reason for d in step.desired.values()] == [d.reason for d in want[0].values()]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, 0.0, 0.01, 0.07, 0.3, 2.0, -0.5]),
            st.booleans(),
            st.floats(0.1, 5.0),
        ),
        max_size=40,
    ),
    st.integers(0, 45),
    st.integers(0, 2**32),
    st.sampled_from([0.05, 0.1, 1.0]),
)
def test_first_rises_are_the_front_of_the_full_order(
    raw: list[tuple[float | None, bool, float]], count: int, seed: int, tie: float
) -> None:
    config = replace(QUIET, ramp_tie_usd_per_kw_day=tie)
    rises = []
    for i, (score, by_override, kw) in enumerate(raw):
        rig = rig_at(f"r{(i * 7919) % 101:03d}-{i}", Mode.SLEEP, T0)
        source = "override" if by_override else "policy"
        decision = Decision(Setting(Mode.NORMAL), POLICY, "test", source)
        rises.append(Rise(rig, Setting(Mode.SLEEP), decision, kw, score))
    full = order_rises(rises, config, seed, T0)
    assert first_rises(rises, count, config, seed, T0) == full[:count]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([None, 0.0, 0.07, 0.3]), st.booleans()), max_size=30),
    st.integers(0, 2**32),
    st.floats(0.0, 1e9, allow_nan=False),
)
def test_a_rises_place_among_near_ties_does_not_depend_on_the_other_rises(
    raw: list[tuple[float | None, bool]], seed: int, now: float
) -> None:
    # Each rig's jitter is its own draw: the order of any subset of the rises is the full order
    # restricted to it (the backtest shows only the rigs of a cohort that can reach the front).
    config = replace(QUIET, ramp_tie_usd_per_kw_day=1.0)
    rises = []
    for i, (score, keep) in enumerate(raw):
        decision = Decision(Setting(Mode.NORMAL), POLICY, "test", "policy")
        rise = Rise(rig_at(f"r{i}", Mode.SLEEP, T0), Setting(Mode.SLEEP), decision, 1.0, score)
        rises.append((rise, keep))
    full = order_rises([r for r, _ in rises], config, seed, now)
    subset = [r for r, keep in rises if keep]
    assert order_rises(subset, config, seed, now) == [r for r in full if r in subset]
    draw = jitter(seed, now)
    assert all(0.0 <= draw(r.rig.rig_id) < 1.0 for r in full)
    assert draw("r0") == jitter(seed, now)("r0")


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 1e9, allow_nan=False), st.integers(1, 40))
def test_within_an_hour_the_jitter_order_is_a_rotation_of_the_hours_own_order(
    seed: int, now: float, n: int
) -> None:
    # Each rig's draw is its own draw for the hour shifted by the tick's draw, modulo 1: the
    # order of the rigs at any tick of the hour is the hour's order rotated (which lets the
    # backtest keep a cohort sorted once and find its first rigs by bisection).
    ids = [f"r{i}" for i in range(n)]
    own = rig_draws(seed, jitter_hour(now))
    shift = jitter_shift(seed, now)
    draw = jitter(seed, now)
    for rid in ids:
        assert draw(rid) == ((own(rid) + shift) % JITTER_SPAN) / JITTER_SPAN
    hourly = sorted(ids, key=lambda r: (own(r), r))
    at_now = sorted(ids, key=lambda r: (draw(r), r))
    j = hourly.index(at_now[0])
    assert at_now == hourly[j:] + hourly[:j]
    later = now + JITTER_ORDER_S * 0.5
    if jitter_hour(later) == jitter_hour(now):
        assert rig_draws(seed, jitter_hour(later))("r0") == own("r0")


@pytest.mark.parametrize("n", [2, 5, 10])
def test_each_rig_of_a_near_tie_starts_first_about_equally_often_over_time(n: int) -> None:
    # A tie of n rigs asking for the same rise, one start slot per tick: over 20,000 ticks half
    # an hour apart (about 417 days), each rig is granted first about 1/n of the time. (A fixed
    # order only rotated, without a new order each hour, gives each rig the share of the circle
    # before its own draw: far from equal.)
    config = replace(QUIET, ramp_tie_usd_per_kw_day=1.0)
    decision = Decision(Setting(Mode.NORMAL), POLICY, "test", "policy")
    rises = [
        Rise(rig_at(f"rig{i}", Mode.SLEEP, T0), Setting(Mode.SLEEP), decision, 1.0, 2.0)
        for i in range(n)
    ]
    ticks = 20_000
    first = Counter(
        first_rises(rises, 1, config, 7, T0 + 1_800.0 * k + 30.0)[0].rig.rig_id
        for k in range(ticks)
    )
    assert set(first) == {r.rig.rig_id for r in rises}
    for count in first.values():
        assert count == pytest.approx(ticks / n, rel=0.15)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([Mode.SLEEP, Mode.LOW, Mode.NORMAL]),
            st.sampled_from([60.0, 92.0, 97.0, None]),
            st.sampled_from([Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH]),
            st.lists(
                st.sampled_from(["same", "other intent", "no memory", "no intent"]),
                min_size=1,
                max_size=5,
            ),
            st.sampled_from([None, 0.0, 300.0, 900.0]),
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([PRICES, STALE]),
    st.sampled_from([2.0, 7.0, 1e6]),
)
def test_rigs_alike_listed_together_get_what_each_gets_alone(
    cohorts: list[tuple[Mode, float | None, Mode, list[str], float | None]],
    market: MarketView,
    kw_per_min: float,
) -> None:
    # apply_guards works the chain out once for a rig that shares its observation, points,
    # modes, memory and intent (the same objects) with the rig listed before it, as the
    # backtest's copies of a cohort do: every answer must be what the same rigs get as
    # separate objects (no answer shared), ramp included; copies here may differ from the rig
    # before them in their intent or memory.
    together: list[RigView] = []
    apart: list[RigView] = []
    intents: dict[RigId, Intent] = {}
    shared: dict[RigId, RigGuardState] = {}
    own: dict[RigId, RigGuardState] = {}
    for c, (mode, temp, wanted, copies, age) in enumerate(cohorts):
        base = rig_at(f"c{c}", mode, T0, temp)
        memory = None
        if age is not None:
            memory = RigGuardState(Setting(mode), T0 - age, Setting(Mode.NORMAL), POLICY)
        reason = f"{POLICY} wants {wanted.value}"
        for k, copy_is in enumerate(copies):
            rid = f"c{c}-{k}"
            together.append(replace(base, rig_id=rid))
            obs = None if base.observation is None else replace(base.observation)
            points = tuple(replace(p) for p in base.points)
            apart.append(replace(base, rig_id=rid, observation=obs, points=points))
            if copy_is == "other intent":
                intents[rid] = Intent(
                    rid, Mode.LOW if wanted is not Mode.LOW else Mode.SLEEP, reason, POLICY
                )
            elif copy_is != "no intent":
                intents[rid] = Intent(rid, wanted, reason, POLICY)
            if memory is not None and copy_is != "no memory":
                shared[rid] = memory
                own[rid] = replace(memory)
    config = replace(QUIET, min_dwell_s=600.0, ramp_kw_per_min=kw_per_min)
    alike = apply_guards(intents, together, market, GuardState(shared), config, (), T0, 7)
    alone = apply_guards(intents, apart, market, GuardState(own), config, (), T0, 7)
    assert alike == alone


def test_state_round_trips_through_json() -> None:
    config = replace(QUIET, min_dwell_s=60.0, ramp_kw_per_min=3.0)
    fleet = [rig_at("a", Mode.NORMAL, T0, 93.0), rig_at("b", Mode.SLEEP, T0)]
    _, state = run(fleet, [want("b", Mode.LIMIT, 2000)], config=config)
    text = json.dumps(state.to_dict())
    assert GuardState.from_dict(json.loads(text)) == state
    assert state.rigs["a"].thermal_cap is Mode.LOW
    assert state.rigs["b"].setting == Setting(Mode.LIMIT, 2000)
    assert [g.rig_id for g in state.ramp_log] == ["b"]


def test_settings_compare_and_hash_by_value_and_plain_ones_are_shared() -> None:
    # Setting.of shares one value per mode without a limit and Setting writes its own __eq__:
    # equality and hashing must stay those of the value.
    assert Setting.of(Mode.NORMAL, 3000) is Setting.of(Mode.NORMAL, None) == Setting(Mode.NORMAL)
    assert Setting.of(Mode.LIMIT, 2000) == Setting(Mode.LIMIT, 2000) != Setting(Mode.LIMIT, 2001)
    assert hash(Setting.of(Mode.LIMIT, 2000)) == hash(Setting(Mode.LIMIT, 2000))
    assert Setting(Mode.SLEEP) != Setting(Mode.OFF)
    assert Setting(Mode.SLEEP) != (Mode.SLEEP, None)
    assert len({Setting(Mode.LOW), Setting.of(Mode.LOW, None), Setting(Mode.LIMIT, 5)}) == 2
