"""``apply_guards``: every guard, in order, over the whole fleet for one tick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.api import Intent, MarketView, RigView
from policies.guards.model import (
    Desired,
    GuardConfig,
    GuardState,
    Override,
    RigGuardState,
    Setting,
)
from policies.guards.power import is_raise
from policies.guards.ramp import Rise, apply_ramp, make_rise
from policies.guards.rig import Decision, Latch, decide_rig
from policies.values import RigId


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

    Every rig goes through the one per-rig chain (:func:`policies.guards.rig.decide_rig`),
    then every rise through the one ramp (:func:`policies.guards.ramp.apply_ramp`): there is
    no other path.
    """
    if state.as_of is not None and now < state.as_of:  # the clock stepped back
        state = state.shifted(now - state.as_of)
    _refuse_duplicates(fleet)
    live = [o for o in overrides if o.active(now)]  # the same list for every rig of the tick
    prior_rigs = state.rigs
    decided: list[tuple[RigId, RigGuardState | None, Setting, Decision, Latch]] = []
    rises: list[Rise] = []
    # Without overrides the chain reads a rig's observation, points and modes, its memory and
    # its intent, never its id: a rig that shares those with the rig before it (the same
    # objects: the backtest's copies of one cohort, listed together) gets the same answer.
    last: RigView | None = None
    last_intent: Intent | None = None
    last_prior: RigGuardState | None = None
    last_answer: tuple[Setting, Decision, Latch] | None = None
    last_rise: Rise | None = None
    copies = False  # a rig got the answer of the one before
    for rig in fleet:
        rid = rig.rig_id
        prior = prior_rigs.get(rid)
        intent = intents.get(rid)
        if intent is not None and intent.rig_id != rid:
            intent = None  # filed under another rig's id: ignored, as intents_for() does
        if (
            last_answer is not None
            and last is not None
            and last.observation is rig.observation
            and prior is last_prior
            and last.points is rig.points
            and last.modes is rig.modes
            and _same_intent(intent, last_intent)
        ):
            hold, decision, latch = last_answer
            copies = True
            if last_rise is not None:
                rises.append(Rise(rig, hold, decision, last_rise.kw, last_rise.score))
        else:
            answer = decide_rig(rig, intent, live, prior, market, config, now)
            hold, decision, latch = answer
            last_rise = None
            if is_raise(rig, hold, decision.setting):
                last_rise = make_rise(rig, hold, decision, market, config)
                rises.append(last_rise)
            if not live:
                last, last_intent, last_prior, last_answer = rig, intent, prior, answer
        decided.append((rid, prior, hold, decision, latch))
    ramped, ramp_log = apply_ramp(rises, state.ramp_log, config, seed, now)
    desired, rigs = _settle(decided, ramped, prior_rigs, now, copies)
    return desired, GuardState(rigs=rigs, ramp_log=ramp_log, as_of=now)


def _settle(
    decided: Sequence[tuple[RigId, RigGuardState | None, Setting, Decision, Latch]],
    ramped: Mapping[RigId, Decision],
    prior_rigs: Mapping[RigId, RigGuardState],
    now: float,
    copies: bool,
) -> tuple[dict[RigId, Desired], dict[RigId, RigGuardState]]:
    """Each rig's desired state (its decision, or the ramp's where it ruled on it) and every
    rig's memory after the tick (:func:`next_rig_state`). ``copies``: some rig got the answer
    of the rig before it (then they share the memory made for the first, where the ramp
    treated them alike too)."""
    rigs: dict[RigId, RigGuardState] = dict(prior_rigs)
    desired: dict[RigId, Desired] = {}
    # The memory is a function of (prior, hold, the final setting and who decided it, latch):
    # rigs answered alike (the same objects) share the one made for the first of them. Kept
    # only with copies: a fleet of distinct rigs pays one test per rig.
    made_latch: Latch | None = None
    made_prior: RigGuardState | None = None
    made_hold: Setting | None = None
    made_setting: Setting | None = None
    made_by = ""
    made_memory: RigGuardState | None = None  # none made yet
    for rid, prior, hold, decision, latch in decided:
        final = ramped.get(rid, decision) if ramped else decision
        setting = final.setting
        desired[rid] = Desired(
            rid,
            setting.mode,
            setting.power_limit_w,
            final.reason,
            final.decided_by,
            final.held_back,
            final.start_at,
        )
        if (
            copies
            and made_memory is not None
            and made_prior is prior
            and made_latch is latch
            and made_setting is setting
            and made_hold is hold
            and made_by == final.decided_by
        ):
            memory = made_memory
        else:
            memory = next_rig_state(prior, hold, final, latch, now)
            if copies:
                made_prior, made_latch, made_setting, made_hold = prior, latch, setting, hold
                made_by, made_memory = final.decided_by, memory
        if memory is not prior:
            rigs[rid] = memory
    return desired, rigs


def _same_intent(a: Intent | None, b: Intent | None) -> bool:
    """Intents the chain answers alike: for the same setting from the same policy with the
    same reason (the same object), or both none."""
    if a is None or b is None:
        return a is b
    return (
        a.mode is b.mode
        and a.power_limit_w == b.power_limit_w
        and a.policy == b.policy
        and a._reason is b._reason
    )


def _refuse_duplicates(fleet: Sequence[RigView]) -> None:
    """ValueError naming the first rig id that appears twice in ``fleet``."""
    ids = [rig.rig_id for rig in fleet]
    if len(set(ids)) == len(ids):
        return
    seen: set[RigId] = set()
    for rid in ids:
        if rid in seen:
            raise ValueError(f"rig {rid!r} appears twice in the fleet")
        seen.add(rid)


def next_rig_state(
    prior: RigGuardState | None, hold: Setting, decision: Decision, latch: Latch, now: float
) -> RigGuardState:
    """The rig's memory after this tick: a change is stamped with its time, origin and what it
    replaced; otherwise the last change is kept."""
    setting = decision.setting
    if setting is not hold and setting != hold:  # plain settings are shared: identity first
        return RigGuardState(
            setting=decision.setting,
            changed_at=now,
            previous=hold,
            changed_by=decision.decided_by,
            thermal_cap=latch.cap,
            thermal_at=latch.at,
            critical_since=latch.critical_since,
        )
    if (
        prior is not None
        and (prior.setting is setting or prior.setting == setting)
        and prior.thermal_cap is latch.cap
        and prior.thermal_at == latch.at
        and prior.critical_since == latch.critical_since
    ):
        return prior  # frozen, and equal to what would be built below
    return RigGuardState(
        setting=decision.setting,
        changed_at=None if prior is None else prior.changed_at,
        previous=None if prior is None else prior.previous,
        changed_by="" if prior is None else prior.changed_by,
        thermal_cap=latch.cap,
        thermal_at=latch.at,
        critical_since=latch.critical_since,
    )
