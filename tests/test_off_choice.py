"""Off over sleep only when it pays (policies/off.py), and the thermal emergency the thermal
guard declares (policies/guards/rig.py ``emergency``): pure functions, no sockets.

The integration over real sockets (the loop, simulated rigs and a simulated PDU) is in
tests/test_true_off.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from helpers import observation, rig_view
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.control_config import ControlSettings, OffSettings
from policies.api import Intent, MarketView, RigView, Site
from policies.breakeven import BreakevenPolicy
from policies.economics import Economics, ModePoint
from policies.guards import GuardConfig, GuardState, RigGuardState, Setting, apply_guards
from policies.guards.model import THERMAL, THERMAL_EMERGENCY
from policies.off import OffRule, off_after_s, off_case, prefer_off
from policies.tick import tick
from policies.timing import STOCK, Transition
from policies.values import Mode, PowerSource, RigId

RIG = "10.0.0.1"
TERMS = Economics(pool_fee=0.0, overhead=1.0)
SLEEP_POINT = ModePoint(Mode.SLEEP, 0.0, 18.0, PowerSource.ESTIMATED)
NORMAL_POINT = ModePoint(Mode.NORMAL, 140.0, 3010.0, PowerSource.ESTIMATED)  # an S19 XP
POINTS = (SLEEP_POINT, NORMAL_POINT)
WIRED = (Mode.SLEEP, Mode.NORMAL, Mode.OFF)


def view(
    mode: Mode = Mode.SLEEP,
    *,
    modes: tuple[Mode, ...] = WIRED,
    temp: float | None = None,
    mining: bool | None = None,
    at: float = 0.0,
) -> RigView:
    ths = 0.0 if mode in (Mode.SLEEP, Mode.OFF) else 140.0
    obs = observation(
        RIG,
        mode,
        ths=ths,
        watts=18.0 if ths == 0 else 3010.0,
        at=at,
        max_chip_temp_c=temp,
        mining=mining,
    )
    return rig_view(obs, modes, POINTS)


def market(hashprice: float = 50.0, price: float = 0.08) -> MarketView:
    return MarketView(hashprice_usd_per_ph_day=hashprice, power_price_usd_per_kwh=price)


def asleep_since(t: float) -> dict[RigId, RigGuardState]:
    return {RIG: RigGuardState(Setting.of(Mode.SLEEP, None), t, Setting.of(Mode.NORMAL, None))}


def timing(rig_id: RigId) -> Transition:
    return STOCK


def sleep_intent(reason: str = "no mode beats sleep") -> dict[RigId, Intent]:
    return {RIG: Intent(RIG, Mode.SLEEP, reason, "breakeven")}


# ---- the arithmetic ------------------------------------------------------------------------


def test_the_break_even_of_an_s19xp_by_hand() -> None:
    """45 s more boot (90 s cold, 45 s warm); at $50/PH/day a 140 TH/s rig earns $7.00/day,
    so those seconds lose $0.0036458; booting boards draw 15 % of 3010 W = 451.5 W, $0.86688/day
    at $0.08/kWh, $0.0004515 for 45 s; 18 W asleep costs $0.03456/day. Break-even:
    0.0040973 / 0.03456 days = 10,243 s."""
    case = off_case(view(), STOCK, 50.0, 0.08, TERMS, OffRule())
    assert case is not None
    assert case.extra_boot_s == pytest.approx(45.0)
    assert case.hash_usd == pytest.approx(45 * 7.0 / 86400)
    assert case.boot_energy_usd == pytest.approx(45 * 0.86688 / 86400)
    assert case.saving_usd_per_day == pytest.approx(0.03456)
    assert case.breakeven_s == pytest.approx(10243.0, abs=1.0)
    assert off_after_s(case, OffRule(min_asleep_s=1800)) == case.breakeven_s
    assert off_after_s(case, OffRule(min_asleep_s=20000)) == 20000


def test_standby_draw_lengthens_it_and_off_never_pays_without_a_saving() -> None:
    plain = off_case(view(), STOCK, 50.0, 0.08, TERMS, OffRule())
    leaky = off_case(view(), STOCK, 50.0, 0.08, TERMS, OffRule(standby_w=9.0))
    assert plain is not None and leaky is not None
    assert leaky.breakeven_s == pytest.approx(2 * plain.breakeven_s)
    never = off_case(view(), STOCK, 50.0, 0.08, TERMS, OffRule(standby_w=18.0))
    free = off_case(view(), STOCK, 50.0, -0.01, TERMS, OffRule())  # a negative power price
    assert never is not None and math.isinf(never.breakeven_s)
    assert free is not None and math.isinf(free.breakeven_s)


def test_no_hashing_point_means_no_case() -> None:
    rig = rig_view(observation(RIG, Mode.SLEEP, ths=0.0), WIRED, (SLEEP_POINT,))
    assert off_case(rig, STOCK, 50.0, 0.08, TERMS, OffRule()) is None


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="min_asleep_s must be a finite number >= 0"):
        OffRule(min_asleep_s=-1.0)
    with pytest.raises(ValueError, match="standby_w"):
        OffRule(standby_w=math.nan)
    with pytest.raises(ValueError, match="thermal_cut_after_s must be >= 0"):
        GuardConfig(thermal_cut_after_s=-5.0)
    with pytest.raises(ValueError, match="min_asleep_s"):
        OffSettings(min_asleep_s=-1)


prices = st.floats(0.005, 2.0)
hashprices = st.floats(1.0, 200.0)


@given(hp=hashprices, low=prices, high=prices)
def test_a_dearer_power_price_never_lengthens_the_wait(hp: float, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    a = off_case(view(), STOCK, hp, low, TERMS, OffRule())
    b = off_case(view(), STOCK, hp, high, TERMS, OffRule())
    assert a is not None and b is not None
    assert b.breakeven_s <= a.breakeven_s * (1 + 1e-9)


@given(
    hp=hashprices,
    price=prices,
    curtailment_s=st.floats(0.0, 30 * 86400.0),
)
def test_the_rule_costs_at_most_twice_the_hindsight_choice(
    hp: float, price: float, curtailment_s: float
) -> None:
    """Whatever the curtailment's length L turns out to be (prices steady), sleeping until the
    break-even T and then switching off costs at most twice the best choice made knowing L
    (off at once, or asleep throughout): the ski-rental bound, with no floor."""
    rule = OffRule(min_asleep_s=0.0)
    case = off_case(view(), STOCK, hp, price, TERMS, rule)
    assert case is not None
    per_s = case.saving_usd_per_day / 86400.0
    wait = off_after_s(case, rule)
    rule_cost = (
        curtailment_s * per_s if curtailment_s < wait else wait * per_s + case.extra_cost_usd
    )
    hindsight = min(curtailment_s * per_s, case.extra_cost_usd)
    assert rule_cost <= 2 * hindsight + 1e-12


# ---- the rule over intents -----------------------------------------------------------------


def test_sleep_becomes_off_only_once_asleep_past_the_break_even() -> None:
    rule = OffRule(min_asleep_s=1800.0)
    rig = view()
    case = off_case(rig, STOCK, 50.0, 0.08, TERMS, rule)
    assert case is not None
    t0 = 1_000_000.0
    memory = asleep_since(t0)
    early = prefer_off(
        sleep_intent(), [rig], memory, timing, market(), TERMS, rule, t0 + case.breakeven_s - 1
    )
    assert early[RIG].mode is Mode.SLEEP
    late = prefer_off(
        sleep_intent(), [rig], memory, timing, market(), TERMS, rule, t0 + case.breakeven_s
    )
    assert late[RIG].mode is Mode.OFF
    assert late[RIG].policy == "breakeven"
    reason = late[RIG].reason
    assert reason.startswith("no mode beats sleep; off: asleep 2 h 51 min >= 2 h 51 min")
    assert "18 W at $0.080/kWh" in reason and "45 s more hash lost" in reason


def test_what_the_rule_leaves_alone() -> None:
    rule = OffRule()
    t0, later = 0.0, 10 * 86400.0
    memory = asleep_since(t0)
    unwired = view(modes=(Mode.SLEEP, Mode.NORMAL))
    assert (
        prefer_off(sleep_intent(), [unwired], memory, timing, market(), TERMS, rule, later)[
            RIG
        ].mode
        is Mode.SLEEP
    )
    normal = {RIG: Intent(RIG, Mode.NORMAL, "pays", "breakeven")}
    assert prefer_off(normal, [view()], memory, timing, market(), TERMS, rule, later) is normal
    off = OffRule(enabled=False)
    kept = sleep_intent()
    assert prefer_off(kept, [view()], memory, timing, market(), TERMS, off, later) is kept
    stale = MarketView(None, None)
    assert prefer_off(kept, [view()], memory, timing, stale, TERMS, rule, later) is kept
    unknown_since = {RIG: RigGuardState(Setting.of(Mode.SLEEP, None))}  # found asleep
    assert prefer_off(kept, [view()], unknown_since, timing, market(), TERMS, rule, later) is kept


def test_a_rig_already_off_stays_off_when_asked_to_sleep() -> None:
    memory = {RIG: RigGuardState(Setting.of(Mode.OFF, None), 5.0, Setting.of(Mode.SLEEP, None))}
    out = prefer_off(
        sleep_intent(),
        [view(Mode.OFF)],
        memory,
        timing,
        MarketView(None, None),
        TERMS,
        OffRule(),
        10.0,
    )
    assert out[RIG].mode is Mode.OFF
    assert "already off, and a cold boot only to sleep never pays" in out[RIG].reason


@settings(max_examples=60)
@given(
    intent_mode=st.sampled_from([Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.OFF]),
    memory_mode=st.sampled_from([Mode.SLEEP, Mode.NORMAL, Mode.OFF]),
    wired=st.booleans(),
    asleep_s=st.floats(0.0, 5 * 86400.0),
    floor=st.floats(0.0, 86400.0),
    price=prices,
    hp=hashprices,
)
def test_only_sleep_becomes_off_and_only_by_the_rule(
    intent_mode: Mode,
    memory_mode: Mode,
    wired: bool,
    asleep_s: float,
    floor: float,
    price: float,
    hp: float,
) -> None:
    rule = OffRule(min_asleep_s=floor)
    rig = view(modes=WIRED if wired else (Mode.SLEEP, Mode.NORMAL))
    memory = {RIG: RigGuardState(Setting.of(memory_mode, None), 0.0, None)}
    intents = {RIG: Intent(RIG, intent_mode, "asked", "p")}
    out = prefer_off(intents, [rig], memory, timing, market(hp, price), TERMS, rule, asleep_s)
    case = off_case(rig, STOCK, hp, price, TERMS, rule)
    assert case is not None
    expected = intent_mode is Mode.OFF or (
        intent_mode is Mode.SLEEP
        and wired
        and (
            memory_mode is Mode.OFF
            or (memory_mode is Mode.SLEEP and asleep_s >= off_after_s(case, rule))
        )
    )
    assert (out[RIG].mode is Mode.OFF) == expected
    assert out[RIG].policy == "p"


def test_through_the_tick_breakeven_sleeps_then_goes_off_and_wakes_at_the_cold_boot_cost() -> None:
    """The one tick path (policies/tick.py): breakeven's sleep, then off once it pays; woken
    from off, the transitions' hold prices the longer, cold boot."""
    config = GuardConfig(min_dwell_s=0.0, economics=TERMS, off=OffRule(min_asleep_s=0.0))
    cheap_hash = market(hashprice=20.0, price=0.20)  # 140 TH at $20 < 3010 W at $0.20: sleep
    state = GuardState()
    t = 1_000_000.0
    rig = view(Mode.NORMAL, at=t)
    first = tick([BreakevenPolicy()], [rig], cheap_hash, Site(economics=TERMS), state, config, t)
    assert first.desired[RIG].mode is Mode.SLEEP
    case = off_case(rig, STOCK, 20.0, 0.20, TERMS, config.off)
    assert case is not None
    state = first.guard_state
    t_off = t + case.breakeven_s
    asleep = view(Mode.SLEEP, at=t_off - 30)
    before = tick(
        [BreakevenPolicy()], [asleep], cheap_hash, Site(economics=TERMS), state, config, t_off - 30
    )
    assert before.desired[RIG].mode is Mode.SLEEP
    after = tick(
        [BreakevenPolicy()],
        [asleep],
        cheap_hash,
        Site(economics=TERMS),
        before.guard_state,
        config,
        t_off,
    )
    assert after.desired[RIG].mode is Mode.OFF
    assert "off: asleep" in after.desired[RIG].reason
    assert STOCK.settle_s(Mode.OFF, Mode.NORMAL) == STOCK.settle_s(Mode.SLEEP, Mode.NORMAL) + 45.0
    assert (
        STOCK.lost_hash_s(Mode.OFF, Mode.NORMAL)
        == STOCK.lost_hash_s(Mode.SLEEP, Mode.NORMAL) + 45.0
    )


