"""``rigpilot market``: the current hashprice and power price, and every model's break-even."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from daemon.config import ConfigError, load_settings
from drivers import catalogue
from market.config import MarketSettings, build_market, finite_or_none
from market.service import MarketState
from policies.economics import ModePoint, breakeven
from policies.values import PowerSource, QuoteKind


def parser(prog: str = "rigpilot market") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fetch the hashprice and power price from the configured sources (in "
        "priority order) and print them with their source and age, and the break-even of "
        "every catalogue model in each mode.",
        epilog="exit status: 0 every price with a source configured was had; 1 one could not "
        "be had (all its sources failed: each is listed); 2 invalid configuration",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $RIGPILOT_CONFIG, then "
        "/etc/rigpilot/rigpilot.toml if it exists)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    return p


def _quote_fields(
    state: MarketState, kind: QuoteKind, prefix: str, unit_key: str, usd_per_unit: float = 1.0
) -> dict[str, Any]:
    quote = state.quote(kind)
    if quote is None:
        errors = [s.error for s in state.sources if s.kind is kind and s.error]
        return {
            unit_key: None,
            f"{prefix}_source": None,
            f"{prefix}_age_s": None,
            f"{prefix}_stale": True,
            f"{prefix}_error": "; ".join(errors) or "no source configured",
        }
    return {
        unit_key: round(quote.value * usd_per_unit, 6),
        f"{prefix}_source": quote.source,
        f"{prefix}_age_s": round(quote.age_s(state.now), 1),
        f"{prefix}_ttl_s": finite_or_none(quote.ttl_s),
        f"{prefix}_stale": quote.stale(state.now),
        f"{prefix}_detail": quote.detail,
        f"{prefix}_local": {"value": quote.value, "unit": quote.unit},
    }


def breakeven_rows(
    settings: MarketSettings, hashprice: float | None, power_usd_per_kwh: float | None
) -> list[dict[str, Any]]:
    """Per catalogue model and rated mode: break-even power price and, given both prices,
    the break-even hashprice and the margin per day (USD)."""
    rows = []
    terms = settings.economics
    for entry in catalogue.default_catalogue().entries:
        for figures in entry.modes:
            point = ModePoint(
                figures.mode, figures.hashrate_ths, figures.power_w, PowerSource.ESTIMATED
            )
            row: dict[str, Any] = {
                "make": entry.make.value,
                "model": entry.model,
                "mode": figures.mode.value,
                "hashrate_ths": round(figures.hashrate_ths, 1),
                "power_w": round(figures.power_w),
                "j_per_th": round(figures.j_per_th, 2),
                "breakeven_power_price_usd_per_kwh": None,
                "breakeven_hashprice_usd_per_ph_day": None,
                "margin_usd_per_day": None,
            }
            if hashprice is not None:
                be = breakeven(point, hashprice, power_usd_per_kwh or 0.0, terms)
                row["breakeven_power_price_usd_per_kwh"] = round(
                    be.breakeven_power_price_per_kwh or 0.0, 5
                )
                if power_usd_per_kwh is not None:
                    row["breakeven_hashprice_usd_per_ph_day"] = round(
                        be.breakeven_hashprice_usd_per_ph_day or 0.0, 2
                    )
                    row["margin_usd_per_day"] = round(be.margin_usd_per_day, 2)
            rows.append(row)
    return rows


async def _fetch(settings: MarketSettings) -> MarketState:
    async with httpx.AsyncClient(headers={"User-Agent": "rigpilot"}) as client:
        market = build_market(settings, client)
        return await market.refresh(time.time())


def report(settings: MarketSettings, state: MarketState) -> dict[str, Any]:
    """The JSON document ``rigpilot market --json`` prints."""
    out: dict[str, Any] = {"observed_at": state.now}
    out |= _quote_fields(state, QuoteKind.HASHPRICE, "hashprice", "hashprice_usd_per_ph_day")
    out |= _quote_fields(
        state,
        QuoteKind.POWER_PRICE,
        "power_price",
        "power_price_usd_per_kwh",
        settings.usd_per_unit,
    )
    out["pool_fee"], out["overhead"] = settings.pool_fee, settings.overhead
    out["sources"] = [
        {"name": s.name, "kind": s.kind.value, "ok": s.ok, "error": s.error or None}
        for s in state.sources
    ]
    fresh_hash = state.fresh(QuoteKind.HASHPRICE)
    fresh_power = state.fresh(QuoteKind.POWER_PRICE)
    out["breakeven"] = breakeven_rows(
        settings,
        fresh_hash.value if fresh_hash else None,
        fresh_power.value * settings.usd_per_unit if fresh_power else None,
    )
    return out


def _print_table(doc: dict[str, Any], out: TextIO) -> None:
    def line(label: str, prefix: str, value_key: str, unit: str) -> str:
        if doc[value_key] is None:
            return f"{label:<12} unavailable: {doc.get(prefix + '_error')}"
        age, ttl = doc[prefix + "_age_s"], doc.get(prefix + "_ttl_s")
        if doc[f"{prefix}_stale"]:
            validity = "  STALE: shown, but drives no change"
        elif ttl is None:
            validity = ", no expiry"
        else:
            validity = f", valid {_span(ttl - age)} more"
        return (
            f"{label:<12} {doc[value_key]:.4g} {unit} from {doc[prefix + '_source']}, "
            f"as of {_span(age)} ago{validity}"
        )

    print(line("hashprice", "hashprice", "hashprice_usd_per_ph_day", "USD/PH/day"), file=out)
    print(line("power price", "power_price", "power_price_usd_per_kwh", "USD/kWh"), file=out)
    for source in doc["sources"]:
        if source["error"]:
            print(f"  {source['name']} ({source['kind']}) failed: {source['error']}", file=out)
    print(
        f"\n{'model':<12} {'mode':<7} {'TH/s':>6} {'W':>5} {'J/TH':>5} {'break-even':>11} "
        f"{'margin/day':>11}",
        file=out,
    )
    for row in doc["breakeven"]:
        be = row["breakeven_power_price_usd_per_kwh"]
        margin = row["margin_usd_per_day"]
        print(
            f"{row['model']:<12} {row['mode']:<7} {row['hashrate_ths']:6.1f} "
            f"{row['power_w']:5d} {row['j_per_th']:5.1f} "
            f"{'-' if be is None else f'${be:.4f}/kWh':>11} "
            f"{'-' if margin is None else f'${margin:+.2f}':>11}",
            file=out,
        )


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config).market
    except ConfigError as exc:
        print(f"rigpilot market: {exc}", file=sys.stderr)
        return 2
    try:
        state = asyncio.run(_fetch(settings))
    except ValueError as exc:
        print(f"rigpilot market: configuration error: {exc}", file=sys.stderr)
        return 2
    doc = report(settings, state)
    if args.json:
        print(json.dumps(doc), file=out)
    else:
        _print_table(doc, out)
    return market_status(state)


def market_status(state: MarketState) -> int:
    """1 when a price that has sources configured could not be had (or none at all), else 0."""
    kinds = {s.kind for s in state.sources}
    had = [kind for kind in QuoteKind if state.quote(kind) is not None]
    missing = [kind for kind in kinds if state.quote(kind) is None]
    return 1 if missing or not had else 0
