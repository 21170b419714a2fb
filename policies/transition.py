"""Transitions are facts, not readings: how long a commanded rig takes to settle, and what the
change costs in hash.

A rig woken from sleep initialises its boards (drawing power, hashing nothing), then ramps its
frequency up to the new mode's; a step down takes seconds. While that happens its readings
describe the transition, not the mode it is going to: a booting S19j Pro measures 0 TH/s at
about 480 W. Deciding from those readings moves the rig again (and again). So, for as long as
its firmware is expected to take to settle after a change:

- the rig is scored on the figures of the mode it is going to (``daemon.rig_economics``);
- its policy intent is replaced by its current setting (:func:`hold_transitions`): no policy
  command until it has settled. The guards still act on it (thermal protection, overrides).

And a change is a cost, not only a new margin: the hash lost while booting and ramping, and the
power booting boards draw. A policy's change is made only when its gain repays that within
:data:`PAYBACK_S` at the current prices (:func:`change_cost_usd`).

The timing is :mod:`policies.timing`, the one model of firmware transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from policies.api import Intent, MarketView, RigView
from policies.builtin import point_for
from policies.economics import Economics, ModePoint, cost_per_day, revenue_usd_per_day
from policies.guards.model import RigGuardState, Setting
from policies.timing import MODE_FREQ, Transition
from policies.values import Mode, RigId

SECONDS_PER_DAY: Final = 86400.0


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


PAYBACK_S: Final = 3600.0
"""A change must pay for itself within this long at the current prices: its gain in margin
over that time must cover its cost (the hash lost while booting and ramping, the power drawn
while booting). A step down costs nothing; a wake-up costs about 80 s of the new mode's margin
plus the boot's power, so a rig is not woken for a gain that an hour would not repay."""


def change_cost_usd(
    timing: Transition,
    before: Mode,
    rig: RigView,
    target: ModePoint,
    hashprice_usd_per_ph_day: float,
    price_per_kwh: float,
    terms: Economics,
) -> float:
    """What a change from ``before`` to ``target`` costs beyond running in ``target`` at once:
    the hash lost while getting there (at ``target``'s margin) and, on a wake-up, the power the
    booting boards draw (a share of the rig's normal power, else of ``target``'s), for a cold
    boot's length when it wakes from ``off``."""
    lost_s = timing.lost_hash_s(before, target.mode)
    if lost_s <= 0:
        return 0.0
    margin = revenue_usd_per_day(
        target.hashrate_ths, hashprice_usd_per_ph_day, terms
    ) - cost_per_day(target.power_w, price_per_kwh, terms)
    cost = lost_s * max(0.0, margin) / SECONDS_PER_DAY
    if not MODE_FREQ.get(before):  # waking: the boards boot first, drawing power
        normal = point_for(rig, Mode.NORMAL)
        nameplate_w = normal.power_w if normal is not None else target.power_w
        boot_w = timing.boot_power_share * nameplate_w
        boot_per_day = max(0.0, cost_per_day(boot_w, price_per_kwh, terms))
        cost += timing.boot_from(before) * boot_per_day / SECONDS_PER_DAY
    return cost


def hold_transitions(
    intents: Mapping[RigId, Intent],
    fleet: Sequence[RigView],
    memory: Mapping[RigId, RigGuardState],
    timing: Callable[[RigId], Transition],
    market: MarketView,
    terms: Economics,
    now: float,
) -> Mapping[RigId, Intent]:
    """``intents``, with the intent to change of every rig that must not be changed now
    replaced by its current setting (same policy; the reason says why):

    - a rig in transition (:func:`settling_until`): no policy command reaches it until it has
      settled;
    - a change that would not pay for itself within :data:`PAYBACK_S` at the current prices
      (:func:`change_cost_usd`).

    Intents for other rigs are kept as they are; so is the mapping itself when nothing is
    replaced. The guards, after this, still act on every rig (thermal, overrides)."""
    hp, pp = market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh
    held: dict[RigId, tuple[Setting, str]] = {}
    limit_mode = Mode.LIMIT
    # Rigs that share their memory, points and timing (the same objects: the backtest's copies
    # of one cohort) and want the same get the same answer: worked out once per call. Keyed by
    # identity; each entry keeps its timing object alive so that no id is reused meanwhile
    # (the memory and the points are kept alive by the arguments).
    known: dict[
        tuple[int, int, int, Mode, int | None], tuple[Transition, tuple[Setting, str] | None]
    ] = {}
    for rig in fleet:
        rid = rig.rig_id
        mem = memory.get(rid)
        if mem is None:
            continue
        want = intents.get(rid)
        if want is None:
            continue
        mode, limit = want.mode, want.power_limit_w
        setting = mem.setting
        if mode is setting.mode and (mode is not limit_mode or limit == setting.power_limit_w):
            continue
        rig_timing = timing(rid)
        key = (id(mem), id(rig.points), id(rig_timing), mode, limit)
        seen = known.get(key)
        if seen is not None:
            answer = seen[1]
        else:
            answer = _hold(rig, mem, mode, rig_timing, hp, pp, terms, now)
            known[key] = (rig_timing, answer)
        if answer is not None:
            held[rid] = answer
    if not held:
        return intents
    out = dict(intents)
    for rid, (setting, reason) in held.items():
        if setting.mode is Mode.UNKNOWN:
            del out[rid]
            continue
        out[rid] = Intent(
            rid,
            setting.mode,
            reason,
            intents[rid].policy,
            setting.power_limit_w if setting.mode is Mode.LIMIT else None,
        )
    return out


def _hold(
    rig: RigView,
    mem: RigGuardState,
    mode: Mode,
    rig_timing: Transition,
    hp: float | None,
    pp: float | None,
    terms: Economics,
    now: float,
) -> tuple[Setting, str] | None:
    """(the setting to keep, why) when a change of ``rig`` to ``mode`` must wait: it is
    settling, or the change would not pay for itself; None when it may be made."""
    setting = mem.setting
    until = settling_until(mem, rig_timing)
    if until is not None and now < until:
        return setting, settling_reason(mem, until, now)
    if hp is None or pp is None or Mode.LIMIT in (mode, setting.mode):
        return None
    here, there = point_for(rig, setting.mode), point_for(rig, mode)
    if here is None or there is None:
        return None
    cost = change_cost_usd(rig_timing, setting.mode, rig, there, hp, pp, terms)
    if cost <= 0:
        return None
    gain = _margin(there, hp, pp, terms) - _margin(here, hp, pp, terms)
    if gain * PAYBACK_S / SECONDS_PER_DAY < cost:
        return (
            setting,
            f"{mode.value} would earn ${gain:.2f}/day more than {setting.mode.value}, which "
            f"does not repay the change (${cost:.4f}: hash lost while booting and ramping) "
            f"within {PAYBACK_S / 3600:g} h",
        )
    return None


def _margin(point: ModePoint, hp: float, pp: float, terms: Economics) -> float:
    return revenue_usd_per_day(point.hashrate_ths, hp, terms) - cost_per_day(
        point.power_w, pp, terms
    )
