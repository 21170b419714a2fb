"""The operator state: what the control room has asked for, as one value.

One :class:`OperatorState` per daemon holds

- ``pins``: operator overrides by pin id (the newest pin wins: pinning rigs takes them out of
  older pins, so the guards never break ties between overlapping overrides);
- ``site_target``: a site power target (demand response), until it expires;
- ``prices``: hand-set prices by kind, which outrank the feeds until their time-to-live ends
  (the market reads this very mapping, as its manual quotes, each tick);
- ``waits``: commands accepted and still waiting for their final answer;
- ``requests``: the request ids seen (transaction ids, MQTT 5 correlation data), with what each
  asked and its final answer, so a redelivery is recognised and not applied twice.

Who uses it: the control loop reads it once per tick (:meth:`OperatorState.overrides` and
:meth:`OperatorState.active_site_target`, both of which drop what has expired); the MQTT
command desk changes it only through the methods below; ``daemon/persist.py`` saves and
restores it (:meth:`OperatorState.to_docs`, :meth:`OperatorState.restore_docs`) without
knowing anything of MQTT. Nothing here does I/O apart from logging.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import structlog

from policies.guards import Override
from policies.values import Mode, Quote, QuoteKind, RigId

log = structlog.get_logger("operator")

SEEN_MAX: Final = 100_000
"""The most request ids remembered; the oldest go first."""
SEEN_TTL_S: Final = 86400.0
"""How long a request id is remembered."""

RequestKey = tuple[str, str]
"""(command, id): a request id is unique per command."""
SeenRow = tuple[str, str, float, dict[str, Any] | None, str | None]
"""A request id for the store: command, id, when it arrived, its final answer (or None), and
what it asked (JSON of its fingerprint, or None when only the answer is new)."""


@dataclass(frozen=True, slots=True)
class SiteTarget:
    """A site power target set by the control room (demand response), until ``until``."""

    kw: float
    until: float
    by: str

    def active(self, now: float) -> bool:
        return now < self.until


@dataclass(frozen=True, slots=True)
class Envelope:
    """One request as it arrived, with where its answers go."""

    command: str
    payload: bytes
    received_at: float
    response_topic: str | None = None  # MQTT 5, already checked by the bridge
    correlation_data: bytes | None = None
    retained: bool = False  # arrived with the retain flag: never applied


@dataclass(frozen=True, slots=True)
class Pin:
    """An operator override under an id the control room can name to remove it."""

    id: str
    override: Override
    transaction: str | None


@dataclass
class CycleWait:
    """How a ``power_cycle`` request is getting on, rig by rig (the desk updates it each tick
    from the tick's power events and observations)."""

    hashing: list[RigId] = field(default_factory=list)
    """Rigs seen hashing when asked: back means hashing again."""
    cycled: dict[RigId, float] = field(default_factory=dict)
    """When each rig's outlets were switched off (in dry-run: would have been)."""
    gone: list[RigId] = field(default_factory=list)
    """Rigs seen gone (not answering, or observed off) after their cycle."""
    failed: dict[RigId, str] = field(default_factory=dict)
    """Rigs refused at their turn, or whose switch failed, and why."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "hashing": self.hashing,
            "cycled": self.cycled,
            "gone": self.gone,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CycleWait:
        return cls(
            [str(r) for r in d.get("hashing") or []],
            {str(r): float(t) for r, t in (d.get("cycled") or {}).items()},
            [str(r) for r in d.get("gone") or []],
            {str(r): str(w) for r, w in (d.get("failed") or {}).items()},
        )


@dataclass
class Wait:
    """An accepted command waiting for the fleet to be observed doing what it asked: rigs in
    ``mode`` (a pin), the site at or under ``kw`` (a site target), or rigs power-cycled and
    back (``cycle``), until ``deadline``."""

    envelope: Envelope
    command: str
    transaction: str | None
    deadline: float
    started: float
    rigs: list[RigId] = field(default_factory=list)
    mode: Mode | None = None
    power_limit_w: int | None = None
    pin_id: str | None = None
    kw: float | None = None
    cycle: CycleWait | None = None

    def to_dict(self) -> dict[str, Any]:
        env = self.envelope
        return {
            "command": self.command,
            "payload": env.payload.decode("utf-8", "replace"),
            "received_at": env.received_at,
            "response_topic": env.response_topic,
            "correlation_data": env.correlation_data.hex() if env.correlation_data else None,
            "transaction": self.transaction,
            "deadline": self.deadline,
            "started": self.started,
            "rigs": self.rigs,
            "mode": self.mode.value if self.mode else None,
            "power_limit_w": self.power_limit_w,
            "pin_id": self.pin_id,
            "kw": self.kw,
            "cycle": self.cycle.to_dict() if self.cycle is not None else None,
        }

    @classmethod
    def from_dict(cls, w: Mapping[str, Any]) -> Wait:
        """Inverse of to_dict; KeyError/ValueError on a malformed document."""
        corr = w.get("correlation_data")
        env = Envelope(
            str(w["command"]),
            str(w.get("payload", "")).encode(),
            float(w["received_at"]),
            w.get("response_topic"),
            bytes.fromhex(corr) if corr else None,
        )
        return cls(
            env,
            str(w["command"]),
            w.get("transaction"),
            float(w["deadline"]),
            float(w["started"]),
            [str(r) for r in w.get("rigs") or []],
            Mode(w["mode"]) if w.get("mode") else None,
            w.get("power_limit_w"),
            w.get("pin_id"),
            w.get("kw"),
            CycleWait.from_dict(w["cycle"]) if w.get("cycle") else None,
        )


@dataclass
class SeenRequests:
    """The request ids seen, oldest first, with what each asked and its final answer."""

    at: OrderedDict[RequestKey, float] = field(default_factory=OrderedDict)
    firsts: dict[RequestKey, tuple[str, str]] = field(default_factory=dict)
    """Each request's (digest, shown): what identifies its content, and how it is named."""
    finals: dict[RequestKey, dict[str, Any]] = field(default_factory=dict)
    unsaved: list[SeenRow] = field(default_factory=list)

    def remember(self, key: RequestKey, now: float, first: tuple[str, str]) -> bool:
        """True if ``key`` was seen already; otherwise remember it and what it asked (ids
        older than SEEN_TTL_S, or past SEEN_MAX, are forgotten first)."""
        while self.at:
            oldest, at = next(iter(self.at.items()))
            if now - at <= SEEN_TTL_S and len(self.at) < SEEN_MAX:
                break
            del self.at[oldest]
            self.finals.pop(oldest, None)
            self.firsts.pop(oldest, None)
        if key in self.at:
            return True
        self.at[key] = now
        self.firsts[key] = first
        self.unsaved.append((key[0], key[1], now, None, _json_list(first)))
        return False

    def answered(self, key: RequestKey, body: dict[str, Any]) -> None:
        """Record the final answer to a remembered request (ignored for one not remembered)."""
        if key in self.at:
            self.finals[key] = body
            self.unsaved.append((key[0], key[1], self.at[key], body, None))

    def take_unsaved(self) -> list[SeenRow]:
        """The rows recorded since the last call (for the store)."""
        out, self.unsaved = self.unsaved, []
        return out

    def restore(
        self, seen: Mapping[RequestKey, tuple[float, dict[str, Any] | None, str | None]]
    ) -> None:
        for key, (at, final, first) in sorted(seen.items(), key=lambda kv: kv[1][0]):
            self.at[key] = at
            if final is not None:
                self.finals[key] = final
            if first is not None:
                try:
                    digest, shown = _from_json_list(first)
                    self.firsts[key] = (str(digest), str(shown))
                except (ValueError, TypeError):
                    log.warning("store.request_unreadable", command=key[0], id=key[1])


@dataclass
class OperatorState:
    """Everything the control room has set (module docstring). Change it through the methods:
    each keeps pins, overrides and expiry consistent and logs what it did."""

    pins: dict[str, Pin] = field(default_factory=dict)
    site_target: SiteTarget | None = None
    prices: dict[QuoteKind, Quote] = field(default_factory=dict)
    waits: list[Wait] = field(default_factory=list)
    requests: SeenRequests = field(default_factory=SeenRequests)

    # -- pins --------------------------------------------------------------------------------

    def overrides(self, now: float | None = None) -> list[Override]:
        """The pins' overrides; with ``now``, pins expired by then are dropped first."""
        if now is not None:
            self.expire_pins(now)
        return [p.override for p in self.pins.values()]

    def pinned(self) -> dict[RigId, tuple[str, Override]]:
        """Each pinned rig's pin id and override (built once per tick, not searched per rig)."""
        return {r: (p.id, p.override) for p in self.pins.values() for r in p.override.rig_ids}

    def pin(self, override: Override, transaction: str | None = None) -> Pin:
        """Add a pin for ``override``; the newest pin wins, so older pins let go of its rigs."""
        self.release(override.rig_ids)
        pin = Pin(uuid.uuid4().hex[:12], override, transaction)
        self.pins[pin.id] = pin
        return pin

    def release(self, rigs: Iterable[RigId]) -> int:
        """Take ``rigs`` out of every pin (dropping emptied pins); how many rig pins went."""
        drop = set(rigs)
        released = 0
        for pin_id, pin in list(self.pins.items()):
            covered = pin.override.rig_ids & drop
            if not covered:
                continue
            released += len(covered)
            rest = pin.override.rig_ids - drop
            if rest:
                self.pins[pin_id] = replace(pin, override=replace(pin.override, rig_ids=rest))
            else:
                del self.pins[pin_id]
        return released

    def unpin(self, pin_id: str) -> bool:
        """Remove pin ``pin_id``; False if there is none."""
        return self.pins.pop(pin_id, None) is not None

    def expire_pins(self, now: float) -> list[Pin]:
        """Drop the pins no longer active at ``now``; the ones dropped."""
        gone = [p for p in self.pins.values() if not p.override.active(now)]
        for pin in gone:
            log.info("pin.expired", pin=pin.id, mode=pin.override.mode.value)
            del self.pins[pin.id]
        return gone

    # -- site target -------------------------------------------------------------------------

    def set_site_target(self, target: SiteTarget | None) -> SiteTarget | None:
        """Set (or clear, with None) the site target; the one it replaces."""
        old, self.site_target = self.site_target, target
        return old

    def active_site_target(self, now: float) -> SiteTarget | None:
        """The site target in force at ``now``; an expired one is dropped (and logged)."""
        target = self.site_target
        if target is not None and not target.active(now):
            log.info("site_target.expired", kw=target.kw, by=target.by)
            self.site_target = None
            return None
        return target

    # -- hand-set prices ---------------------------------------------------------------------

    def set_price(self, quote: Quote) -> None:
        """A hand-set price: it outranks the feeds until its ``ttl_s`` runs out."""
        self.prices[quote.kind] = quote
        log.info("market.manual_set", kind=quote.kind.value, value=quote.value, by=quote.detail)

    def clear_price(self, kind: QuoteKind) -> Quote | None:
        """Back to the feeds for ``kind``; the hand-set quote removed, if any."""
        quote = self.prices.pop(kind, None)
        if quote is not None:
            log.info("market.manual_cleared", kind=kind.value)
        return quote

    # -- waits -------------------------------------------------------------------------------

    def wait(self, wait: Wait) -> None:
        self.waits.append(wait)

    def settle_waits(self, keep: Sequence[Wait]) -> None:
        """Keep only ``keep`` waiting (the others have had their final answer)."""
        self.waits = list(keep)

    # -- persistence -------------------------------------------------------------------------

    def to_docs(self) -> dict[str, dict[str, Any]]:
        """The store's documents: ``desk`` (pins and waits) and ``loop`` (site target and
        hand-set prices). The request ids are rows of their own (:class:`SeenRequests`)."""
        t = self.site_target
        return {
            "desk": {
                "pins": [
                    {"id": p.id, "transaction": p.transaction, "override": p.override.to_dict()}
                    for p in self.pins.values()
                ],
                "waits": [w.to_dict() for w in self.waits],
            },
            "loop": {
                "site_target": {"kw": t.kw, "until": t.until, "by": t.by} if t else None,
                "market_manual": [quote_dict(q) for q in self.prices.values()],
            },
        }

    def restore_pins(self, data: Mapping[str, Any]) -> None:
        """Pins and waits from the ``desk`` document; KeyError/ValueError/TypeError on a
        malformed one (then nothing is changed)."""
        pins = {}
        for p in data.get("pins") or []:
            pin = Pin(str(p["id"]), Override.from_dict(p["override"]), p.get("transaction"))
            pins[pin.id] = pin
        waits = [Wait.from_dict(w) for w in data.get("waits") or []]
        self.pins, self.waits = pins, waits

    def restore_targets(self, data: Mapping[str, Any], now: float) -> None:
        """Site target and hand-set prices (those still fresh at ``now``) from the ``loop``
        document; KeyError/ValueError/TypeError on a malformed one."""
        target = data.get("site_target")
        if target:
            self.site_target = SiteTarget(
                float(target["kw"]), float(target["until"]), str(target["by"])
            )
        for q in data.get("market_manual") or []:
            quote = quote_from_dict(q)
            if not quote.stale(now):
                self.prices[quote.kind] = quote


def quote_dict(q: Quote) -> dict[str, Any]:
    return {
        "kind": q.kind.value,
        "value": q.value,
        "unit": q.unit,
        "source": q.source,
        "observed_at": q.observed_at,
        "ttl_s": q.ttl_s,
        "detail": q.detail,
    }


def quote_from_dict(d: Mapping[str, Any]) -> Quote:
    return Quote(
        QuoteKind(d["kind"]),
        float(d["value"]),
        str(d["unit"]),
        str(d["source"]),
        float(d["observed_at"]),
        float(d["ttl_s"]),
        str(d.get("detail", "")),
    )


def _json_list(first: tuple[str, str]) -> str:
    return json.dumps(list(first))


def _from_json_list(text: str) -> tuple[str, str]:
    digest, shown = json.loads(text)
    return str(digest), str(shown)
