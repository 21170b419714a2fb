"""``apply_guards``: every guard, in order, over the whole fleet for one tick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.api import Intent, MarketView, RigView
from policies.guards.model import (
    NO_INTENT,
    Desired,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
)
from policies.guards.power import is_raise
from policies.guards.ramp import Rise, apply_ramp, make_rise
from policies.guards.rig import (
    NO_INTENT_REASON,
    SOURCE_POLICY,
    Decision,
    Latch,
    decide_rig,
    dwell_guard,
    hysteresis_guard,
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
) -> tuple[dict[RigId, Desired], GuardState]:
    """Turn policy intents into the desired setting of every rig in ``fleet``.

    Promises (docs/guards.md): thermal protection outranks overrides and policies that would
    raise power; no rig changes more often than ``min_dwell_s`` except by thermal protection or
    a dwell-bypassing override; power-ups across the site stay within the ramp budget; a stale
    price never lets a policy drive a change (the fail-safe applies instead); a rig without a
    fresh observation is only moved by an override lowering its power. Pure and deterministic:
    same arguments, same result; nothing passed in is modified. Raises ValueError when two
    rigs in ``fleet`` share an id.
    """
    # Most rigs, most ticks, are where the guards left them and no guard has anything to say:
    # for those (no override, a hold setting, not hot or latched, and either no intent or one
    # asking for the hold setting with usable prices) every guard keeps the decision, and the
    # rig's memory is its prior one, unchanged. They are answered without running the chain;
    # tests/test_guards.py checks this gives what the chain gives. A cool, freshly read rig
    # asked to change can only be stopped by hysteresis, dwell or the ramp, so only those run.
    # Everything else goes through decide_rig.
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
        if (
            prior is not None
            and prior.thermal_cap is None
            and prior.setting.mode is not unknown
            and (rid not in named_ids and rig.group not in named_groups)
        ):
            hold = prior.setting
            obs = rig.observation
            if obs is not None and now - obs.observed_at > ttl_s:
                obs = None
            temp = obs.max_chip_temp_c if obs is not None else None
            if temp is None or temp < limit_c:
                if intent is None:
                    desired[rid] = Desired(
                        rid, hold.mode, hold.power_limit_w, NO_INTENT_REASON, NO_INTENT
                    )
                    continue
                if prices_fresh or intent.policy in exempt:
                    mode = intent.mode
                    limit_w = intent.power_limit_w if mode is limit_mode else None
                    if mode is hold.mode and limit_w == hold.power_limit_w:
                        desired[rid] = Desired(rid, mode, limit_w, intent._reason, intent.policy)
                        continue
                    if temp is not None:
                        decision = Decision(
                            Setting(mode, limit_w), intent.policy, intent._reason, SOURCE_POLICY
                        )
                        decision = hysteresis_guard(decision, rig, hold, prior, market, config)
                        decision = dwell_guard(decision, hold, prior, now, config)
                        desired[rid] = _PENDING
                        moved.append((rig, prior, hold, decision, None, prior.thermal_at))
                        if is_raise(rig, hold, decision.setting):
                            rises.append(make_rise(rig, hold, decision, market, config))
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
    return desired, GuardState(rigs=rigs, ramp_log=ramp_log)


_PENDING = Desired("", Mode.UNKNOWN, None, "", "")  # keeps the fleet's order in ``desired``


def _check_unique(fleet: Sequence[RigView]) -> None:
    seen: set[RigId] = set()
    for rig in fleet:
        if rig.rig_id in seen:
            raise ValueError(f"rig {rig.rig_id!r} appears twice in the fleet")
        seen.add(rig.rig_id)


def _desired(rig_id: RigId, decision: Decision) -> Desired:
    return Desired(
        rig_id=rig_id,
        mode=decision.setting.mode,
        power_limit_w=decision.setting.power_limit_w,
        reason=decision.reason,
        decided_by=decision.decided_by,
        held_back=decision.held_back,
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
