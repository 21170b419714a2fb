"""The power-up ramp: the whole site's rises share a kW-per-minute and a rigs-per-second budget.

Both are sliding windows over the grants remembered in ``GuardState.ramp_log``: the kW granted in
any 60 s never exceed ``ramp_kw_per_min`` (except one rig alone, larger than the whole budget,
which may start once nothing else has gone up for a minute), and the rigs granted in any
``ramp_rigs_window_s`` never exceed ``ramp_rigs_per_window``. Going down is never ramped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from policies.api import MarketView, RigView
from policies.guards.model import RAMP, RAMP_KW_WINDOW_S, GuardConfig, RampGrant, Setting
from policies.guards.power import margin_usd_per_day, power_up_kw, power_w
from policies.guards.rig import SOURCE_HOLD, SOURCE_OVERRIDE, Decision

_EPS_KW = 1e-9


@dataclass(frozen=True, slots=True)
class Rise:
    """A rig whose decision would raise its power: what it costs the budget, and its rank."""

    rig: RigView
    hold: Setting
    decision: Decision
    kw: float
    score: float | None  # margin per kW of the new setting, USD/kW/day; None when unknown


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
    for rise in order_rises(rises, config, seed, now):
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
    return out, kept + tuple(grants)


def _held(rise: Rise, kw_left: float, rigs_left: int) -> Decision:
    reason = (
        f"power-up to {rise.decision.setting.mode.value} (+{rise.kw:.2f} kW, "
        f"asked by {rise.decision.decided_by}) postponed by the ramp limit: "
        f"{max(kw_left, 0.0):.2f} kW and {max(rigs_left, 0)} rigs left in the window"
    )
    return Decision(rise.hold, RAMP, reason, SOURCE_HOLD, held_back=True)
