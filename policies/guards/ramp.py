"""The power-up ramp: the whole site's rises share a kW-per-minute and a rigs-per-second budget.

Both are sliding windows over the grants remembered in ``GuardState.ramp_log``: the kW granted in
any 60 s never exceed ``ramp_kw_per_min`` (except one rig alone, larger than the whole budget,
which may start once nothing else has gone up for a minute), and the rigs granted in any
``ramp_rigs_window_s`` never exceed ``ramp_rigs_per_window``. Going down is never ramped.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Sequence
from typing import Final

from policies.api import MarketView, RigView
from policies.guards.model import RAMP, RAMP_KW_WINDOW_S, GuardConfig, RampGrant, Setting
from policies.guards.power import margin_usd_per_day, power_up_kw, power_w
from policies.guards.rig import SOURCE_HOLD, SOURCE_OVERRIDE, Decision
from policies.values import Mode

_EPS_KW = 1e-9


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


def order_rises(rises: Sequence[Rise], config: GuardConfig, seed: int, now: float) -> list[Rise]:
    """Overrides first, then the most margin per kW; scores within the same
    ``ramp_tie_usd_per_kw_day`` step are near-ties, ordered by a jitter drawn from ``seed``."""
    rng = random.Random(f"rigpilot.guards.ramp:{seed}:{now!r}")
    jitter = {r.rig.rig_id: rng.random() for r in sorted(rises, key=lambda r: r.rig.rig_id)}

    def key(rise: Rise) -> tuple[int, int, float, float, str]:
        bucket = 0.0
        if rise.score is not None:
            bucket = -math.floor(rise.score / config.ramp_tie_usd_per_kw_day)
        return (
            0 if rise.decision.source == SOURCE_OVERRIDE else 1,
            0 if rise.score is not None else 1,
            bucket,
            jitter[rise.rig.rig_id],
            rise.rig.rig_id,
        )

    return sorted(rises, key=key)


def first_rises(
    rises: Sequence[Rise], count: int, config: GuardConfig, seed: int, now: float
) -> list[Rise]:
    """``order_rises(rises, ...)[:count]``, without sorting (or drawing jitter for) every rise.

    The ramp stops at its first misfit, so a tick looks at no more than the rigs budget plus
    one: with thousands of rises waiting, only those that can reach the front need a full key.
    Those are the rises whose (override, known score, bucket) is at most the ``count``-th
    smallest; each one's jitter is the draw at its rank among all rises by rig id, as in
    :func:`order_rises`.
    """
    if count <= 0:
        return []
    if count >= len(rises):
        return order_rises(rises, config, seed, now)
    tie = config.ramp_tie_usd_per_kw_day
    heads = [
        (
            0 if r.decision.source == SOURCE_OVERRIDE else 1,
            0 if r.score is not None else 1,
            0.0 if r.score is None else -math.floor(r.score / tie),
        )
        for r in rises
    ]
    threshold = heapq.nsmallest(count, heads)[-1]
    front = [(h, r) for h, r in zip(heads, rises, strict=True) if h <= threshold]
    if 2 * len(front) > len(rises):
        return order_rises(rises, config, seed, now)[:count]
    ids = sorted(r.rig.rig_id for _, r in front)
    below = [0] * (len(ids) + 1)  # below[j]: rises with ids[j-1] <= id < ids[j]
    for rise in rises:
        below[bisect.bisect_right(ids, rise.rig.rig_id)] += 1
    rank, seen = {}, 0
    for j, rig_id in enumerate(ids):
        seen += below[j]
        rank[rig_id] = seen  # how many rises have a smaller id
    rng = random.Random(f"rigpilot.guards.ramp:{seed}:{now!r}")
    draws = [rng.random() for _ in range(max(rank.values()) + 1)]
    front.sort(key=lambda hr: (*hr[0], draws[rank[hr[1].rig.rig_id]], hr[1].rig.rig_id))
    return [r for _, r in front[:count]]


def prune_log(log: Sequence[RampGrant], now: float, config: GuardConfig) -> tuple[RampGrant, ...]:
    """The grants still inside a window at ``now`` (later ones too, should the clock step back)."""
    keep_s = max(RAMP_KW_WINDOW_S, config.ramp_rigs_window_s)
    return tuple(g for g in log if g.at > now - keep_s)


def apply_ramp(
    rises: Sequence[Rise], log: Sequence[RampGrant], config: GuardConfig, seed: int, now: float
) -> tuple[dict[str, Decision], tuple[RampGrant, ...]]:
    """Grant rises in order while both budgets last; the first that does not fit and all after
    it stay at their hold setting this tick (``held_back``). Returns (decision per rig, new log)."""
    kept = prune_log(log, now, config)
    in_minute = [g for g in kept if g.at > now - RAMP_KW_WINDOW_S]
    kw_left = config.ramp_kw_per_min - sum(g.kw for g in in_minute)
    rigs_left = config.ramp_rigs_per_window - sum(
        1 for g in kept if g.at > now - config.ramp_rigs_window_s
    )
    quiet_minute = not in_minute
    out: dict[str, Decision] = {}
    grants: list[RampGrant] = []
    blocked = False
    # Every grant takes one of rigs_left, so the rises past the first rigs_left + 1 are held
    # whatever their order: only that many need ordering.
    ahead = first_rises(rises, max(rigs_left, 0) + 1, config, seed, now)
    ordered = {r.rig.rig_id for r in ahead}
    for rise in ahead:
        alone = quiet_minute and not grants
        fits = rise.kw <= kw_left + _EPS_KW or alone
        if not blocked and rigs_left >= 1 and fits:
            out[rise.rig.rig_id] = rise.decision
            grants.append(RampGrant(now, rise.rig.rig_id, rise.kw))
            kw_left -= rise.kw
            rigs_left -= 1
            continue
        blocked = True
        out[rise.rig.rig_id] = _held(rise, kw_left, rigs_left)
    for rise in rises:
        if rise.rig.rig_id not in ordered:
            out[rise.rig.rig_id] = _held(rise, kw_left, rigs_left)
    return out, kept + tuple(grants)


def _held(rise: Rise, kw_left: float, rigs_left: int) -> Decision:
    why = (rise.decision.setting.mode, rise.kw, rise.decision.decided_by, kw_left, rigs_left)
    return Decision(rise.hold, RAMP, (ramp_text, why), SOURCE_HOLD, held_back=True)


def ramp_text(args: tuple[Mode, float, str, float, int]) -> str:
    """The ramp's reason for a postponed rise, from (mode wanted, its kW, who asked, kW left,
    rigs left)."""
    mode, kw, asked_by, kw_left, rigs_left = args
    return (
        f"power-up to {mode.value} (+{kw:.2f} kW, "
        f"asked by {asked_by}) postponed by the ramp limit: "
        f"{max(kw_left, 0.0):.2f} kW and {max(rigs_left, 0)} rigs left in the window"
    )
