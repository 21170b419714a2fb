"""The built-in policies: where they live, and the helpers they share.

Each built-in is registered like any plugin, in the ``rigpilot.policies`` entry-point group, as
``name = "module:attribute"`` where the attribute is a zero-argument factory (usually the class).
:data:`BUILTIN_POLICIES` holds the same lines so the registry finds them even when the package's
entry points are not installed (a source checkout run without ``pip install -e``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from policies.api import RigView
from policies.economics import ModePoint
from policies.values import HASHING_MODES, Mode

BUILTIN_POLICIES: Mapping[str, str] = {
    "breakeven": "policies.breakeven:BreakevenPolicy",
    "power-cap": "policies.power_cap:PowerCapPolicy",
    "schedule": "policies.schedule:SchedulePolicy",
}
"""Built-in policy name -> entry-point value (``module:factory``)."""


def supported_points(rig: RigView) -> tuple[ModePoint, ...]:
    """The rig's mode points whose mode its driver supports, in the order given."""
    return tuple(p for p in rig.points if p.mode in rig.modes)


def point_for(rig: RigView, mode: Mode) -> ModePoint | None:
    """The rig's point for ``mode``, or None when it has none."""
    for p in rig.points:
        if p.mode is mode:
            return p
    return None


def expected_power_w(rig: RigView | None, mode: Mode, power_limit_w: int | None = None) -> float:
    """What the rig is expected to draw in ``mode``, from its points.

    ``off`` draws 0 W; ``sleep`` its sleep point (0 W without one); ``limit`` the limit, or the
    rig's highest hashing point when that is lower; a hashing mode its point. A mode whose draw
    cannot be known (no point, no limit given, ``unknown``) is +inf: assumed the worst.
    """
    if mode is Mode.OFF:
        return 0.0
    if mode is Mode.SLEEP:
        sleep = point_for(rig, Mode.SLEEP) if rig is not None else None
        return sleep.power_w if sleep is not None else 0.0
    if mode is Mode.LIMIT:
        if power_limit_w is None:
            return math.inf
        hashing = [p.power_w for p in rig.points if p.mode in HASHING_MODES] if rig else []
        return min(float(power_limit_w), max(hashing)) if hashing else float(power_limit_w)
    found = point_for(rig, mode) if rig is not None else None
    return found.power_w if found is not None else math.inf


def power_order_key(
    rig: RigView | None, mode: Mode, power_limit_w: int | None = None
) -> tuple[float, int, float]:
    """A sort key that orders intents for one rig from least to most expected power.

    Expected watts first (:func:`expected_power_w`); equal watts fall back to the mode order
    (:attr:`policies.values.Mode.power_rank`), then to the lower limit.
    """
    limit = math.inf if power_limit_w is None else float(power_limit_w)
    return (expected_power_w(rig, mode, power_limit_w), mode.power_rank, limit)


def mode_label(mode: Mode, power_limit_w: int | None = None) -> str:
    """``"low"``, or ``"limit 2800 W"`` for a power limit."""
    if mode is Mode.LIMIT and power_limit_w is not None:
        return f"limit {power_limit_w} W"
    return mode.value


def rig_label(rig: RigView) -> str:
    """How reasons name a rig: its model when it was read, else its id."""
    if rig.observation is not None and rig.observation.identity.model:
        return rig.observation.identity.model
    return rig.rig_id
