"""Transitions are facts, not readings: how long a commanded rig takes to settle, and what the
change costs in hash.

A rig woken from sleep initialises its boards (drawing power, hashing nothing), then ramps its
frequency up to the new mode's; a step down takes seconds. While that happens its readings
describe the transition, not the mode it is going to: a booting S19j Pro measures 0 TH/s at
about 480 W. Deciding from those readings moves the rig again (and again). So, for as long as
its firmware is expected to take to settle after a change:

- the rig is scored on the figures of the mode it is going to (``daemon.rig_economics``);
- its policy intent is replaced by its current setting (:func:`hold_settling`): no policy
  command until it has settled. The guards still act on it (thermal protection, overrides).

The timing is :mod:`policies.timing`, the one model of firmware transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from policies.api import Intent, LazyReason, RigView
from policies.columns import MODE_CODES, NONE, FleetViews, IntentColumns
from policies.guards.model import RigGuardState
from policies.timing import Transition
from policies.values import Mode, RigId


def settling_until(memory: RigGuardState | None, timing: Transition) -> float | None:
    """Until when a rig whose guards remember ``memory`` is expected to be settling after its
    last change (None: it has not been changed, or nothing is known of where it came from)."""
    if memory is None or memory.changed_at is None or memory.previous is None:
        return None
    settle = timing.settle_s(memory.previous.mode, memory.setting.mode)
    return memory.changed_at + settle if settle > 0 else None


def settling_reason(memory: RigGuardState, until: float, now: float) -> str:
    return (
        f"settling: changed to {memory.setting.mode.value} {now - (memory.changed_at or now):.0f} "
        f"s ago, expected to settle in {until - now:.0f} s; no policy command until then"
    )


def hold_settling(
    intents: Mapping[RigId, Intent],
    fleet: Sequence[RigView],
    memory: Mapping[RigId, RigGuardState],
    timing: Callable[[RigId], Transition],
    now: float,
) -> Mapping[RigId, Intent]:
    """``intents`` with every settling rig's intent to change replaced by its current setting
    (same policy, the reason says why), so that no policy command reaches a rig in transition.
    Intents for other rigs, and for settling rigs that ask for their current setting, are kept
    as they are; so is the mapping itself when nothing is replaced."""
    held: dict[RigId, tuple[RigGuardState, float]] = {}
    for rig in fleet:
        mem = memory.get(rig.rig_id)
        if mem is None or mem.changed_at is None:
            continue
        until = settling_until(mem, timing(rig.rig_id))
        if until is None or now >= until:
            continue
        want = intents.get(rig.rig_id)
        if want is None:
            continue
        if want.mode is mem.setting.mode and (
            want.mode is not Mode.LIMIT or want.power_limit_w == mem.setting.power_limit_w
        ):
            continue
        held[rig.rig_id] = (mem, until)
    if not held:
        return intents
    if isinstance(intents, IntentColumns):
        return _hold_columns(intents, held, now)
    out = dict(intents)
    for rid, (mem, until) in held.items():
        want = intents[rid]
        setting = mem.setting
        if setting.mode is Mode.UNKNOWN:
            del out[rid]
            continue
        out[rid] = Intent(
            rid,
            setting.mode,
            settling_reason(mem, until, now),
            want.policy,
            setting.power_limit_w if setting.mode is Mode.LIMIT else None,
        )
    return out


def _hold_columns(
    intents: IntentColumns, held: Mapping[RigId, tuple[RigGuardState, float]], now: float
) -> IntentColumns:
    fleet: FleetViews = intents.fleet
    codes = intents.codes.copy()
    index = fleet.columns.index
    texts: dict[int, str] = {}
    for rid, (mem, until) in held.items():
        i = index[rid]
        mode = mem.setting.mode
        if mode in (Mode.LIMIT, Mode.UNKNOWN):
            codes[i] = NONE  # no column for it: no intent, the guards hold the rig where it is
            continue
        codes[i] = MODE_CODES[mode]
        texts[i] = settling_reason(mem, until, now)
    order = intents.order[codes[intents.order] != NONE]
    reason = intents.reason

    def why(i: int) -> str | LazyReason:
        text = texts.get(i)
        return text if text is not None else reason(i)

    return IntentColumns(fleet, codes, order, intents.policy, why)
