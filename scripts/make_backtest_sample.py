"""Build the backtest's sample market: February 2026, every 5 minutes (docs/backtest.md).

Deterministic (seeded): running it again writes the same bytes.

Hashprice is computed with the formula of docs/reference/economics.md from public figures:

- difficulty 141.6 T until the adjustment of Feb 7-8 (here Feb 7 18:00 UTC), 125.86 T (-11.16 %)
  until Feb 19-20 (here Feb 19 18:00 UTC), then 144.4 T (+14.73 %);
- subsidy 3.125 BTC; fees about 0.02 BTC a block (hourly, 0.014-0.028);
- BTC from piecewise-linear anchors with a small seeded random walk. The anchors are chosen so
  that the formula gives the public hashprice figures (about $45/PH/day at the start of the
  month, $34.9 on Feb 8 at $69,500 and 125.86 T, a record low near $33, below $30 after the
  Feb 20 adjustment), which puts BTC near $99k on Feb 1: above the "$60-70k" the month is
  remembered for, reached from Feb 8 on.

The power price is synthetic, ERCOT-like, in USD/kWh: 3 ¢ at night to 5.5 ¢ at the evening
peak (less at weekends), 5-minute noise, a few scarcity spikes (up to $1.80/kWh, the longest
90 minutes on Feb 10) and windy nights with negative prices (Feb 3, 13, 24 and 26).

Usage: python -m scripts.make_backtest_sample [--out examples/backtest/feb2026.csv]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(2026, 2, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
ROWS = 28 * 24 * 12
SUBSIDY_BTC = 3.125

DIFFICULTY = (  # (from, difficulty in T)
    (START, 141.6),
    (datetime(2026, 2, 7, 18, tzinfo=UTC), 125.86),
    (datetime(2026, 2, 19, 18, tzinfo=UTC), 144.4),
)
BTC_ANCHORS = (  # (day of February, hour, USD)
    (1, 0, 99_000.0),
    (4, 0, 84_000.0),
    (8, 0, 69_500.0),
    (12, 0, 68_200.0),
    (15, 0, 65_800.0),
    (19, 0, 66_500.0),
    (22, 0, 63_000.0),
    (28, 23, 61_500.0),
)
SPIKES = (  # (day, hour, minute, minutes long, peak USD/kWh)
    (5, 18, 0, 20, 0.45),
    (10, 17, 0, 90, 1.80),
    (14, 7, 30, 15, 0.60),
    (17, 7, 0, 60, 0.80),
    (21, 19, 10, 25, 1.20),
    (25, 18, 30, 10, 0.35),
)
NEGATIVE_NIGHTS = (3, 13, 24, 26)


def difficulty_t(t: datetime) -> float:
    value = DIFFICULTY[0][1]
    for since, d in DIFFICULTY:
        if t >= since:
            value = d
    return value


def btc_anchor(t: datetime) -> float:
    points = [(datetime(2026, 2, d, h, tzinfo=UTC), usd) for d, h, usd in BTC_ANCHORS]
    for (t0, a), (t1, b) in itertools.pairwise(points):
        if t0 <= t <= t1:
            f = (t - t0) / (t1 - t0)
            return float(a + (b - a) * f)
    return points[-1][1]


def hashprice_usd_per_ph_day(difficulty: float, btc_usd: float, fees_btc: float) -> float:
    """The formula of economics.md: blocks per TH/s-day x (subsidy + fees) x price x 1000."""
    blocks = 1e12 * 86_400 / (difficulty * 1e12 * 2**32)
    return blocks * (SUBSIDY_BTC + fees_btc) * btc_usd * 1000.0


def power_price(t: datetime, rng: random.Random) -> float:
    hour = t.hour + t.minute / 60.0
    weekend = t.weekday() >= 5
    base = 0.030 + 0.025 * max(0.0, math.sin((hour - 6.0) / 14.0 * math.pi)) ** 1.5
    if weekend:
        base *= 0.85
    price = base * (1.0 + rng.gauss(0.0, 0.06))
    if t.day in NEGATIVE_NIGHTS and 1 <= hour < 5:
        price = -0.005 - 0.02 * math.sin((hour - 1.0) / 4.0 * math.pi) + rng.gauss(0.0, 0.002)
    for day, h, m, minutes, peak in SPIKES:
        s = datetime(2026, 2, day, h, m, tzinfo=UTC)
        if s <= t < s + timedelta(minutes=minutes):
            f = (t - s) / timedelta(minutes=minutes)
            price = max(price, float(peak) * (0.6 + 0.4 * math.sin(f * math.pi)))
    return float(price)


def build() -> list[tuple[str, float, float]]:
    rng = random.Random(20260201)
    rows = []
    walk = 0.0
    fees = 0.02
    for i in range(ROWS):
        t = START + i * STEP
        if t.minute == 0:
            fees = min(0.028, max(0.014, fees + rng.gauss(0.0, 0.0015)))
        walk = 0.995 * walk + rng.gauss(0.0, 0.0012)
        btc = btc_anchor(t) * (1.0 + walk)
        hp = hashprice_usd_per_ph_day(difficulty_t(t), btc, fees)
        rows.append((t.strftime("%Y-%m-%dT%H:%M:%SZ"), round(hp, 3), round(power_price(t, rng), 5)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples/backtest/feb2026.csv"))
    args = parser.parse_args()
    rows = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        fh.write("# February 2026 hashprice slide and a synthetic 5-minute power price;\n")
        fh.write("# built by scripts/make_backtest_sample.py (see docs/backtest.md)\n")
        fh.write("time,hashprice_usd_per_ph_day,power_price_usd_per_kwh\n")
        for t, hp, pp in rows:
            fh.write(f"{t},{hp},{pp}\n")
    hps = [r[1] for r in rows]
    pps = [r[2] for r in rows]
    print(
        f"{args.out}: {len(rows)} rows; hashprice {min(hps):.1f}-{max(hps):.1f} USD/PH/day "
        f"(first {hps[0]:.1f}, last {hps[-1]:.1f}); power {min(pps):.3f}-{max(pps):.3f} USD/kWh, "
        f"{sum(p < 0 for p in pps)} negative rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
