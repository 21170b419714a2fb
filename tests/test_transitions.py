"""Transitions are facts, not readings (policies/transition.py): a rig commanded and not yet
settled is scored on the mode it is going to and gets no policy command until it has settled.

Stability properties over the backtest, which runs the live decision path (the same
``mode_points``, ``hold_transitions`` and ``apply_guards``) on the simulator's physics, over every
guard setting including no dwell and no hysteresis at all."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import identity, observation
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest import ledger
from backtest.engine import Outcome, ReplayConfig, replay
from backtest.inputs import Fleet, Market, MarketRow, RigGroup
from daemon.rig_economics import mode_points
from policies.api import Intent, MarketView, RigView
from policies.economics import Economics
from policies.guards import GuardConfig, RigGuardState, Setting
from policies.registry import load_policy
from policies.timing import BOOT_S, STOCK
from policies.transition import PAYBACK_S, hold_transitions, settling_until
from policies.values import Mode, Observation
from simulator import physics as sp
from simulator.models import MODELS

START = 1_770_000_000.0
NO_PRICES = MarketView(hashprice_usd_per_ph_day=None, power_price_usd_per_kwh=None)
TERMS = Economics()
STEP_S = 300

groups = st.lists(
    st.tuples(
        st.sampled_from(["s19jpro", "s19xp", "s21", "m30s+", "m60s"]),
        st.integers(1, 3),
        st.sampled_from([0.85, 0.95, 1.0]),
    ),
    min_size=1,
    max_size=3,
)
guard_settings = st.tuples(st.sampled_from([0.0, 60.0, 600.0]), st.sampled_from([0.0, 0.25]))
hashprices = st.floats(30.0, 70.0)
power_prices = st.floats(0.01, 0.12)


def fleet_of(spec: list[tuple[str, int, float]]) -> Fleet:
    return Fleet("hypothesis", tuple(RigGroup(MODELS[m], n, h) for m, n, h in spec))


def market_of(prices: list[tuple[float, float]], hours: float) -> Market:
    """``prices`` one after the other, each for an equal share of ``hours``."""
    rows_each = max(1, int(hours * 3600 / STEP_S) // len(prices))
    rows = [
        MarketRow(START + STEP_S * (i * rows_each + k), hp, pp)
        for i, (hp, pp) in enumerate(prices)
        for k in range(rows_each)
    ]
    return Market("hypothesis", STEP_S, tuple(rows))


def run(market: Market, fleet: Fleet, dwell: float, hysteresis: float) -> Outcome:
    guards = GuardConfig(min_dwell_s=dwell, hysteresis_usd_per_day=hysteresis)
    return replay(market, fleet, [load_policy("breakeven")], ReplayConfig(guards=guards))


@contextmanager
def commands_seen() -> Iterator[dict[str, list[tuple[float, Setting]]]]:
    """Every command the replay's rigs receive, per rig: (time, setting). A spy: the command
    is carried out as it would be."""
    seen: dict[str, list[tuple[float, Setting]]] = defaultdict(list)
    original = ledger.Strategy.command

    def spy(self: ledger.Strategy, u: ledger.Unit, setting: Setting, t: float) -> None:
        if setting != u.setting:
            for member in u.members:
                seen[f"{id(self)}:{member}"].append((t, setting))
        original(self, u, setting, t)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ledger.Strategy, "command", spy)
        yield seen


@settings(max_examples=8, deadline=None)
@given(groups, hashprices, power_prices, guard_settings)
def test_a_constant_market_changes_each_rig_at_most_once(
    spec: list[tuple[str, int, float]], hp: float, pp: float, guards: tuple[float, float]
) -> None:
    outcome = run(market_of([(hp, pp)], 3.0), fleet_of(spec), *guards)
    changes = outcome.policy.strategy.rig_changes
    assert max(changes) <= 1, changes


@settings(max_examples=8, deadline=None)
@given(groups, hashprices, power_prices, power_prices, guard_settings)
def test_a_price_crossing_break_even_once_changes_each_rig_at_most_once(
    spec: list[tuple[str, int, float]],
    hp: float,
    low: float,
    high: float,
    guards: tuple[float, float],
) -> None:
    # Every rig hashes at the cheap price (each in its best mode: one change at most, from
    # the normal the replay starts it in); then the price steps up, once, two hours in.
    market = market_of([(hp, 0.005), (hp, max(low, high))], 4.0)
    step = market.rows[len(market.rows) // 2].t
    with commands_seen() as seen:
        run(market, fleet_of(spec), *guards)
    for rig, sent in seen.items():
        assert len([t for t, _ in sent if t < step]) <= 1, (rig, sent)
        assert len([t for t, _ in sent if t >= step]) <= 1, (rig, sent)


@settings(max_examples=10, deadline=None)
@given(groups, st.lists(st.tuples(hashprices, power_prices), min_size=2, max_size=8))
def test_no_policy_command_reaches_a_rig_in_transition(
    spec: list[tuple[str, int, float]], prices: list[tuple[float, float]]
) -> None:
    # Prices every 5 minutes, no dwell, no hysteresis: only the transition holds a rig.
    market = Market(
        "hypothesis",
        STEP_S,
        tuple(MarketRow(START + STEP_S * i, hp, pp) for i, (hp, pp) in enumerate(prices * 4)),
    )
    with commands_seen() as seen:
        run(market, fleet_of(spec), 0.0, 0.0)
    for rig, sent in seen.items():
        before = Setting.of(Mode.NORMAL, None)  # the replay's rigs start in normal
        for (t0, s0), (t1, _) in itertools.pairwise(sent):
            settle = STOCK.settle_s(before.mode, s0.mode)
            assert t1 - t0 >= settle - 1e-6, (rig, before, s0, t0, t1, settle)
            before = s0


def _s19(mode: Mode, ths: float, watts: float, rig_id: str = "10.0.0.1") -> Observation:
    """A stock S19j Pro read at t=1, hashing or about to (a booting rig counts as mining)."""
    return observation(
        rig_id,
        mode,
        ths=ths,
        watts=watts,
        at=1.0,
        mining=True,
        ident=identity(rig_id, firmware="2024"),
    )


def test_a_booting_rig_is_scored_on_the_mode_it_is_going_to() -> None:
    modes = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
    booting = _s19(Mode.NORMAL, 0.0, 478.0)  # woken: boards initialising, nothing hashed
    measured = {p.mode: p for p in mode_points(booting, modes)}
    # Even where the loop did not time the wake-up (settling unknown), a reading no rig runs
    # at steadily in normal (nothing hashed) is not taken as normal's figures: as read, normal
    # would look worthless and the policy would turn the rig round mid-boot.
    assert measured[Mode.NORMAL].hashrate_ths > 90.0 and measured[Mode.NORMAL].power_w > 2500
    settled = {p.mode: p for p in mode_points(booting, modes, settling=True)}
    assert settled[Mode.NORMAL].hashrate_ths > 90.0 and settled[Mode.NORMAL].power_w > 2500
    assert settled[Mode.LOW].hashrate_ths < settled[Mode.NORMAL].hashrate_ths


def test_settle_times_are_the_simulated_firmware_s() -> None:
    """The one model: a simulated S19j Pro woken to normal runs at its target frequency when
    the model says it has settled (within the simulator's two integration steps of 5 s: the
    step that starts the boot, and the one that ends it), and not before."""
    spec = MODELS["s19jpro"]
    state = sp.PhysState(t=0.0, phase=sp.Phase.SLEEPING, freq=0.0)
    target = sp.target_freq(sp.Mode.NORMAL, None, 0, spec, spec.boards)
    settle = STOCK.settle_s(Mode.SLEEP, Mode.NORMAL)
    assert settle > BOOT_S
    sp.advance(state, spec, target, settle - 10.0)
    assert state.freq < target
    sp.advance(state, spec, target, settle + 10.0)
    assert state.phase is sp.Phase.RUNNING and state.freq == pytest.approx(target)
    assert STOCK.settle_s(Mode.NORMAL, Mode.SLEEP) < 10.0
    assert STOCK.lost_hash_s(Mode.SLEEP, Mode.NORMAL) > BOOT_S
    assert STOCK.lost_hash_s(Mode.NORMAL, Mode.LOW) == 0.0


def test_hold_transitions_keeps_a_settling_rig_where_it_is_and_says_why() -> None:
    obs = _s19(Mode.NORMAL, 0.0, 478.0)
    view = RigView("10.0.0.1", obs, frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL}), ())
    memory = {
        "10.0.0.1": RigGuardState(
            Setting.of(Mode.NORMAL, None), changed_at=100.0, previous=Setting.of(Mode.SLEEP, None)
        )
    }
    until = settling_until(memory["10.0.0.1"], STOCK)
    assert until == 100.0 + STOCK.settle_s(Mode.SLEEP, Mode.NORMAL)
    wants = {"10.0.0.1": Intent("10.0.0.1", Mode.LOW, "low is better", "breakeven")}
    held = hold_transitions(wants, [view], memory, lambda _: STOCK, NO_PRICES, TERMS, 130.0)
    assert held["10.0.0.1"].mode is Mode.NORMAL and held["10.0.0.1"].policy == "breakeven"
    assert held["10.0.0.1"].reason.startswith("settling: changed to normal 30 s ago")
    # Settled: the policy decides again.
    assert (
        hold_transitions(wants, [view], memory, lambda _: STOCK, NO_PRICES, TERMS, until) is wants
    )


def test_hold_transitions_holds_the_settling_rigs_of_a_fleet_in_the_policy_order() -> None:
    """Over a fleet the policy answered for: the settling rigs are held at their setting (same
    policy, the settling reason), the others keep their intent, in the policy's order."""
    from policies.api import Site
    from policies.breakeven import BreakevenPolicy

    modes = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
    views = []
    memory: dict[str, RigGuardState] = {}
    for i in range(6):
        rid = f"10.0.0.{i}"
        obs = _s19(Mode.NORMAL, 104.0, 3068.0, rid)
        views.append(RigView(rid, obs, modes, tuple(mode_points(obs, modes))))
        before = Mode.SLEEP if i % 2 else Mode.LOW  # woken 30 s ago, or stepped up 300 s ago
        memory[rid] = RigGuardState(
            Setting.of(Mode.NORMAL, None),
            changed_at=970.0 if i % 2 else 700.0,
            previous=Setting.of(before, None),
        )
    market = MarketView(hashprice_usd_per_ph_day=30.0, power_price_usd_per_kwh=0.09)
    listed = BreakevenPolicy().decide(market, views, Site(), 1000.0)
    assert {i.mode for i in listed.values()} == {Mode.SLEEP}  # every rig loses money
    held = hold_transitions(listed, views, memory, lambda _: STOCK, market, TERMS, 1000.0)
    assert list(held) == list(listed)
    for rid, intent in held.items():
        settling = int(rid.rsplit(".", 1)[1]) % 2 == 1
        assert intent.policy == "breakeven"
        if settling:
            assert intent.mode is Mode.NORMAL
            assert intent.reason.startswith("settling: changed to normal 30 s ago"), intent
        else:
            assert intent is listed[rid]