def test_the_configuration_carries_the_rule() -> None:
    control = ControlSettings.model_validate(
        {"off": {"prefer_off": False, "min_asleep_s": 600, "standby_w": 2.5}}
    )
    config = control.guards.to_config(TERMS, control.tick_s, control.off.rule())
    assert config.off == OffRule(False, 600.0, 2.5)
    assert ControlSettings().guards.to_config(TERMS, 30.0).off == OffRule()


# ---- the thermal emergency -----------------------------------------------------------------

CONFIG = GuardConfig(min_dwell_s=0.0, thermal_cut_after_s=120.0, economics=TERMS)


def guard_once(
    rig: RigView, state: GuardState, now: float, config: GuardConfig = CONFIG
) -> tuple[Mode, str, str, GuardState]:
    intents = {RIG: Intent(RIG, Mode.NORMAL, "pays", "breakeven")}
    desired, new = apply_guards(intents, [rig], market(), state, config, (), now, 0)
    d = desired[RIG]
    return d.mode, d.decided_by, d.reason, new


def test_a_critical_rig_ignoring_sleep_is_cut_after_the_limit() -> None:
    state = GuardState()
    seen: list[tuple[float, Mode, str]] = []
    for now in range(0, 301, 30):
        mode, by, reason, state = guard_once(view(Mode.NORMAL, temp=98.0, at=now), state, now)
        seen.append((now, mode, by))
        if mode is Mode.OFF:
            break
    assert seen[0][1:] == (Mode.SLEEP, THERMAL)  # first: sleep, as ever
    cut_at = next(t for t, m, _ in seen if m is Mode.OFF)
    assert cut_at == 120  # set to sleep at 0, critical since 0: cut 120 s later
    assert seen[-1][2] == THERMAL_EMERGENCY
    assert "thermal emergency: max chip 98 °C >= 95 °C, still hashing 120 s" in reason


