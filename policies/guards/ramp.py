"""The power-up ramp: the whole site's rises share a kW-per-minute and a rigs-per-second budget.

Rigs per second: power-ups start at least ``1/ramp_rigs_per_s`` apart. One call (one tick)
schedules starts in slots from ``now`` (or one spacing after the last start already granted, if
that is later) up to ``now + ramp_horizon_s``; a grant later than ``now`` carries its slot as
``start_at``, and the shell sends that command no earlier. kW per minute: the kW of the grants
in the last 60 s (slots already scheduled ahead included) never exceed ``ramp_kw_per_min``,
except one rig alone, larger than the whole budget, which may start once nothing else has gone
up for a minute. Both budgets are kept over the grants remembered in ``GuardState.ramp_log``.
Going down is never ramped.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Callable, Sequence
from typing import Final

from policies.api import MarketView, RigView
from policies.guards.model import (
    OVERRIDE,
    RAMP,
    RAMP_KW_WINDOW_S,
    GuardConfig,
    GuardState,
    RampGrant,
    Setting,
)
from policies.guards.power import is_raise, margin_usd_per_day, power_up_kw, power_w
from policies.guards.rig import SOURCE_HOLD, SOURCE_OVERRIDE, SOURCE_POLICY, Decision
from policies.values import Mode, RigId

_EPS_KW = 1e-9
_RIG_KEY: Final = b"rigpilot.ramp.u"
_SHIFT_KEY: Final = b"rigpilot.ramp.v"
JITTER_SPAN: Final = 1 << 53
"""The draws of :func:`rig_draws` and :func:`jitter_shift` are integers in [0, JITTER_SPAN)."""
_MASK: Final = JITTER_SPAN - 1
_TO_UNIT: Final = 2.0**-53
JITTER_ORDER_S: Final = 3600.0
"""How long each rig's own draw lasts: the jitter draws the rigs' order anew every hour."""


class Rise:
    """A rig whose decision would raise its power: what it costs the budget, and its rank."""

    __slots__ = ("decision", "hold", "kw", "rig", "score")

    def __init__(
        self, rig: RigView, hold: Setting, decision: Decision, kw: float, score: float | None
    ) -> None:
        self.rig: Final = rig
        self.hold: Final = hold
        self.decision: Final = decision
        self.kw: Final = kw
        self.score: Final = score  # margin per kW of the new setting, USD/kW/day; None: unknown


def make_rise(
    rig: RigView, hold: Setting, decision: Decision, market: MarketView, config: GuardConfig
) -> Rise:
    """The ramp's view of one rising rig."""
    kw = power_up_kw(rig, hold, decision.setting, config.default_rig_power_w)
    margin = margin_usd_per_day(rig, decision.setting, market, config.economics)
    watts = power_w(rig, decision.setting)
    score = None if margin is None or not watts else margin / (watts / 1000.0)
    return Rise(rig, hold, decision, kw, score)


def jitter_hour(now: float) -> int:
    """The hour (of the epoch, UTC) whose order of the rigs :func:`jitter` rotates at ``now``."""
    return math.floor(now / JITTER_ORDER_S)


def rig_draws(seed: int, hour: int) -> Callable[[RigId], int]:
    """u: each rig's own draw for ``hour`` (see :func:`jitter_hour`), a 53-bit integer, a keyed
    hash (BLAKE2b) of ``seed``, the hour and the rig id alone."""
    copy, known = _hour_draws(seed, hour)
    from_bytes = int.from_bytes

    def draw(rig_id: RigId) -> int:
        own = known.get(rig_id)
        if own is None:
            h = copy()
            h.update(rig_id.encode())
            own = known[rig_id] = from_bytes(h.digest(), "big") >> 11
        return own

    return draw


@functools.lru_cache(maxsize=2, typed=True)
def _hour_draws(seed: int, hour: int) -> tuple[Callable[[], hashlib.blake2b], dict[RigId, int]]:
    """(a new keyed BLAKE2b hash of (``seed``, ``hour``) each call, for a rig id to finish; the
    rigs' own draws made so far): the keyed start and the draws kept for the hour and the one
    before, a rig's draw being a function of (seed, hour, rig id) alone (the ramp draws the
    rigs it orders at every tick; copying the start leaves it as it is)."""
    start = hashlib.blake2b(f"{seed}:{hour}:".encode(), digest_size=8, person=_RIG_KEY)
    return start.copy, {}


def jitter_shift(seed: int, now: float) -> int:
    """v: the tick's one draw, a 53-bit integer, a keyed hash (BLAKE2b) of ``seed`` and
    ``now``."""
    return _shift(f"{seed}:{now!r}".encode())


@functools.lru_cache(maxsize=8)
def _shift(message: bytes) -> int:
    """:func:`jitter_shift` of its message (kept: a tick's guard step may draw it twice)."""
    h = hashlib.blake2b(message, digest_size=8, person=_SHIFT_KEY)
    return int.from_bytes(h.digest(), "big") >> 11


