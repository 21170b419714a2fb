"""Many sites on one broker: what the retained topics say about each (``rigpilot fleet``).

Pure: retained payloads by topic in, one :class:`SiteView` per site out, with every payload
that cannot be read named in its ``problems`` (never an exception). The topics read are the
daemon's retained ``bridge/state`` (its availability, last will ``offline``), ``bridge/info``
and ``fleet/state``, and ``link/state``: the notification a Mosquitto bridge publishes when a
site's broker is bridged to this one (``1`` while the link is up, ``0`` as its last will;
docs/multi-site.md). A site is listed as soon as one of them is seen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from policies.values import rig_text

AVAILABILITY: Final = "bridge/state"
INFO: Final = "bridge/info"
FLEET: Final = "fleet/state"
LINK: Final = "link/state"
KINDS: Final = (AVAILABILITY, INFO, FLEET, LINK)

# fleet/state fields the view reads, and what each must be.
_NUMBERS: Final = ("hashrate_ths", "power_kw", "curtailed_kw", "at")
_COUNTS: Final = ("rigs", "online", "curtailed")


def filters(base: str) -> list[str]:
    """The subscriptions that see every site's retained topics under ``base``."""
    return [f"{base}/+/{kind}" for kind in KINDS]


@dataclass
class SiteView:
    """One site as its retained topics show it (None: not seen)."""

    site: str
    availability: str | None = None  # "online" / "offline"
    link: bool | None = None  # the bridge's notification; None: not bridged (or not seen)
    info: dict[str, Any] | None = None
    fleet: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``link down`` (the bridge to the site is down: what else is shown is its last word),
        ``offline`` (the daemon's last will, or a clean stop), ``online``, or ``unknown``."""
        if self.link is False:
            return "link down"
        if self.availability is not None:
            return self.availability
        return "unknown"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fleet_problems(doc: dict[str, Any]) -> list[str]:
    out = []
    for key in _NUMBERS:
        if key in doc and doc[key] is not None and not _number(doc[key]):
            out.append(f"{key} is not a number ({rig_text(repr(doc[key]), 40)})")
    for key in _COUNTS:
        value = doc.get(key)
        if key in doc and not (isinstance(value, int) and not isinstance(value, bool)):
            out.append(f"{key} is not a whole number ({rig_text(repr(value), 40)})")
    if "at" not in doc or doc["at"] is None:
        out.append("at (the tick's time) is missing")
    return out


def _json_object(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(payload)
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({rig_text(str(exc), 120)})"
    if not isinstance(doc, dict):
        return None, f"not a JSON object (a {type(doc).__name__})"
    return doc, None


def gather(base: str, retained: Mapping[str, bytes]) -> dict[str, SiteView]:  # noqa: PLR0912  one case per retained topic and its refusals
    """Every site seen in ``retained`` (topic -> payload), by name. An empty payload is a
    cleared retained message and is skipped; topics outside the four are ignored."""
    sites: dict[str, SiteView] = {}
    prefix = f"{base}/"
    for topic, payload in sorted(retained.items()):
        if not topic.startswith(prefix) or not payload:
            continue
        site, _, kind = topic[len(prefix) :].partition("/")
        if not site or kind not in KINDS:
            continue
        view = sites.setdefault(site, SiteView(site))
        shown = rig_text(repr(payload[:40]), 60)
        if kind == AVAILABILITY:
            if payload in (b"online", b"offline"):
                view.availability = payload.decode()
            else:
                view.problems.append(f"{topic}: expected online or offline, got {shown}")
        elif kind == LINK:
            if payload in (b"0", b"1"):
                view.link = payload == b"1"
            else:
                view.problems.append(f"{topic}: expected 1 or 0 (a bridge notice), got {shown}")
        else:
            doc, problem = _json_object(payload)
            if doc is not None and kind == FLEET:
                bad = _fleet_problems(doc)
                problem = "; ".join(bad) if bad else None
                doc = None if bad else doc
            if problem is not None:
                view.problems.append(f"{topic}: {problem}")
            elif kind == FLEET:
                view.fleet = doc
            else:
                view.info = doc
    return sites


def row(view: SiteView, now: float) -> dict[str, Any]:
    """The site's line of the view, as JSON-ready values (None: not known)."""
    f = view.fleet or {}
    rigs = f.get("rigs")
    dry_run = bool(f.get("dry_run"))
    curtailed = f.get("would_curtail") if dry_run else f.get("curtailed")
    share = curtailed / rigs if isinstance(curtailed, int) and rigs else None
    at = f.get("at")
    return {
        "site": view.site,
        "state": view.state,
        "availability": view.availability,
        "link": view.link,
        "rigs": rigs,
        "online": f.get("online"),
        "hashrate_ths": f.get("hashrate_ths"),
        "power_kw": f.get("power_kw"),
        "curtailed": curtailed,
        "curtailed_share": None if share is None else round(share, 4),
        "curtailed_kw": f.get("would_curtail_kw") if dry_run else f.get("curtailed_kw"),
        "dry_run": dry_run if view.fleet is not None else None,
        "last_tick_at": at,
        "last_tick_age_s": None if at is None else round(now - at, 1),
        "version": (view.info or {}).get("version"),
        # Another instance announces the same site (docs/mqtt.md, one controller per site).
        "conflict": None if view.info is None else bool(view.info.get("others")),
        "problems": list(view.problems),
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The view for a terminal: one line per site (the problems are told on stderr)."""
    head = ("SITE", "STATE", "RIGS", "TH/s", "kW", "CURTAILED", "LAST TICK")
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        rigs = "-" if r["rigs"] is None else f"{_fmt(r['online'], 'd')}/{r['rigs']}"
        curtailed = "-"
        if r["curtailed"] is not None:
            curtailed = f"{r['curtailed']} ({_fmt(r['curtailed_share'], '.0%')})"
            if r["dry_run"]:
                curtailed += " would (dry-run)"
        tick = "-"
        if r["last_tick_at"] is not None:
            when = datetime.fromtimestamp(r["last_tick_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            tick = f"{when} UTC ({_age(max(0.0, r['last_tick_age_s']))})"
        lines.append(
            (
                rig_text(r["site"], 40),
                r["state"] + (" CONFLICT" if r.get("conflict") else ""),
                rigs,
                _fmt(r["hashrate_ths"], ".1f"),
                _fmt(r["power_kw"], ".1f"),
                curtailed,
                tick,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
