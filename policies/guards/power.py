"""Watts and margins of a rig's settings, from its mode points: what "raising power" means."""

from __future__ import annotations

from policies.api import MarketView, RigView
from policies.builtin import point_for
from policies.economics import Economics, cost_per_day, revenue_usd_per_day
from policies.guards.model import Setting
from policies.values import Mode

FLOOR_MODES = frozenset({Mode.SLEEP, Mode.OFF})
"""Modes that draw (next to) nothing: moving into one never raises power."""
_EPS_W = 1e-6
# Module globals: reading an Enum member off its class costs more, and these run for every rig.
_OFF, _LIMIT, _SLEEP = Mode.OFF, Mode.LIMIT, Mode.SLEEP


def power_w(rig: RigView, setting: Setting) -> float | None:
    """Expected watts of ``setting`` on ``rig``: the limit in LIMIT mode, 0 when off, the mode
    point's watts otherwise, 0 for sleep without a point; None when nothing says."""
    mode = setting.mode
    if mode is _OFF:
        return 0.0
    if mode is _LIMIT:
        return None if setting.power_limit_w is None else float(setting.power_limit_w)
    point = point_for(rig, mode)
    if point is not None:
        return point.power_w
    return 0.0 if mode is _SLEEP else None


def is_raise(rig: RigView, before: Setting, after: Setting) -> bool:
    """True when going from ``before`` to ``after`` may draw more power.

    Unknown watts count as a raise (an unknown mode going to anything but sleep/off, or any
    setting going to one whose watts are unknown): the guards err towards "no".
    """
    if before is after or before == after:  # plain settings are shared: identity first
        return False
    after_w = power_w(rig, after)
    before_w = power_w(rig, before)
    if before_w is None:
        return after.mode not in FLOOR_MODES
    if after_w is None:
        return True
    return after_w > before_w + _EPS_W


def is_lowering(rig: RigView, before: Setting, after: Setting) -> bool:
    """True when ``after`` certainly draws less power than ``before``."""
    if before is after or before == after:  # plain settings are shared: identity first
        return False
    after_w = power_w(rig, after)
    before_w = power_w(rig, before)
    if before_w is None:
        return after.mode in FLOOR_MODES
    if after_w is None:
        return False
    return after_w < before_w - _EPS_W


def power_up_kw(rig: RigView, before: Setting, after: Setting, fallback_w: float) -> float:
    """kW the site draws more after the change; unknown targets count as the rig's largest point
    (or ``fallback_w``), unknown starting points as 0 W."""
    after_w = power_w(rig, after)
    if after_w is None:
        after_w = max([fallback_w, *(p.power_w for p in rig.points)])
    before_w = power_w(rig, before) or 0.0
    return max(0.0, after_w - before_w) / 1000.0


def margin_usd_per_day(
    rig: RigView, setting: Setting, market: MarketView, terms: Economics
) -> float | None:
    """Daily margin of ``setting`` at the market's prices; None without both prices or a point."""
    hashprice = market.hashprice_usd_per_ph_day
    price = market.power_price_usd_per_kwh
    point = point_for(rig, setting.mode)
    if hashprice is None or price is None or point is None or setting.mode is _LIMIT:
        return None
    # breakeven(point, ...).margin_usd_per_day, without building the BreakEven
    return revenue_usd_per_day(point.hashrate_ths, hashprice, terms) - cost_per_day(
        point.power_w, price, terms
    )


def lowest_setting(rig: RigView) -> Setting:
    """The least power the rig can be put at: sleep (every rig sleeps), or off if that is all."""
    if Mode.SLEEP in rig.modes or Mode.OFF not in rig.modes:
        return Setting.of(Mode.SLEEP, None)
    return Setting.of(Mode.OFF, None)
