"""What the daemon publishes: per-rig state, the fleet summary and events, as JSON-ready dicts.

Pure functions of a tick's report and the daemon's bookkeeping; the bridge serialises them.
Watts that were estimated (stock Antminers report none) say so in ``power_source``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.reconciler import CommandResult
from drivers.catalogue import ModelEntry
from drivers.switches.base import OutletReading
from policies.economics import Economics, breakeven_hashprice, cost_per_day, revenue_usd_per_day
from policies.economics import ModePoint as _Point
from policies.guards import Desired, Override
from policies.values import (
    CURTAILED_MODES,
    Identity,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
    Reading,
    RigId,
    rig_text,
)

CURTAILED = CURTAILED_MODES  # policies/values.py
MAX_REASON = 2000  # characters of a reason published (ours, but plugins may quote rig text)


@dataclass(frozen=True, slots=True)
class Prices:
    """The prices of one tick, as the policies saw them (None: no fresh quote)."""

    hashprice_usd_per_ph_day: float | None
    power_price_usd_per_kwh: float | None
    economics: Economics


def margin_usd_per_day(obs: Observation, prices: Prices) -> float | None:
    """What the rig earns minus what it costs per day as observed now; None without prices
    or without a power figure."""
    hp, pp = prices.hashprice_usd_per_ph_day, prices.power_price_usd_per_kwh
    if hp is None or pp is None or obs.power_w is None:
        return None
    revenue = revenue_usd_per_day(obs.hashrate_ths, hp, prices.economics)
    return revenue - cost_per_day(obs.power_w, pp, prices.economics)


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def pin_state(pin_id: str, override: Override) -> dict[str, Any]:
    return {
        "pin": pin_id,
        "mode": override.mode.value,
        "power_limit_w": override.power_limit_w,
        "until": override.expires_at,
        "by": override.by,
        "why": override.why,
        "bypass_dwell": override.bypass_dwell,
    }


def outlets_state(
    feeds: Sequence[tuple[str, int]], readings: Mapping[tuple[str, int], OutletReading]
) -> dict[str, Any]:
    """The outlets feeding a rig as the last sweep read them: their names (``switch:outlet``),
    ``on`` (true while any reads on, false once every one reads off, null while one was not
    read) and ``power_w`` (their sum, where every one is metered and was read; else null)."""
    read = [readings.get(o) for o in feeds]
    known = [r for r in read if r is not None]
    whole = len(known) == len(feeds)
    watts = [r.power_w for r in known if r.power_w is not None]
    return {
        "names": [f"{name}:{number}" for name, number in feeds],
        "on": any(r.on for r in known) if whole else None,
        "power_w": _r(sum(watts), 1) if whole and len(watts) == len(feeds) else None,
    }


def rig_state(
    rig_id: RigId,
    identity: Identity | None,
    reading: Reading | None,
    desired: Desired | None,
    prices: Prices,
    *,
    group: str = "",
    pin: tuple[str, Override] | None = None,
    not_responding: bool = False,
    outlets: Mapping[str, Any] | None = None,
    efficiency: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One rig's retained state document; ``outlets`` (:func:`outlets_state`) for a rig wired
    to outlets, else null; ``efficiency``: the J/TH its policies use
    (:meth:`daemon.efficiency.Shown.as_dict`)."""
    obs = reading if isinstance(reading, Observation) else None
    ident = obs.identity if obs is not None else identity
    out: dict[str, Any] = {
        "rig": rig_id,
        "make": ident.make.value if ident else None,
        "model": ident.model if ident else None,
        "firmware": ident.firmware if ident else None,
        "driver": ident.driver if ident else None,
        "group": group,
        "online": obs is not None,
        "error": None,
        "mode": obs.mode.value if obs else Mode.UNKNOWN.value,
        "mining": obs.mining if obs else None,
        "hashrate_ths": _r(obs.hashrate_ths, 3) if obs else None,
        "power_w": _r(obs.power_w, 1) if obs else None,
        "power_source": obs.power_source.value if obs and obs.power_source else None,
        "power_limit_w": obs.power_limit_w if obs else None,
        "max_chip_temp_c": obs.max_chip_temp_c if obs else None,
        "efficiency_j_per_th": _r(obs.efficiency_j_per_th, 2) if obs else None,
        "efficiency": dict(efficiency) if efficiency is not None else None,
        "margin_usd_per_day": _r(margin_usd_per_day(obs, prices), 3) if obs else None,
        "observed_at": obs.observed_at if obs else None,
        "desired": None,
        "pinned": pin_state(*pin) if pin else None,
        "not_responding": not_responding,
        "outlets": dict(outlets) if outlets is not None else None,
    }
    if isinstance(reading, ObservationFailure):
        out["error"] = f"{reading.kind.value}: {rig_text(reading.detail)}"
    if desired is not None:
        out["desired"] = {
            "mode": desired.mode.value,
            "power_limit_w": desired.power_limit_w,
            "by": desired.decided_by,
            "reason": rig_text(desired.reason, MAX_REASON),
            "held_back": desired.held_back,
        }
    return out


def curtailed_kw(
    readings: Mapping[RigId, Reading],
    desired: Mapping[RigId, Desired],
    entries: Mapping[RigId, ModelEntry | None],
) -> float:
    """Load shed by curtailment: for each rig held below normal, its normal-mode nameplate
    power minus what it draws now (never negative)."""
    total_w = 0.0
    for rig_id, d in desired.items():
        if d.mode not in CURTAILED:
            continue
        entry = entries.get(rig_id)
        normal = entry.figures(Mode.NORMAL) if entry is not None else None
        if normal is None:
            continue
        reading = readings.get(rig_id)
        now_w = reading.power_w if isinstance(reading, Observation) and reading.power_w else 0.0
        total_w += max(0.0, normal.power_w - now_w)
    return total_w / 1000.0