def test_a_change_that_does_not_pay_for_itself_is_not_made() -> None:
    """A sleeping rig is not woken for a gain an hour would not repay (booting and ramping
    lose about 80 s of hash); a step down costs nothing and is made at once."""
    modes = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
    asleep = observation(
        mode=Mode.SLEEP, ths=0.0, watts=18.0, at=1.0, ident=identity(firmware="2024")
    )
    view = RigView("10.0.0.1", asleep, modes, tuple(mode_points(asleep, modes)))
    memory = {"10.0.0.1": RigGuardState(Setting.of(Mode.SLEEP, None), changed_at=0.0)}
    wake = {"10.0.0.1": Intent("10.0.0.1", Mode.NORMAL, "normal pays", "breakeven")}
    normal = next(p for p in view.points if p.mode is Mode.NORMAL)
    sleep_w = next(p for p in view.points if p.mode is Mode.SLEEP).power_w
    hp = 45.0
    # The power price at which normal earns what sleep does, and a hair under it.
    breakeven = (normal.hashrate_ths / 1000 * hp * (1 - TERMS.pool_fee)) / (
        (normal.power_w - sleep_w) / 1000 * 24 * TERMS.overhead
    )
    barely = MarketView(hashprice_usd_per_ph_day=hp, power_price_usd_per_kwh=breakeven * 0.999)
    held = hold_transitions(wake, [view], memory, lambda _: STOCK, barely, TERMS, 10_000.0)
    assert held["10.0.0.1"].mode is Mode.SLEEP
    assert "does not repay the change" in held["10.0.0.1"].reason
    assert f"within {PAYBACK_S / 3600:g} h" in held["10.0.0.1"].reason
    clearly = MarketView(hashprice_usd_per_ph_day=hp, power_price_usd_per_kwh=breakeven * 0.5)
    assert hold_transitions(wake, [view], memory, lambda _: STOCK, clearly, TERMS, 10_000.0) is wake
    # Going to sleep sheds nothing it was not told to: never held for its cost.
    running = {"10.0.0.1": RigGuardState(Setting.of(Mode.NORMAL, None), changed_at=0.0)}
    sleep = {"10.0.0.1": Intent("10.0.0.1", Mode.SLEEP, "sleep pays", "breakeven")}
    pricey = MarketView(hashprice_usd_per_ph_day=hp, power_price_usd_per_kwh=breakeven * 1.001)
    assert (
        hold_transitions(sleep, [view], running, lambda _: STOCK, pricey, TERMS, 10_000.0) is sleep
    )
