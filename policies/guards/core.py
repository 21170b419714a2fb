"""``apply_guards``: every guard, in order, over the whole fleet for one tick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.api import Intent, MarketView, RigView
from policies.guards.model import Desired, GuardConfig, GuardState, Override, RigGuardState, Setting
from policies.guards.power import is_raise
from policies.guards.ramp import Rise, apply_ramp, make_rise
from policies.guards.rig import Decision, Latch, decide_rig, intents_for
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
    _check_unique(fleet)
    per_rig: dict[RigId, tuple[RigView, Setting, Decision, Latch]] = {}
    rises: list[Rise] = []
    for rig in fleet:
        prior = state.rigs.get(rig.rig_id)
        intent = intents_for(intents, rig)
        hold, decision, latch = decide_rig(rig, intent, overrides, prior, market, config, now)
        per_rig[rig.rig_id] = (rig, hold, decision, latch)
        if is_raise(rig, hold, decision.setting):
            rises.append(make_rise(rig, hold, decision, market, config))
    ramped, ramp_log = apply_ramp(rises, state.ramp_log, config, seed, now)
    desired: dict[RigId, Desired] = {}
    rigs: dict[RigId, RigGuardState] = dict(state.rigs)
    for rid, (_rig, hold, decision, latch) in per_rig.items():
        final = ramped.get(rid, decision)
        desired[rid] = _desired(rid, final)
        rigs[rid] = _next_rig_state(state.rigs.get(rid), hold, final, latch, now)
    return desired, GuardState(rigs=rigs, ramp_log=ramp_log)


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
