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
from collections.abc import Mapping, Sequence

from policies.api import Intent, MarketView, RigView, Site
from policies.builtin import point_for, rig_label, supported_points
from policies.economics import (
    BreakEven,
    Economics,
    ModePoint,
    breakeven,
    cost_per_day,
    revenue_usd_per_day,
)
from policies.values import HASHING_MODES, Mode, PowerSource, RigId

NAME = "breakeven"


class BreakevenPolicy:
    """Per rig, the supported mode with the best margin; sleep when no hashing mode beats it.

    No intent at all when either price is missing (stale): the stale-input guard decides then.
    Rigs with no supported hashing mode point (unknown model, not hashing) get no intent.
    """

    name = NAME

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        """An intent for every rig with figures, in :func:`curtailment_order` (worst first).

        Each intent is the one :func:`decide_rig` gives, with its reason made lazily (by
        :func:`decide_rig` itself, when first read): per rig this only picks the best mode.
        """
        hashprice = market.hashprice_usd_per_ph_day
        price = market.power_price_usd_per_kwh
        if hashprice is None or price is None:
            return {}
        terms = site.economics
        explain = _Explainer(hashprice, price, terms)
        keys: list[float] = []
        ids: list[RigId] = []
        made: list[Intent] = []
        for rig in fleet:
            picked = _pick(rig, hashprice, price, terms)
            if picked is None:
                continue  # no supported hashing point: no opinion
            key, best = picked
            keys.append(key)
            rig_id = rig.rig_id
            ids.append(rig_id)
            made.append(Intent(rig_id, best, (explain, rig), NAME))
        if len(set(keys)) == len(keys):
            order = sorted(range(len(keys)), key=keys.__getitem__)
            return {ids[i]: made[i] for i in order}
        # Equal efficiencies (rigs of one model asleep share their rated points): ties by id.
        return {ids[i]: made[i] for _, _, i in sorted(zip(keys, ids, range(len(ids)), strict=True))}


_SLEEP = Mode.SLEEP  # a module global: reading an Enum member off its class costs more


def _pick(  # noqa: C901, PLR0912  the hot path at 10,000 rigs: inlined on purpose (bench/decide.py)
    rig: RigView, hashprice: float, price: float, terms: Economics
) -> tuple[float, Mode] | None:
    """(the rig's curtailment key, minus its J/TH; its best mode), or None without a supported
    hashing point: the per-rig core of :meth:`BreakevenPolicy.decide`."""
    # The same float expressions as revenue_usd_per_day and cost_per_day, operand for
    # operand, so margins (and their ties) are bit-identical to economics.best_mode's.
    keep = 1.0 - terms.pool_fee
    overhead = terms.overhead
    sleep_mode, hashing_modes = _SLEEP, HASHING_MODES
    modes = rig.modes
    points = rig.points
    sleep_w = 0.0
    if sleep_mode in modes and points:
        if points[0].mode is sleep_mode:  # where mode_points puts it
            sleep_w = points[0].power_w
        else:
            for p in points:
                if p.mode is sleep_mode:
                    sleep_w = p.power_w
                    break
    jth: float | None = None
    top = -math.inf
    best: ModePoint | None = None
    near = False  # another supported point within _TIE_USD of the top margin
    for p in points:
        mode = p.mode
        if mode not in modes:
            continue
        ths = p.hashrate_ths
        watts = p.power_w
        margin = ths / 1000.0 * hashprice * keep - watts / 1000.0 * 24.0 * price * overhead
        if margin > top + _TIE_USD:
            top, best, near = margin, p, False
        elif margin >= top - _TIE_USD:
            near = True
            if margin > top:  # noqa: PLR1730 (cheaper than max)
                top = margin
        if mode in hashing_modes and ths > 0:
            value = (watts - sleep_w) / ths
            if jth is None or value < jth:
                jth = value
    if jth is None or best is None:
        return None
    if near:  # a near tie: settle it exactly as _best_point does
        best = _best_point(list(supported_points(rig)), hashprice, price, terms)
    return -jth, best.mode


_TIE_USD = 2e-9
"""Margins further apart than this cannot be equal once rounded to 9 decimals (rounding moves
a value by at most 0.5e-9): the best point is the top margin's unless another is this close."""


class _Explainer:
    """A tick's prices, to write a rig's reason when it is read: the one decide_rig writes."""

    __slots__ = ("hashprice", "price", "terms")

    def __init__(self, hashprice: float, price: float, terms: Economics) -> None:
        self.hashprice = hashprice
        self.price = price
        self.terms = terms

    def __call__(self, rig: RigView) -> str:
        intent = decide_rig(rig, self.hashprice, self.price, self.terms)
        assert intent is not None  # only asked for rigs that got an intent
        return intent.reason


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