def jitter(seed: int, now: float) -> Callable[[RigId], float]:
    """The ramp's near-tie jitter at ``now``: each rig's draw in [0, 1), its own draw for the
    hour (:func:`rig_draws`) shifted by the tick's draw (:func:`jitter_shift`), modulo 1
    (exactly: in 53-bit integers). A function of ``seed``, ``now`` and the rig id alone, so a
    rig's draw does not depend on which other rigs are rising; within an hour the order of
    the rigs by their draws is a rotation of the hour's order by their own draws (a cohort of
    identical rigs keeps its members in that order and finds the first ones by bisection:
    ``backtest/cohorts.py``); each hour draws a new order, so over many hours each rig of a
    near-tie comes first about equally often."""
    own = rig_draws(seed, jitter_hour(now))
    shift = jitter_shift(seed, now)

    def draw(rig_id: RigId) -> float:
        return ((own(rig_id) + shift) & _MASK) * _TO_UNIT

    return draw


def order_rises(rises: Sequence[Rise], config: GuardConfig, seed: int, now: float) -> list[Rise]:
    """Overrides first, then the most margin per kW; scores within the same
    ``ramp_tie_usd_per_kw_day`` step are near-ties, ordered by each rig's :func:`jitter`
    (then by rig id)."""
    if len(rises) < 2:  # nothing to order (most ticks: no jitter drawn)
        return list(rises)
    draw = jitter(seed, now)
    return sorted(rises, key=lambda r: (*rise_head(r, config), draw(r.rig.rig_id), r.rig.rig_id))


def rise_head(rise: Rise, config: GuardConfig) -> tuple[int, int, float]:
    """The order's key before the jitter: (override first, known score first, score step)."""
    return (
        0 if rise.decision.source == SOURCE_OVERRIDE else 1,
        0 if rise.score is not None else 1,
        0.0 if rise.score is None else -math.floor(rise.score / config.ramp_tie_usd_per_kw_day),
    )


def first_rises(
    rises: Sequence[Rise], count: int, config: GuardConfig, seed: int, now: float
) -> list[Rise]:
    """``order_rises(rises, ...)[:count]``, without sorting (or drawing jitter for) every rise.

    The ramp stops at its first misfit, so a tick looks at no more than the rigs budget plus
    one: with thousands of rises waiting, only those that can reach the front need a full key.
    Those are the rises whose (override, known score, score step) is at most the
    ``count``-th smallest; each rig's jitter is its own draw, as in :func:`order_rises`.
    """
    if count <= 0:
        return []
    if count >= len(rises):
        return order_rises(rises, config, seed, now)
    heads = [rise_head(r, config) for r in rises]
    threshold = heapq.nsmallest(count, heads)[-1]
    front = [(h, r) for h, r in zip(heads, rises, strict=True) if h <= threshold]
    draw = jitter(seed, now)
    front.sort(key=lambda hr: (*hr[0], draw(hr[1].rig.rig_id), hr[1].rig.rig_id))
    return [r for _, r in front[:count]]


def prune_log(log: Sequence[RampGrant], now: float, config: GuardConfig) -> tuple[RampGrant, ...]:
    """The grants still inside a window at ``now`` (later ones too: slots scheduled ahead, or a
    clock that stepped back)."""
    keep_s = max(RAMP_KW_WINDOW_S, config.ramp_spacing_s)
    return tuple(g for g in log if g.at > now - keep_s)


def start_slots(log: Sequence[RampGrant], config: GuardConfig, now: float) -> tuple[float, int]:
    """(the first free start slot, how many slots this call may fill): slots are
    ``ramp_spacing_s`` apart, from ``now`` or one spacing after the last start granted,
    and before ``now + ramp_horizon_s``."""
    spacing = config.ramp_spacing_s
    first = now
    if log:
        first = max(now, max(g.at for g in log) + spacing)
    room = now + config.ramp_horizon_s - first
    return first, max(0, math.ceil(room / spacing - 1e-9))


def kw_budget(kept: Sequence[RampGrant], config: GuardConfig, now: float) -> tuple[float, bool]:
    """(kW the per-minute budget has left at ``now``, whether nothing has gone up in the last
    minute), from the grants still remembered (:func:`prune_log`)."""
    in_minute = [g.kw for g in kept if g.at > now - RAMP_KW_WINDOW_S]
    return config.ramp_kw_per_min - sum(in_minute), not in_minute


