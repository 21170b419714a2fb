"""Hashprice: the expected revenue of hashrate, from difficulty, block reward and BTC price.

Pure functions (no I/O, no clock). The formula is the one in economics.md:

- blocks per (TH/s · day) = 1e12 × 86,400 / (difficulty × 2^32)
- BTC per (TH/s · day) = that × (block subsidy + mean fees per block)
- USD per (PH/s · day) = 1,000 × BTC figure × BTC price
"""

from __future__ import annotations

import math

HASHES_PER_TH = 1e12
SECONDS_PER_DAY = 86_400
HASHES_PER_DIFFICULTY_1 = 2**32
"""Expected hashes to find a block at difficulty 1."""
TH_PER_PH = 1_000
SATS_PER_BTC = 100_000_000
HALVING_INTERVAL_BLOCKS = 210_000
INITIAL_SUBSIDY_SATS = 50 * SATS_PER_BTC


def _finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _positive(value: float, name: str) -> float:
    number = _finite(value, name)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def _non_negative(value: float, name: str) -> float:
    number = _finite(value, name)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def blocks_per_th_day(difficulty: float) -> float:
    """Expected blocks found by 1 TH/s in one day at ``difficulty``.

    Raises ValueError naming ``difficulty`` unless it is finite and > 0.
    """
    diff = _positive(difficulty, "difficulty")
    return HASHES_PER_TH * SECONDS_PER_DAY / (diff * HASHES_PER_DIFFICULTY_1)


def btc_per_th_day(difficulty: float, subsidy_btc: float, fees_btc_per_block: float) -> float:
    """Expected BTC earned by 1 TH/s in one day (subsidy plus mean fees per block).

    Raises ValueError naming the argument unless difficulty > 0, subsidy >= 0 and fees >= 0,
    all finite.
    """
    blocks = blocks_per_th_day(difficulty)
    subsidy = _non_negative(subsidy_btc, "subsidy_btc")
    fees = _non_negative(fees_btc_per_block, "fees_btc_per_block")
    return blocks * (subsidy + fees)


def hashprice_usd_per_th_day(
    difficulty: float, btc_usd: float, subsidy_btc: float, fees_btc_per_block: float
) -> float:
    """Hashprice in USD per TH/s per day. Same validation as ``hashprice_usd_per_ph_day``."""
    price = _positive(btc_usd, "btc_usd")
    return btc_per_th_day(difficulty, subsidy_btc, fees_btc_per_block) * price


def hashprice_usd_per_ph_day(
    difficulty: float, btc_usd: float, subsidy_btc: float, fees_btc_per_block: float
) -> float:
    """Hashprice in USD per PH/s per day (the unit of every hashprice Quote).

    Non-decreasing in ``btc_usd``, ``subsidy_btc`` and ``fees_btc_per_block``, non-increasing in
    ``difficulty``. Raises ValueError naming the argument unless difficulty > 0, btc_usd > 0,
    subsidy_btc >= 0 and fees_btc_per_block >= 0, all finite. Plausibility (is this a real
    market?) is the caller's business: this is arithmetic only.
    """
    return TH_PER_PH * hashprice_usd_per_th_day(
        difficulty, btc_usd, subsidy_btc, fees_btc_per_block
    )


def block_subsidy_sats(height: int) -> int:
    """The block subsidy at ``height`` in satoshis: 50 BTC halved every 210,000 blocks.

    Exact (integer shift, as consensus computes it); 0 from the 64th halving on. Raises
    ValueError unless ``height`` is an int >= 0.
    """
    if isinstance(height, bool) or not isinstance(height, int):
        raise ValueError(f"height must be an int, got {height!r}")
    if height < 0:
        raise ValueError(f"height must be >= 0, got {height!r}")
    halvings = height // HALVING_INTERVAL_BLOCKS
    if halvings >= 64:
        return 0
    return INITIAL_SUBSIDY_SATS >> halvings


def block_subsidy_btc(height: int) -> float:
    """The block subsidy at ``height`` in BTC (3.125 from block 840,000 to 1,049,999).

    Raises ValueError unless ``height`` is an int >= 0.
    """
    return block_subsidy_sats(height) / SATS_PER_BTC
