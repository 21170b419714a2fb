"""What the guards would answer again, asked of the guards themselves.

A caller that runs the guards over the same inputs tick after tick (the backtest's cohort
replay, docs/backtest.md) may skip a call whose answer is known. These functions say when it
is, from the same tests the per-rig chain makes (``rig.py``: :func:`dwell_holds`,
:func:`is_hot`, :func:`stale_applies`), so a change to a rule is made once. They assume no
operator override for the rig, and they are checked against :func:`apply_guards` by property
tests (tests/test_guards.py).
"""

from __future__ import annotations

import math

from policies.api import Intent, MarketView
from policies.guards.model import (
    DWELL,
    HYSTERESIS,
    FailSafe,
    GuardConfig,
    RigGuardState,
    Setting,
)
from policies.guards.rig import dwell_ends, dwell_holds, is_hot, stale_applies
from policies.values import Mode


def keeps(
    prior: RigGuardState | None,
    intent: Intent | None,
    temp_c: float | None,
    market: MarketView,
    config: GuardConfig,
) -> bool:
    """True when the guards keep the rig where it is, with the same memory, whatever the
    time: it has a memory and no thermal latch, its chips (``temp_c``, None if unread) are
    below the thermal limit, and either no policy asks anything of it or its policy asks for
    the setting it already has (and no stale price turns that into a fail-safe move). The
    answer is then its own setting, not held back; the ramp sees no rise."""
    if prior is None or prior.thermal_cap is not None or prior.setting.mode is Mode.UNKNOWN:
        return False
    if temp_c is not None and is_hot(temp_c, config):
        return False
    if intent is None:
        return True
    if Setting.of(intent.mode, intent.power_limit_w) != prior.setting:
        return False
    return not (
        config.stale_failsafe is not FailSafe.HOLD and stale_applies(intent.policy, market, config)
    )


def held_again(held_by: str, prior: RigGuardState | None, now: float, config: GuardConfig) -> bool:
    """True when a rig the guard ``held_by`` held back at the last call, asked again with the
    same inputs (observation, intent, memory, prices) at ``now``, is held back again the same
    way: by hysteresis always (time plays no part in it), by the dwell while it lasts; never
    a thermally latched rig (its latch is renewed or cleared). Any other guard's hold is to be
    asked again."""
    if prior is None or prior.thermal_cap is not None:
        return False
    if held_by == HYSTERESIS:
        return True
    return held_by == DWELL and dwell_holds(prior, now, config)


def held_until(held_by: str, prior: RigGuardState | None, config: GuardConfig) -> float | None:
    """About when a hold by ``held_by`` (see :func:`held_again`) may end with the same inputs:
    never by time for hysteresis (``inf``), when its dwell ends for the dwell; None for any
    other guard (ask it at every tick)."""
    if held_by == HYSTERESIS:
        return math.inf
    if held_by == DWELL:
        return dwell_ends(prior, config)
    return None
