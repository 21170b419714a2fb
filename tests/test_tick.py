"""The one tick (policies/tick.py) that the live loop and the backtest both decide through: a
failing policy holds the fleet and is reported, the guards still act, a site target caps the
site; and the power order of modes, defined once on ``Mode``."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.api import Intent, MarketView, RigView, Site
from policies.breakeven import BreakevenPolicy
from policies.economics import ModePoint
from policies.guards import (
    FailSafe,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
    apply_guards,
)
from policies.guards.horizon import held_again, held_until, keeps
from policies.tick import PolicyFailure, checked_opinion, tick, with_site_target
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600.0
QUIET = GuardConfig(
    min_dwell_s=0.0, hysteresis_usd_per_day=0.0, ramp_kw_per_min=1e6, ramp_rigs_per_s=100.0
)
CHEAP = MarketView(50.0, 0.01)  # everything pays
DEAR = MarketView(50.0, 0.50)  # nothing pays
MODES = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
POINTS = (
    ModePoint(Mode.SLEEP, 0.0, 15.0, PowerSource.ESTIMATED),
    ModePoint(Mode.LOW, 80.0, 2500.0, PowerSource.ESTIMATED),
    ModePoint(Mode.NORMAL, 100.0, 3250.0, PowerSource.ESTIMATED),
)


def rig(rid: RigId, mode: Mode, temp_c: float = 60.0) -> RigView:
    mining = mode is not Mode.SLEEP
    obs = Observation(
        identity=Identity(rid, Make.ANTMINER, "S19j Pro", "test", "antminer-stock"),
        observed_at=T0,
        hashrate_ths=100.0 if mining else 0.0,
        power_w=3250.0 if mining else 15.0,
        power_source=PowerSource.REPORTED,
        mode=mode,
        mining=mining,
        max_chip_temp_c=temp_c,
    )
    return RigView(rid, obs, MODES, POINTS)


class Exploding:
    name = "exploding"

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        raise ZeroDivisionError("the plugin's bug")


class Garbage:
    name = "garbage"

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        return {r.rig_id: "sleep" for r in fleet}  # type: ignore[misc]


def asleep(rids: Sequence[RigId]) -> GuardState:
    memory = RigGuardState(Setting(Mode.SLEEP), T0 - 3600, Setting(Mode.NORMAL), "breakeven")
    return GuardState(rigs={r: memory for r in rids})


def test_a_working_tick_decides_and_guards() -> None:
    fleet = [rig("a", Mode.SLEEP), rig("b", Mode.SLEEP)]
    result = tick([BreakevenPolicy()], fleet, CHEAP, Site(), asleep(["a", "b"]), QUIET, T0)
    assert result.failures == () and result.failed_policies == ()
    assert {r: d.mode for r, d in result.desired.items()} == {"a": Mode.NORMAL, "b": Mode.NORMAL}
    assert result.guard_state.rigs["a"].setting == Setting(Mode.NORMAL)
    assert result.guard_state.rigs["a"].changed_at == T0


def test_a_policy_that_raises_holds_the_fleet_and_is_reported() -> None:
    # Breakeven alone would wake both rigs; with a failing policy beside it no policy moves any
    # rig (without its opinion the others could raise power it would keep down).
    fleet = [rig("a", Mode.SLEEP), rig("b", Mode.SLEEP)]
    state = asleep(["a", "b"])
    result = tick([BreakevenPolicy(), Exploding()], fleet, CHEAP, Site(), state, QUIET, T0)
    (failure,) = result.failures
    assert failure == PolicyFailure("exploding", "ZeroDivisionError: the plugin's bug")
    assert isinstance(failure.exception, ZeroDivisionError)
    assert result.failed_policies == ("exploding",)
    assert {r: d.mode for r, d in result.desired.items()} == {"a": Mode.SLEEP, "b": Mode.SLEEP}
    assert all(not d.held_back for d in result.desired.values())  # nothing asked to change
    assert result.guard_state.rigs == state.rigs  # nothing changed, nothing remembered anew


def test_the_guards_still_act_while_a_policy_fails() -> None:
    # A hot rig goes down, and an operator's pin is applied: the guards do not need a policy.
    fleet = [rig("hot", Mode.NORMAL, temp_c=97.0), rig("pinned", Mode.NORMAL)]
    pin = Override(Mode.LOW, T0 + 600, "ops", "maintenance", frozenset({"pinned"}))
    result = tick([Exploding()], fleet, CHEAP, Site(), GuardState(), QUIET, T0, overrides=[pin])
    assert result.failed_policies == ("exploding",)
    assert (
        result.desired["hot"].mode is Mode.SLEEP and result.desired["hot"].decided_by == "thermal"
    )
    assert result.desired["pinned"].mode is Mode.LOW
    assert result.desired["pinned"].decided_by == "override"


def test_an_answer_that_is_not_intents_is_a_failure_named_as_such() -> None:
    fleet = [rig("a", Mode.NORMAL)]
    result = tick([Garbage()], fleet, DEAR, Site(), GuardState(), QUIET, T0)
    (failure,) = result.failures
    assert failure.policy == "garbage"
    assert failure.error == "TypeError: policy 'garbage' returned str for rig 'a', not an Intent"
    assert result.desired["a"].mode is Mode.NORMAL
    try:
        checked_opinion("p", ["not", "a", "mapping"])
    except TypeError as exc:
        assert str(exc) == "policy 'p' returned list, not a mapping"
    else:
        raise AssertionError("a list was accepted")


def test_a_site_target_caps_the_site_and_brings_in_power_cap() -> None:
    site, policies = with_site_target(Site(power_cap_kw=10.0), [BreakevenPolicy()], 5.0)
    assert site.power_cap_kw == 5.0 and [p.name for p in policies] == ["breakeven", "power-cap"]
    site, _ = with_site_target(Site(power_cap_kw=4.0), [BreakevenPolicy()], 5.0)
    assert site.power_cap_kw == 4.0  # the contract limit stays if it is lower
    site, policies = with_site_target(Site(), [BreakevenPolicy()], None)
    assert site.power_cap_kw is None and [p.name for p in policies] == ["breakeven"]
    # Three hashing rigs at 3.25 kW under a 7 kW target: one is shed by power-cap.
    fleet = [rig(r, Mode.NORMAL) for r in "abc"]
    result = tick([BreakevenPolicy()], fleet, CHEAP, Site(), GuardState(), QUIET, T0,
                  site_target_kw=7.0)  # fmt: skip
    shed = [r for r, d in result.desired.items() if d.mode is not Mode.NORMAL]
    assert len(shed) == 1 and result.desired[shed[0]].decided_by == "power-cap"


def test_the_power_order_of_modes_is_defined_once() -> None:
    assert [m for m in sorted(Mode, key=lambda m: m.power_rank)] == [
        Mode.OFF, Mode.SLEEP, Mode.LOW, Mode.LIMIT, Mode.NORMAL, Mode.HIGH, Mode.UNKNOWN
    ]  # fmt: skip
    assert [m for m in Mode if m.hashing] == [Mode.LOW, Mode.NORMAL, Mode.HIGH]
    # Nothing else in the code base spells the order out again (a sequence of four or more
    # modes in power order, or a table of ranks).
    rank = {m.name: m.power_rank for m in Mode}
    spelled = []
    for path in [*REPO.glob("policies/**/*.py"), *REPO.glob("daemon/**/*.py"),
                 *REPO.glob("backtest/*.py")]:  # fmt: skip
        if path.name == "values.py" and path.parent.name == "policies":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List):
                names = [i.attr for i in node.elts if isinstance(i, ast.Attribute)]
            elif isinstance(node, ast.Dict) and all(
                isinstance(v, ast.Constant) and isinstance(v.value, int) for v in node.values
            ):
                names = [k.attr for k in node.keys if isinstance(k, ast.Attribute)]
            else:
                continue
            ranks = [rank[n] for n in names if n in rank]
            if len(ranks) >= 4 and ranks == sorted(ranks):
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert spelled == []


def test_the_loop_and_the_backtest_decide_through_the_tick() -> None:
    # The backtest decides through the core, not through the service shell's loop.
    for path in REPO.glob("backtest/*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "daemon.loop" not in imported, path
    assert "policies.tick" in (REPO / "backtest" / "cohorts.py").read_text()
    assert "from policies.tick import" in (REPO / "daemon" / "loop.py").read_text()


# ---------------------------------------------------------------------------------------------
# the guards' own answer to "would you answer the same again?" (policies/guards/horizon.py),
# which the backtest's cohort replay asks instead of predicting the guards itself


SETTINGS = st.sampled_from([Setting.of(m, None) for m in (Mode.SLEEP, Mode.LOW, Mode.NORMAL)])
POLICY_NAMES = st.sampled_from(["breakeven", "exempt"])


@st.composite
def guard_case(draw: st.DrawFn) -> tuple[RigView, Intent | None, RigGuardState, MarketView,
                                         GuardConfig]:  # fmt: skip
    setting = draw(SETTINGS)
    changed_ago = draw(st.none() | st.floats(0.0, 2000.0))
    prior = RigGuardState(
        setting,
        None if changed_ago is None else T0 - changed_ago,
        None if changed_ago is None else draw(SETTINGS),
        draw(st.sampled_from(["breakeven", "dwell", "thermal", "override", ""])),
        draw(st.none() | st.sampled_from([Mode.LOW, Mode.SLEEP])),
        draw(st.none() | st.floats(T0 - 900.0, T0)),
    )
    seen = draw(SETTINGS).mode if draw(st.booleans()) else setting.mode
    view = rig("r", seen, temp_c=draw(st.sampled_from([40.0, 85.0, 89.9, 90.0, 96.0])))
    if draw(st.booleans()):
        view = RigView("r", None, MODES, POINTS)
    intent = None
    if draw(st.booleans()):
        mode = draw(SETTINGS).mode
        intent = Intent("r", mode, "wants it", draw(POLICY_NAMES))
    market = MarketView(
        draw(st.none() | st.floats(20.0, 60.0)), draw(st.none() | st.floats(0.0, 0.2))
    )
    config = GuardConfig(
        min_dwell_s=draw(st.sampled_from([0.0, 300.0, 600.0])),
        hysteresis_usd_per_day=draw(st.sampled_from([0.0, 0.25, 5.0])),
        stale_failsafe=draw(st.sampled_from(list(FailSafe))),
        stale_exempt_policies=frozenset({"exempt"}),
        ramp_rigs_per_s=draw(st.sampled_from([0.01, 1.0])),
    )
    return view, intent, prior, market, config


@settings(max_examples=400, deadline=None)
@given(guard_case())
def test_when_the_guards_say_they_keep_a_rig_apply_guards_keeps_it(
    case: tuple[RigView, Intent | None, RigGuardState, MarketView, GuardConfig],
) -> None:
    view, intent, prior, market, config = case
    temp = view.observation.max_chip_temp_c if view.observation is not None else None
    if not keeps(prior, intent, temp, market, config):
        return
    intents = {} if intent is None else {"r": intent}
    state = GuardState(rigs={"r": prior})
    desired, after = apply_guards(intents, [view], market, state, config, (), T0, 3)
    d = desired["r"]
    assert (d.mode, d.power_limit_w, d.held_back) == (prior.setting.mode, None, False)
    assert after.rigs["r"] == prior and after.ramp_log == ()


@settings(max_examples=400, deadline=None)
@given(guard_case(), st.floats(1.0, 1200.0))
def test_when_the_guards_say_a_hold_holds_again_it_does(
    case: tuple[RigView, Intent | None, RigGuardState, MarketView, GuardConfig], later_s: float
) -> None:
    view, intent, prior, market, config = case
    intents = {} if intent is None else {"r": intent}
    state = GuardState(rigs={"r": prior})
    first, state = apply_guards(intents, [view], market, state, config, (), T0, 3)
    d = first["r"]
    memory = state.rigs.get("r")
    again_at = T0 + later_s
    if not d.held_back or not held_again(d.decided_by, memory, again_at, config):
        return
    until = held_until(d.decided_by, memory, config)
    assert until is not None and again_at < until + 1e-6
    obs = view.observation
    if obs is not None:  # the same reading, read again
        view = replace(view, observation=replace(obs, observed_at=again_at))
    second, after = apply_guards(intents, [view], market, state, config, (), again_at, 3)
    e = second["r"]
    assert (e.mode, e.power_limit_w, e.held_back, e.decided_by) == (
        d.mode, d.power_limit_w, True, d.decided_by
    )  # fmt: skip
    assert after.rigs.get("r") == memory