def apply_ramp(
    rises: Sequence[Rise], log: Sequence[RampGrant], config: GuardConfig, seed: int, now: float
) -> tuple[dict[str, Decision], tuple[RampGrant, ...]]:
    """Grant rises in order, each the next start slot, while both budgets last; the first that
    does not fit and all after it stay at their hold setting this tick (``held_back``).
    Returns (decision per rig, new log)."""
    kept = prune_log(log, now, config)
    kw_left, quiet_minute = kw_budget(kept, config, now)
    slot, slots_left = start_slots(kept, config, now)
    spacing = config.ramp_spacing_s
    out: dict[str, Decision] = {}
    grants: list[RampGrant] = []
    blocked = False
    # Every grant takes a slot, so the rises past the first slots_left + 1 are held whatever
    # their order: only that many need ordering.
    ahead = first_rises(rises, slots_left + 1, config, seed, now)
    ordered = {r.rig.rig_id for r in ahead}
    for rise in ahead:
        alone = quiet_minute and not grants
        fits = rise.kw <= kw_left + _EPS_KW or alone
        if not blocked and slots_left >= 1 and fits:
            at = slot + len(grants) * spacing
            out[rise.rig.rig_id] = _at(rise.decision, at) if at > now else rise.decision
            grants.append(RampGrant(at, rise.rig.rig_id, rise.kw))
            kw_left -= rise.kw
            slots_left -= 1
            continue
        blocked = True
        out[rise.rig.rig_id] = ramp_held(rise, kw_left, slots_left)
    for rise in rises:
        if rise.rig.rig_id not in ordered:
            out[rise.rig.rig_id] = ramp_held(rise, kw_left, slots_left)
    return out, kept + tuple(grants)


def _at(decision: Decision, at: float) -> Decision:
    """``decision``, to start at ``at``."""
    return Decision(
        decision.setting,
        decision.decided_by,
        decision.reason,
        decision.source,
        decision.held_back,
        decision.bypass_dwell,
        start_at=at,
    )


def ramp_held(rise: Rise, kw_left: float, slots_left: int) -> Decision:
    why = (rise.decision.setting.mode, rise.kw, rise.decision.decided_by, kw_left, slots_left)
    return Decision(rise.hold, RAMP, (ramp_text, why), SOURCE_HOLD, held_back=True)


def ramp_text(args: tuple[Mode, float, str, float, int]) -> str:
    """The ramp's reason for a postponed rise, from (mode wanted, its kW, who asked, kW left,
    start slots left)."""
    mode, kw, asked_by, kw_left, slots_left = args
    return (
        f"power-up to {mode.value} (+{kw:.2f} kW, "
        f"asked by {asked_by}) postponed by the ramp limit: "
        f"{max(kw_left, 0.0):.2f} kW left in the minute and {max(slots_left, 0)} start slots "
        "left this tick"
    )


def new_grants(before: GuardState, after: GuardState) -> frozenset[str]:
    """The rigs ``apply_guards`` granted a power-up in the call that took ``before`` to
    ``after``: the grants in ``after``'s log that were not in ``before``'s (compared as values,
    after the same shift the call applies when the clock stepped back)."""
    if after.as_of is not None and before.as_of is not None and after.as_of < before.as_of:
        before = before.shifted(after.as_of - before.as_of)
    earlier = set(before.ramp_log)
    return frozenset(g.rig_id for g in after.ramp_log if g not in earlier)


class Send:
    """A command the shell is about to send to a rig the guards did not ramp this tick (a
    retry, or a rig that fell below its desired setting by itself): what it asks for, from
    what the rig was last seen doing."""

    __slots__ = ("decided_by", "observed", "rig", "target")

    def __init__(self, rig: RigView, observed: Setting, target: Setting, decided_by: str) -> None:
        self.rig: Final = rig
        self.observed: Final = observed
        self.target: Final = target
        self.decided_by: Final = decided_by


def ramp_sends(
    sends: Sequence[Send],
    log: Sequence[RampGrant],
    market: MarketView,
    config: GuardConfig,
    seed: int,
    now: float,
) -> tuple[dict[str, float | None], tuple[RampGrant, ...]]:
    """The same ramp, for power-ups the guards did not grant: a resend after a failed or
    unconfirmed power-up, or a rig seen below its desired setting without any command. Each
    one that raises power (from what was observed) takes a start slot and kW from what the
    budgets have left after this tick's grants (pass the guards' new ``ramp_log``), in the
    guards' order; the first misfit and all after it wait for a later tick. Sends that do not
    raise power always go.

    Returns ({rig id: start time, None for now} of the sends that may go this tick, new log):
    a send not in the result is postponed.
    """
    out: dict[str, float | None] = {}
    rises: list[Rise] = []
    for send in sends:
        rig = send.rig
        if not is_raise(rig, send.observed, send.target):
            out[rig.rig_id] = None
            continue
        source = SOURCE_OVERRIDE if send.decided_by == OVERRIDE else SOURCE_POLICY
        decision = Decision(send.target, send.decided_by, "", source)
        rises.append(make_rise(rig, send.observed, decision, market, config))
    if not rises:
        return out, tuple(log)
    ramped, new_log = apply_ramp(rises, log, config, seed, now)
    for rig_id, decision in ramped.items():
        if not decision.held_back:
            out[rig_id] = decision.start_at
    return out, new_log
