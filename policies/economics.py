"""Break-even arithmetic: pure functions over plain numbers (docs/reference/economics.md).

J/TH equals W per TH/s, so a rig's daily energy is power_w × 24 h. Revenue is hashprice
× hashrate × (1 − pool fee); cost is energy × power price × overhead (cooling/PUE/hosting).
Hardware cost and uptime cancel out of the marginal run/sleep decision, so they are not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.values import Mode, PowerSource

HOURS_PER_DAY = 24.0


@dataclass(frozen=True, slots=True)
class Economics:
    """Site-wide terms of trade."""

    pool_fee: float = 0.02  # share of revenue the pool keeps (0.02 = 2 %)
    overhead: float = 1.0  # multiplier on power cost: cooling, PUE, hosting margin

    def __post_init__(self) -> None:
        if not 0.0 <= self.pool_fee < 1.0 or not math.isfinite(self.pool_fee):
            raise ValueError(f"pool_fee must be in [0, 1), got {self.pool_fee}")
        if not 0.5 <= self.overhead <= 5.0 or not math.isfinite(self.overhead):
            raise ValueError(f"overhead must be in [0.5, 5], got {self.overhead}")


@dataclass(frozen=True, slots=True)
class ModePoint:
    """What a rig does in one mode: hashrate and power (with where the watts came from)."""

    mode: Mode
    hashrate_ths: float
    power_w: float
    power_source: PowerSource

    @property
    def j_per_th(self) -> float | None:
        return self.power_w / self.hashrate_ths if self.hashrate_ths > 0 else None


@dataclass(frozen=True, slots=True)
class BreakEven:
    """The economics of one rig in one mode at given prices."""

    mode: Mode
    revenue_usd_per_day: float
    cost_usd_per_day: float
    margin_usd_per_day: float
    breakeven_power_price_per_kwh: float | None  # None: nothing to break even (no hashrate)
    breakeven_hashprice_usd_per_ph_day: float | None
    power_source: PowerSource

    @property
    def pays(self) -> bool:
        return self.margin_usd_per_day >= 0


def revenue_usd_per_day(
    hashrate_ths: float, hashprice_usd_per_ph_day: float, terms: Economics
) -> float:
    """Expected revenue of ``hashrate_ths`` for one day, after the pool fee."""
    return hashrate_ths / 1000.0 * hashprice_usd_per_ph_day * (1.0 - terms.pool_fee)


def cost_per_day(power_w: float, price_per_kwh: float, terms: Economics) -> float:
    """Energy cost of running at ``power_w`` for one day, overhead included."""
    return power_w / 1000.0 * HOURS_PER_DAY * price_per_kwh * terms.overhead


def breakeven_power_price(
    point: ModePoint, hashprice_usd_per_ph_day: float, terms: Economics
) -> float | None:
    """The power price at which ``point`` exactly pays; None when it draws no power."""
    energy = point.power_w / 1000.0 * HOURS_PER_DAY * terms.overhead
    if energy <= 0:
        return None
    return revenue_usd_per_day(point.hashrate_ths, hashprice_usd_per_ph_day, terms) / energy


def breakeven_hashprice(point: ModePoint, price_per_kwh: float, terms: Economics) -> float | None:
    """The hashprice (USD/PH/day) at which ``point`` exactly pays; None without hashrate."""
    earning = point.hashrate_ths / 1000.0 * (1.0 - terms.pool_fee)
    if earning <= 0:
        return None
    return cost_per_day(point.power_w, price_per_kwh, terms) / earning


def breakeven(
    point: ModePoint, hashprice_usd_per_ph_day: float, price_per_kwh: float, terms: Economics
) -> BreakEven:
    """Revenue, cost, margin and both break-even prices of ``point``."""
    revenue = revenue_usd_per_day(point.hashrate_ths, hashprice_usd_per_ph_day, terms)
    cost = cost_per_day(point.power_w, price_per_kwh, terms)
    return BreakEven(
        mode=point.mode,
        revenue_usd_per_day=revenue,
        cost_usd_per_day=cost,
        margin_usd_per_day=revenue - cost,
        breakeven_power_price_per_kwh=breakeven_power_price(point, hashprice_usd_per_ph_day, terms),
        breakeven_hashprice_usd_per_ph_day=breakeven_hashprice(point, price_per_kwh, terms),
        power_source=point.power_source,
    )


def best_mode(
    points: list[ModePoint], hashprice_usd_per_ph_day: float, price_per_kwh: float, terms: Economics
) -> BreakEven:
    """The mode with the highest margin; ties go to the lower-power mode (less wear, less heat).

    ``points`` must include the sleep point (a few watts, no hashrate), so "no mode pays"
    resolves to sleep. Raises ValueError on an empty list.
    """
    if not points:
        raise ValueError("best_mode needs at least one mode point")
    ranked = sorted(
        points,
        key=lambda p: (
            -round(
                breakeven(p, hashprice_usd_per_ph_day, price_per_kwh, terms).margin_usd_per_day, 9
            ),
            p.power_w,
        ),
    )
    return breakeven(ranked[0], hashprice_usd_per_ph_day, price_per_kwh, terms)
