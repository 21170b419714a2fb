"""A synthetic market, seeded and built in memory, for benchmarks and tests that need many rows
without shipping a file (bench/backtest.py replays a year of it).

Hashprice is a slow random walk between about 25 and 55 USD/PH/day with hourly noise; the
power price a daily cycle (3-5.5 ¢/kWh) with 5-minute noise, a scarcity spike about twice a week
(to 0.3-2 USD/kWh, 10-90 minutes) and a windy night with negative prices about once a week.
Every row has new prices (nothing repeats).
"""

from __future__ import annotations

import math
import random

from backtest.inputs import Market, MarketRow

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP_S = 300


def synthetic_market(days: int, seed: int = 2026) -> Market:
    """``days`` of 5-minute rows from 2026-01-01, the same for the same ``seed``."""
    rng = random.Random(seed)
    rows = []
    level = 40.0
    hp_noise = 0.0
    spike_left, spike_peak = 0, 0.0
    for i in range(days * 288):
        t = T0 + i * STEP_S
        minute_of_day = (i % 288) * 5
        hour = minute_of_day / 60.0
        day = i // 288
        if i % 12 == 0:
            level += rng.gauss(0.0, 0.35) + 0.01 * (40.0 - level)
            level = min(55.0, max(25.0, level))
            hp_noise = rng.gauss(0.0, 0.4)
        hp = level + hp_noise + rng.gauss(0.0, 0.05)
        price = 0.030 + 0.025 * max(0.0, math.sin((hour - 6.0) / 14.0 * math.pi)) ** 1.5
        price *= 1.0 + rng.gauss(0.0, 0.06)
        if day % 7 == 3 and 1 <= hour < 5:
            price = -0.005 - 0.02 * math.sin((hour - 1.0) / 4.0 * math.pi)
        if spike_left == 0 and 16 <= hour < 20 and rng.random() < 2 / 7 / 48:
            spike_left, spike_peak = rng.randint(2, 18), rng.uniform(0.3, 2.0)
        if spike_left:
            spike_left -= 1
            price = max(price, spike_peak)
        rows.append(MarketRow(t, round(hp, 3), round(price, 5)))
    return Market("synthetic year", STEP_S, tuple(rows))