def test_no_emergency_without_every_condition() -> None:
    def run(
        temps: Sequence[float | None],
        *,
        modes: tuple[Mode, ...] = WIRED,
        mining: bool = True,
        config: GuardConfig = CONFIG,
    ) -> list[str]:
        state, by_s = GuardState(), []
        for i, temp in enumerate(temps):
            now = 30.0 * i
            obs_mode = Mode.NORMAL if mining else Mode.SLEEP
            rig = view(obs_mode, modes=modes, temp=temp, at=now, mining=mining)
            _, by, _, state = guard_once(rig, state, now, config)
            by_s.append(by)
        return by_s

    hot = [98.0] * 10
    assert THERMAL_EMERGENCY in run(hot)
    assert THERMAL_EMERGENCY not in run(hot, modes=(Mode.SLEEP, Mode.LOW, Mode.NORMAL))  # no outlet
    assert THERMAL_EMERGENCY not in run([93.0] * 10)  # hot, not critical
    assert THERMAL_EMERGENCY not in run(hot, mining=False)  # asleep (obeyed), however hot
    off = GuardConfig(min_dwell_s=0.0, thermal_cut=False, economics=TERMS)
    assert THERMAL_EMERGENCY not in run(hot, config=off)
    # A cooler reading or an unread one restarts the count: 120 s of critical readings needed.
    assert THERMAL_EMERGENCY not in run([98.0, 98.0, 98.0, 93.0, 98.0, 98.0, 98.0, None, 98.0])