def fleet_state(
    *,
    site: str,
    at: float,
    readings: Mapping[RigId, Reading],
    desired: Mapping[RigId, Desired],
    entries: Mapping[RigId, ModelEntry | None],
    prices: Prices,
    not_responding: int,
    dry_run: bool,
    policies: Iterable[str],
    pins: int,
    site_target: Mapping[str, Any] | None,
    manual_market: Mapping[str, Any],
    hashprice_source: str = "",
    power_price_source: str = "",
    hashprice_age_s: float | None = None,
    power_price_age_s: float | None = None,
    failed_policies: Iterable[str] = (),
) -> dict[str, Any]:
    """The retained fleet summary. In dry-run nothing is curtailed: ``curtailed`` and
    ``curtailed_kw`` are 0, and ``would_curtail``/``would_curtail_kw`` say what the decisions
    would curtail (they are null when the daemon acts)."""
    observed = [r for r in readings.values() if isinstance(r, Observation)]
    hashrate = sum(o.hashrate_ths for o in observed)
    power_w = sum(o.power_w or 0.0 for o in observed)
    estimated = sum(1 for o in observed if o.power_source is PowerSource.ESTIMATED)
    hashing = [o for o in observed if o.mining and o.hashrate_ths > 0 and o.power_w]
    point = _Point(
        Mode.NORMAL,
        sum(o.hashrate_ths for o in hashing),
        sum(o.power_w or 0.0 for o in hashing),
        PowerSource.ESTIMATED,
    )
    pp = prices.power_price_usd_per_kwh
    be = breakeven_hashprice(point, pp, prices.economics) if pp is not None else None
    decided = sum(1 for d in desired.values() if d.mode in CURTAILED)
    decided_kw = round(curtailed_kw(readings, desired, entries), 2)
    return {
        "site": site,
        "at": at,
        "rigs": len(readings),
        "online": len(observed),
        "hashing": len(hashing),
        "hashrate_ths": round(hashrate, 1),
        "power_kw": round(power_w / 1000.0, 2),
        "power_estimated_rigs": estimated,
        "curtailed": 0 if dry_run else decided,
        "curtailed_kw": 0.0 if dry_run else decided_kw,
        "would_curtail": decided if dry_run else None,
        "would_curtail_kw": decided_kw if dry_run else None,
        "not_responding": not_responding,
        "hashprice_usd_per_ph_day": _r(prices.hashprice_usd_per_ph_day, 3),
        "hashprice_source": hashprice_source,
        "hashprice_age_s": _r(hashprice_age_s, 1),
        "power_price_usd_per_kwh": _r(pp, 5),
        "power_price_source": power_price_source,
        "power_price_age_s": _r(power_price_age_s, 1),
        "breakeven_hashprice_usd_per_ph_day": _r(be, 3),
        "dry_run": dry_run,
        "policies": list(policies),
        "failed_policies": list(failed_policies),
        "pins": pins,
        "site_target": dict(site_target) if site_target else None,
        "manual_market": dict(manual_market),
    }


def command_event(result: CommandResult, dry_run: bool) -> dict[str, Any]:
    c = result.command
    return {
        "rig": c.rig_id,
        "mode": c.mode.value,
        "power_limit_w": c.power_limit_w,
        "attempt": c.attempt,
        "policy": c.decided_by,
        "reason": rig_text(c.reason, MAX_REASON),
        "result": result.outcome.value,
        "detail": rig_text(result.detail),
        "dry_run": dry_run,
        "at": result.at,
    }


def decision_key(d: Desired) -> tuple[Mode, int | None, str, bool]:
    """What a decision is: ``event/decision`` is published when this changes for a rig, not
    when only the reason's numbers move."""
    return (d.mode, d.power_limit_w, d.decided_by, d.held_back)


def decision_event(d: Desired, at: float, dry_run: bool) -> dict[str, Any]:
    return {
        "rig": d.rig_id,
        "mode": d.mode.value,
        "power_limit_w": d.power_limit_w,
        "by": d.decided_by,
        "reason": rig_text(d.reason, MAX_REASON),
        "held_back": d.held_back,
        "dry_run": dry_run,
        "at": at,
    }


def fault_event(rig_id: RigId, problem: str, at: float, recovered: bool = False) -> dict[str, Any]:
    return {"rig": rig_id, "problem": problem, "recovered": recovered, "at": at}


NEEDS_HANDS = "still silent after its power cycles of the day: somebody has to go and look"


def power_event(event: Mapping[str, object], dry_run: bool) -> dict[str, Any]:
    """``event/power``: a power cycle (``cause`` hung or requested; ``outlets`` switched, or
    the switch's ``error``), a requested cycle refused at its turn (``reason``), a rig that
    needs hands, or a thermal emergency cut (``reason`` the guard's), from the audit event
    daemon/power.py made of it."""
    kind = str(event["kind"])

    def text(key: str) -> str | None:
        value = event.get(key)
        return None if value is None else rig_text(str(value), MAX_REASON)

    cycles = event.get("cycle_today", event.get("cycles"))
    silent = event.get("silent_s")
    return {
        "rig": str(event["rig"]),
        "kind": kind,
        "cause": text("cause"),
        "reason": NEEDS_HANDS if kind == "needs_hands" else text("reason"),
        "silent_s": float(str(silent)) if silent is not None else None,
        "cycle_today": int(str(cycles)) if cycles is not None else None,
        "outlets": text("outlets"),
        "error": text("error"),
        "dry_run": bool(event.get("dry_run", dry_run)),
        "at": float(str(event["ts"])),
    }
