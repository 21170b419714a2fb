"""``apply_guards``: every guard, in order, over the whole fleet for one tick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.api import Intent, MarketView, RigView
from policies.columns import FleetViews
from policies.economics import ModePoint, cost_per_day, revenue_usd_per_day
from policies.guards.model import (
    DWELL,
    GUARD_NAMES,
    HYSTERESIS,
    NO_INTENT,
    OVERRIDE,
    Desired,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
)
from policies.guards.power import _EPS_W, FLOOR_MODES, is_raise
from policies.guards.ramp import Rise, apply_ramp, make_rise
from policies.guards.rig import (
    NO_INTENT_REASON,
    SOURCE_HOLD,
    SOURCE_POLICY,
    Decision,
    Latch,
    decide_rig,
    dwell_text,
    hysteresis_text,
    override_reason,
    pick_override,
)
from policies.values import Mode, RigId


def apply_guards(
    intents: Mapping[RigId, Intent],
    fleet: Sequence[RigView],
    market: MarketView,
    state: GuardState,
    config: GuardConfig,
    overrides: Sequence[Override],
    now: float,
    seed: int,
) -> tuple[Mapping[RigId, Desired], GuardState]:
    """Turn policy intents into the desired setting of every rig in ``fleet``.

    Promises (docs/guards.md): thermal protection outranks overrides and policies that would
    raise power; no rig changes more often than ``min_dwell_s`` except by thermal protection or
    a dwell-bypassing override; power-ups across the site stay within the ramp budget; a stale
    price never lets a policy drive a change (the fail-safe applies instead); a rig without a
    fresh observation is only moved by an override lowering its power. Pure and deterministic:
    same arguments, same result; nothing passed in is modified. Raises ValueError when two
    rigs in ``fleet`` share an id. A ``now`` earlier than the last call's (``state.as_of``: the
    clock stepped back) first shifts the state's remembered times back by the same amount.
    """
    # Most rigs, most ticks, are where the guards left them and no guard has anything to say:
    # for those (a hold setting, not hot or latched, and an override pinning the rig at its
    # hold setting, or no override and either no intent or one asking for the hold setting
    # with usable prices) every guard keeps the decision, and the
    # rig's memory is its prior one, unchanged. They are answered without running the chain;
    # tests/test_guards.py checks this gives what the chain gives. A cool, freshly read rig
    # asked to change can only be stopped by hysteresis, dwell or the ramp, so only those run.
    # Everything else goes through decide_rig.
    if state.as_of is not None and now < state.as_of:  # the clock stepped back
        state = state.shifted(now - state.as_of)
    if isinstance(fleet, FleetViews) and fleet.columns.unique:
        from policies.guards.columnar import apply_columns

        return apply_columns(intents, fleet, market, state, config, overrides, now, seed)
    live = [o for o in overrides if o.active(now)]
    named_ids = frozenset().union(*(o.rig_ids for o in live))
    named_groups = {o.group for o in live if o.group}
    prices_fresh = (
        market.hashprice_usd_per_ph_day is not None and market.power_price_usd_per_kwh is not None
    )
    exempt = config.stale_exempt_policies
    ttl_s = config.observation_ttl_s
    limit_c = config.thermal_limit_c
    unknown, limit_mode = Mode.UNKNOWN, Mode.LIMIT
    prior_rigs = state.rigs
    override_reasons: dict[int, str] = {}  # by id(): the overrides outlive this call
    desired: dict[RigId, Desired] = {}
    moved: list[tuple[RigView, RigGuardState | None, Setting, Decision, Mode | None, float | None]]
    moved = []
    rises: list[Rise] = []
    for rig in fleet:
        rid = rig.rig_id
        if rid in desired:
            raise ValueError(f"rig {rid!r} appears twice in the fleet")
        prior = prior_rigs.get(rid)
        intent = intents.get(rid)
        if intent is not None and (intent.rig_id != rid or intent.mode is unknown):
            intent = None  # ignored, as propose() and intents_for() do
        if prior is not None and prior.thermal_cap is None and prior.setting.mode is not unknown:
            override = None
            if rid in named_ids or rig.group in named_groups:
                override = pick_override(rig, live, now)
            hold = prior.setting
            obs = rig.observation
            if obs is not None and now - obs.observed_at > ttl_s:
                obs = None
            temp = obs.max_chip_temp_c if obs is not None else None
            if temp is None or temp < limit_c:
                if override is not None:
                    pinned = Setting.of(override.mode, override.power_limit_w)
                    if pinned == hold:  # pinned where it is: nothing else applies
                        why = override_reasons.get(id(override))
                        if why is None:
                            why = override_reasons[id(override)] = override_reason(override)
                        desired[rid] = Desired(rid, hold.mode, hold.power_limit_w, why, OVERRIDE)
                        continue
                elif intent is None:
                    desired[rid] = Desired(
                        rid, hold.mode, hold.power_limit_w, NO_INTENT_REASON, NO_INTENT
                    )
                    continue
                elif prices_fresh or intent.policy in exempt:
                    mode = intent.mode
                    limit_w = intent.power_limit_w if mode is limit_mode else None
                    if mode is hold.mode and limit_w == hold.power_limit_w:
                        desired[rid] = Desired(rid, mode, limit_w, intent._reason, intent.policy)
                        continue
                    if temp is not None:
                        target = Setting(mode, limit_w)
                        decision, rise = _asked_to_change(
                            rig, intent, prior, hold, target, market, config, now
                        )
                        if rise is not None:
                            rises.append(rise)
                        elif decision.setting is hold:  # held: the rig's memory is unchanged
                            desired[rid] = _desired(rid, decision)
                            continue
                        desired[rid] = _PENDING
                        moved.append((rig, prior, hold, decision, None, prior.thermal_at))
                        continue
        hold, decision, latch = decide_rig(rig, intent, overrides, prior, market, config, now)
        desired[rid] = _PENDING
        moved.append((rig, prior, hold, decision, latch.cap, latch.at))
        if is_raise(rig, hold, decision.setting):
            rises.append(make_rise(rig, hold, decision, market, config))
    ramped, ramp_log = apply_ramp(rises, state.ramp_log, config, seed, now)
    rigs: dict[RigId, RigGuardState] = dict(prior_rigs)
    for rig, prior, hold, decision, cap, at in moved:
        rid = rig.rig_id
        final = ramped.get(rid, decision)
        desired[rid] = _desired(rid, final)
        rigs[rid] = _next_rig_state(prior, hold, final, Latch(cap, at), now)
    return desired, GuardState(rigs=rigs, ramp_log=ramp_log, as_of=now)


_PENDING = Desired("", Mode.UNKNOWN, None, "", "")  # keeps the fleet's order in ``desired``


def _asked_to_change(
    rig: RigView,
    intent: Intent,
    prior: RigGuardState,
    hold: Setting,
    target: Setting,
    market: MarketView,
    config: GuardConfig,
    now: float,
) -> tuple[Decision, Rise | None]:
    """The chain for a rig with a fresh, cool reading, no override and no thermal latch, whose
    policy asks to move it from ``hold`` to ``target`` with prices the stale guard lets through:
    only hysteresis and dwell can hold it here (then the decision's setting is ``hold``
    itself), and the ramp if it is a rise (then the Rise is returned too). The same arithmetic
    as hysteresis_guard, dwell_guard, is_raise and make_rise, reading the rig's points once;
    tests/test_guards.py checks it against the chain."""
    hold_point = target_point = None
    hold_mode, target_mode = hold.mode, target.mode
    for p in rig.points:
        if p.mode is hold_mode and hold_point is None:
            hold_point = p
        if p.mode is target_mode and target_point is None:
            target_point = p
    hold_w = _watts(hold, hold_point)
    target_w = _watts(target, target_point)
    hashprice = market.hashprice_usd_per_ph_day
    price = market.power_price_usd_per_kwh
    terms = config.economics
    target_margin: float | None = None
    if (
        hashprice is not None
        and price is not None
        and target_point is not None
        and target_mode is not Mode.LIMIT
    ):
        target_margin = revenue_usd_per_day(
            target_point.hashrate_ths, hashprice, terms
        ) - cost_per_day(target_point.power_w, price, terms)
    previous = prior.previous
    if (
        previous is not None
        and previous.mode is target_mode
        and previous.power_limit_w == target.power_limit_w
        and prior.changed_by not in GUARD_NAMES
        and target_margin is not None
        and hold_point is not None
        and hold_mode is not Mode.LIMIT
    ):
        assert hashprice is not None and price is not None
        gain = target_margin - (
            revenue_usd_per_day(hold_point.hashrate_ths, hashprice, terms)
            - cost_per_day(hold_point.power_w, price, terms)
        )
        band = config.hysteresis_usd_per_day
        if abs(gain) <= band:
            held = (hysteresis_text, (hold_mode, gain, band))
            return Decision(hold, HYSTERESIS, held, SOURCE_HOLD, held_back=True), None
    changed_at = prior.changed_at
    if changed_at is not None:
        elapsed = now - changed_at
        if elapsed < config.min_dwell_s:
            waits = (dwell_text, (elapsed, config.min_dwell_s))
            return Decision(hold, DWELL, waits, SOURCE_HOLD, held_back=True), None
    decision = Decision(target, intent.policy, intent._reason, SOURCE_POLICY)
    if hold_w is None:
        rising = target_mode not in FLOOR_MODES
    elif target_w is None:
        rising = True
    else:
        rising = target_w > hold_w + _EPS_W
    if not rising:
        return decision, None
    after_w = target_w
    if after_w is None:
        after_w = max([config.default_rig_power_w, *(p.power_w for p in rig.points)])
    kw = max(0.0, after_w - (hold_w or 0.0)) / 1000.0
    score = None
    if target_margin is not None and target_w:
        score = target_margin / (target_w / 1000.0)
    return decision, Rise(rig, hold, decision, kw, score)


def _watts(setting: Setting, point: ModePoint | None) -> float | None:
    # power_w(rig, setting), given the rig's point for the setting's mode
    mode = setting.mode
    if mode is Mode.OFF:
        return 0.0
    if mode is Mode.LIMIT:
        return None if setting.power_limit_w is None else float(setting.power_limit_w)
    if point is not None:
        return point.power_w
    return 0.0 if mode is Mode.SLEEP else None


def _desired(rig_id: RigId, decision: Decision) -> Desired:
    return Desired(
        rig_id=rig_id,
        mode=decision.setting.mode,
        power_limit_w=decision.setting.power_limit_w,
        reason=decision.reason,
        decided_by=decision.decided_by,
        held_back=decision.held_back,
        start_at=decision.start_at,
    )


def _next_rig_state(
    prior: RigGuardState | None, hold: Setting, decision: Decision, latch: Latch, now: float
) -> RigGuardState:
    """The rig's memory after this tick: a change is stamped with its time, origin and what it
    replaced; otherwise the last change is kept."""
    if decision.setting != hold:
        return RigGuardState(
            setting=decision.setting,
            changed_at=now,
            previous=hold,
            changed_by=decision.decided_by,
            thermal_cap=latch.cap,
            thermal_at=latch.at,
        )
    if (
        prior is not None
        and prior.setting == decision.setting
        and prior.thermal_cap is latch.cap
        and prior.thermal_at == latch.at
    ):
        return prior  # frozen, and equal to what would be built below
    return RigGuardState(
        setting=decision.setting,
        changed_at=None if prior is None else prior.changed_at,
        previous=None if prior is None else prior.previous,
        changed_by="" if prior is None else prior.changed_by,
        thermal_cap=latch.cap,
        thermal_at=latch.at,
    )