@settings(max_examples=80)
@given(
    temps=st.lists(st.one_of(st.none(), st.floats(60.0, 110.0)), min_size=1, max_size=15),
    mining=st.lists(st.booleans(), min_size=15, max_size=15),
)
def test_an_emergency_is_only_ever_declared_on_proof(
    temps: list[float | None], mining: list[bool]
) -> None:
    """Any sequence of readings: a cut comes only for a rig seen hashing at or above critical
    in each of its last readings spanning at least the limit since it was set to sleep."""
    state = GuardState()
    history: list[tuple[float, float | None, bool]] = []
    for i, temp in enumerate(temps):
        now = 30.0 * i
        hashing = mining[i]
        rig = view(Mode.NORMAL if hashing else Mode.SLEEP, temp=temp, at=now, mining=hashing)
        prior = state.rigs.get(RIG)
        mode, by, _, state = guard_once(rig, state, now)
        history.append((now, temp, hashing))
        if by != THERMAL_EMERGENCY:
            continue
        assert mode is Mode.OFF
        assert prior is not None and prior.setting.mode in (Mode.SLEEP, Mode.OFF)
        assert prior.changed_at is not None and now - prior.changed_at >= 120.0
        run = [h for h in history if h[0] >= now - 120.0]
        assert all(t is not None and t >= 95.0 and m for _, t, m in run)


def test_the_critical_mark_survives_persistence() -> None:
    memory = RigGuardState(
        Setting.of(Mode.SLEEP, None), 10.0, None, THERMAL, Mode.SLEEP, 40.0, 10.0
    )
    assert RigGuardState.from_dict(memory.to_dict()) == memory
    assert "critical_since" not in RigGuardState(Setting.of(Mode.SLEEP, None)).to_dict()
    shifted = GuardState({RIG: memory}).shifted(-5.0).rigs[RIG]
    assert shifted.critical_since == 5.0
