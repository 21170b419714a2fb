"""The ``[market]`` configuration section and how it becomes a Market of sources.

```toml
[market]
pool_fee = 0.02
overhead = 1.05          # cooling, PUE, hosting
currency = "USD"         # the site's power price currency
usd_per_unit = 1.0       # USD per unit of that currency (to compare with hashprice in USD)

[[market.hashprice]]     # tried in order: the first that answers wins
type = "mempool"
base_url = "https://mempool.space"

[[market.hashprice]]
type = "fixed"
value = 35.0

[[market.power]]
type = "tou"
tz = "America/Chicago"
default_per_kwh = 0.05
windows = [{ days = "mon-fri", start = "14:00", end = "19:00", price_per_kwh = 0.12 }]
```
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import httpx
from pydantic import Field, SecretStr

from daemon.settings_base import Section
from market import hashprice as hp
from market import power as pw
from market import power_feeds as pf
from market import tou
from market.service import Market
from market.source import Source
from policies.economics import Economics
from policies.values import QuoteKind


class _Model(Section):
    pass


class _Hash(_Model):
    name: str | None = None
    ttl_s: float = Field(default=1800.0, gt=0, le=7 * 86400)


class MempoolConfig(_Hash):
    type: Literal["mempool"]
    base_url: str = "https://mempool.space"


class BraiinsConfig(_Hash):
    type: Literal["braiins"]
    base_url: str = "https://insights.braiins.com/api"


class LuxorConfig(_Hash):
    type: Literal["luxor"]
    base_url: str = "https://api.hashrateindex.com/v1/hashrateindex"
    api_key: SecretStr


class FixedHashConfig(_Model):
    type: Literal["fixed"]
    value: float = Field(gt=0, description="USD per PH/s per day")
    name: str | None = None


HashSource = Annotated[
    MempoolConfig | BraiinsConfig | LuxorConfig | FixedHashConfig, Field(discriminator="type")
]


class _Feed(_Model):
    name: str | None = None
    multiplier: float = Field(default=1.0, gt=0)
    adder_per_kwh: float = 0.0
    fx_rate: float = Field(default=1.0, gt=0, description="feed currency -> site currency")


class FixedPowerConfig(_Model):
    type: Literal["fixed"]
    value_per_kwh: float
    name: str | None = None


class TouWindowConfig(_Model):
    days: str = Field(description='e.g. "mon-fri", "sat,sun", "all"')
    start: str = Field(pattern=r"^\d{2}:\d{2}$")
    end: str = Field(pattern=r"^\d{2}:\d{2}$")
    price_per_kwh: float
    name: str = ""


class TouConfig(_Model):
    type: Literal["tou"]
    tz: str
    windows: tuple[TouWindowConfig, ...] = ()
    default_per_kwh: float | None = None
    name: str | None = None


class ErcotConfig(_Feed):
    type: Literal["ercot"]
    settlement_point: str = "HB_NORTH"
    api_key: SecretStr
    token: SecretStr
    base_url: str | None = None


class OctopusConfig(_Feed):
    type: Literal["octopus"]
    product: str
    tariff: str
    vat: bool = True
    base_url: str | None = None


class AwattarConfig(_Feed):
    type: Literal["awattar"]
    base_url: str | None = None


class EntsoeConfig(_Feed):
    type: Literal["entsoe"]
    token: SecretStr
    domain: str
    currency: str = "EUR"
    base_url: str | None = None


PowerSourceConfig = Annotated[
    FixedPowerConfig | TouConfig | ErcotConfig | OctopusConfig | AwattarConfig | EntsoeConfig,
    Field(discriminator="type"),
]


class MarketSettings(_Model):
    """Prices, their sources in priority order, and the site's terms of trade."""

    pool_fee: float = Field(default=0.02, ge=0, lt=1)
    overhead: float = Field(default=1.0, ge=0.5, le=5)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    usd_per_unit: float = Field(default=1.0, gt=0)
    refresh_s: float = Field(default=60.0, ge=5, le=86400)
    hashprice: tuple[HashSource, ...] = (MempoolConfig(type="mempool"),)
    power: tuple[PowerSourceConfig, ...] = ()

    @property
    def economics(self) -> Economics:
        return Economics(pool_fee=self.pool_fee, overhead=self.overhead)


