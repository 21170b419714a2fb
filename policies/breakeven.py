"""The ``breakeven`` policy: each rig in its most profitable supported mode at current prices.

With one hashprice and one power price every rig's decision is independent of the others', and
the least efficient rigs are curtailed first as a consequence: a rig sleeps exactly when the
hashprice is below ``k × min over its hashing modes of (W − sleep W) / TH/s`` (k is the same for
every rig of the site), so as the hashprice falls rigs go to sleep in the order of
:func:`curtailment_order`. Intents are returned in that order, worst first, which is also the
order the audit log shows them in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.api import Intent, MarketView, RigView, Site
from policies.builtin import HASHING_MODES, point_for, rig_label, supported_points
from policies.economics import (
    BreakEven,
    Economics,
    ModePoint,
    breakeven,
    cost_per_day,
    revenue_usd_per_day,
)
from policies.values import Mode, PowerSource, RigId

NAME = "breakeven"


class BreakevenPolicy:
    """Per rig, the supported mode with the best margin; sleep when no hashing mode beats it.

    No intent at all when either price is missing (stale): the stale-input guard decides then.
    Rigs with no supported hashing mode point (unknown model, not hashing) get no intent.
    """

    name = NAME

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        """An intent for every rig with figures, in :func:`curtailment_order` (worst first)."""
        hashprice = market.hashprice_usd_per_ph_day
        price = market.power_price_usd_per_kwh
        if hashprice is None or price is None:
            return {}
        intents: dict[RigId, Intent] = {}
        for rig in curtailment_order(fleet):
            intent = decide_rig(rig, hashprice, price, site.economics)
            if intent is not None:
                intents[rig.rig_id] = intent
        return intents


def decide_rig(
    rig: RigView, hashprice_usd_per_ph_day: float, price_per_kwh: float, terms: Economics
) -> Intent | None:
    """The best-margin supported mode for one rig, with a reason; None without hashing figures.

    Ties go to the lower-power mode (:func:`policies.economics.best_mode`).
    """
    points = list(supported_points(rig))
    hashing = [p for p in points if p.mode in HASHING_MODES and p.hashrate_ths > 0]
    if not hashing:
        return None
    reference = _reference_point(rig, hashing)
    ref = breakeven(reference, hashprice_usd_per_ph_day, price_per_kwh, terms)
    top = _best_point(points, hashprice_usd_per_ph_day, price_per_kwh, terms)
    best = (
        ref if top is reference else breakeven(top, hashprice_usd_per_ph_day, price_per_kwh, terms)
    )
    reason = (
        f"{rig_label(rig)}: {ref.mode.value} {_earns(ref)} at ${price_per_kwh:.3f}/kWh, "
        f"${hashprice_usd_per_ph_day:.2f}/PH/day"
        f" (break-even ${_fmt_price(ref.breakeven_power_price_per_kwh)})"
    )
    if best.mode is ref.mode:
        reason += f"; {best.mode.value} is its best mode"
    elif best.mode is Mode.SLEEP:
        reason += f"; no mode beats sleep ({_earns(best)})"
    else:
        reason += f"; {best.mode.value} {_earns(best)}"
    shown = (ref, best) if best.mode in HASHING_MODES else (ref,)
    if any(be.power_source is PowerSource.ESTIMATED for be in shown):
        reason += " (power estimated)"
    return Intent(rig_id=rig.rig_id, mode=best.mode, reason=reason, policy=NAME)


def curtailment_j_per_th(rig: RigView) -> float | None:
    """The efficiency that decides when this rig sleeps: the lowest (W − sleep W) / TH/s over
    its supported hashing modes. None when it has no supported hashing point."""
    sleep = point_for(rig, Mode.SLEEP)
    sleep_w = sleep.power_w if sleep is not None and Mode.SLEEP in rig.modes else 0.0
    values = [
        (p.power_w - sleep_w) / p.hashrate_ths
        for p in supported_points(rig)
        if p.mode in HASHING_MODES and p.hashrate_ths > 0
    ]
    return min(values) if values else None


def curtailment_order(fleet: Sequence[RigView]) -> list[RigView]:
    """The fleet, least efficient first (by :func:`curtailment_j_per_th`, ties by rig id).

    As the hashprice falls, ``breakeven`` puts rigs to sleep in this order: at any prices the
    sleeping rigs are a prefix of it. Rigs without figures come last.
    """

    def key(rig: RigView) -> tuple[float, RigId]:
        jth = curtailment_j_per_th(rig)
        return (math.inf if jth is None else -jth, rig.rig_id)

    return sorted(fleet, key=key)


def _best_point(
    points: list[ModePoint], hashprice_usd_per_ph_day: float, price_per_kwh: float, terms: Economics
) -> ModePoint:
    # The point :func:`policies.economics.best_mode` picks (same margin arithmetic, same ties:
    # the first of the highest rounded margin and lowest power), without building a BreakEven
    # for every point.
    return min(
        points,
        key=lambda p: (
            -round(
                revenue_usd_per_day(p.hashrate_ths, hashprice_usd_per_ph_day, terms)
                - cost_per_day(p.power_w, price_per_kwh, terms),
                9,
            ),
            p.power_w,
        ),
    )


def _reference_point(rig: RigView, hashing: list[ModePoint]) -> ModePoint:
    # The mode the reason starts from: what the rig does now, else normal, else its biggest.
    observed = rig.observation.mode if rig.observation is not None else None
    for wanted in (observed, Mode.NORMAL):
        for p in hashing:
            if p.mode is wanted:
                return p
    return max(hashing, key=lambda p: (p.hashrate_ths, p.mode.value))


def _earns(be: BreakEven) -> str:
    verb = "earns" if be.margin_usd_per_day >= 0 else "loses"
    return f"{verb} ${abs(be.margin_usd_per_day):.2f}/day"


def _fmt_price(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