def _hash_source(cfg: HashSource, client: httpx.AsyncClient) -> Source:
    if isinstance(cfg, FixedHashConfig):
        return hp.FixedHashprice(cfg.value, name=cfg.name or "fixed-hashprice")
    if isinstance(cfg, MempoolConfig):
        return hp.MempoolHashprice(
            cfg.base_url, client=client, name=cfg.name or "mempool", ttl_s=cfg.ttl_s
        )
    if isinstance(cfg, BraiinsConfig):
        return hp.BraiinsInsights(
            cfg.base_url, client=client, name=cfg.name or "braiins", ttl_s=cfg.ttl_s
        )
    return hp.LuxorHashprice(
        cfg.base_url, api_key=cfg.api_key, client=client, name=cfg.name or "luxor", ttl_s=cfg.ttl_s
    )


def _power_source(cfg: PowerSourceConfig, client: httpx.AsyncClient, currency: str) -> Source:
    if isinstance(cfg, FixedPowerConfig):
        return pw.FixedPrice(cfg.value_per_kwh, currency=currency, name=cfg.name or "fixed-power")
    if isinstance(cfg, TouConfig):
        windows = []
        for j, w in enumerate(cfg.windows):
            try:
                windows.append(
                    tou.TouWindow.parse(w.days, w.start, w.end, w.price_per_kwh, name=w.name)
                )
            except ValueError as exc:
                raise ValueError(f"windows[{j}]: {exc}") from None
        return tou.TimeOfUse(
            windows,
            cfg.tz,
            default_per_kwh=cfg.default_per_kwh,
            currency=currency,
            name=cfg.name or "tou",
        )
    adjust = pw.PriceAdjust(
        multiplier=cfg.multiplier, adder_per_kwh=cfg.adder_per_kwh, fx_rate=cfg.fx_rate
    )
    if isinstance(cfg, ErcotConfig):
        return pf.ErcotSpp(
            client,
            cfg.settlement_point,
            api_key=cfg.api_key.get_secret_value(),
            token=cfg.token.get_secret_value(),
            adjust=adjust,
            site_currency=currency,
            name=cfg.name or "ercot",
            base_url=cfg.base_url or pf.ErcotSpp.DEFAULT_BASE_URL,
        )
    if isinstance(cfg, OctopusConfig):
        return pf.OctopusAgile(
            client,
            cfg.product,
            cfg.tariff,
            vat=cfg.vat,
            adjust=adjust,
            site_currency=currency,
            name=cfg.name or "octopus",
            base_url=cfg.base_url or pf.OctopusAgile.DEFAULT_BASE_URL,
        )
    if isinstance(cfg, AwattarConfig):
        return pf.Awattar(
            client,
            cfg.base_url or pf.Awattar.DEFAULT_BASE_URL,
            adjust=adjust,
            site_currency=currency,
            name=cfg.name or "awattar",
        )
    return pf.Entsoe(
        client,
        cfg.token.get_secret_value(),
        cfg.domain,
        currency=cfg.currency,
        adjust=adjust,
        site_currency=currency,
        name=cfg.name or "entsoe",
        base_url=cfg.base_url or pf.Entsoe.DEFAULT_BASE_URL,
    )


def build_market(settings: MarketSettings, client: httpx.AsyncClient) -> Market:
    """A Market with the configured sources, in the configured order.

    Raises ValueError naming the source when one cannot be built (e.g. a feed in another
    currency without an ``fx_rate``, an unknown time zone).
    """
    hashes: list[Source] = []
    for i, cfg in enumerate(settings.hashprice):
        try:
            hashes.append(_hash_source(cfg, client))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"market.hashprice[{i}] ({cfg.type}): {exc}") from None
    powers: list[Source] = []
    for i, pcfg in enumerate(settings.power):
        try:
            powers.append(_power_source(pcfg, client, settings.currency))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"market.power[{i}] ({pcfg.type}): {exc}") from None
    names = [s.name for s in hashes + powers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"market: source names must be unique; repeated: {', '.join(dupes)} "
            "(set name = ... on one of them)"
        )
    return Market({QuoteKind.HASHPRICE: hashes, QuoteKind.POWER_PRICE: powers})


def finite_or_none(value: float) -> float | None:
    """JSON has no Infinity: a TTL that never runs out is written as null."""
    return value if math.isfinite(value) else None
