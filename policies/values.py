"""Value types shared by drivers, policies and the daemon.

Immutable, plain data, importing nothing else of rigpilot's: the vocabulary the functional core
(policies, guards) and the imperative shell (drivers, feeds, MQTT, store) speak to each other.
Units are in the names; times are POSIX seconds (``float``) from an injected clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policies.timing import STOCK, Transition

RigId = str
"""A rig's stable identity: its address in a site, ``ip[:port]`` (e.g. ``10.0.4.17``)."""


class Make(StrEnum):
    ANTMINER = "antminer"
    WHATSMINER = "whatsminer"
    BRAIINS = "braiins"
    LUXOS = "luxos"
    VNISH = "vnish"
    EPIC = "epic"  # ePIC PowerPlay (umcOS) on Antminers
    OTHER = "other"


class Mode(StrEnum):
    """Operating modes (docs/architecture.md): what a rig is told to do, and is seen doing."""

    SLEEP = "sleep"  # hashboards off, control board up
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    LIMIT = "limit"  # a power limit in watts; see Intent.power_limit_w / Observation.power_limit_w
    OFF = "off"  # only where a rig or PDU really supports it
    UNKNOWN = "unknown"

    @property
    def power_rank(self) -> int:
        """The modes' power order when watts are not known: off < sleep < low < limit <
        normal < high, and unknown above all (assumed the worst). The one definition of it."""
        return _POWER_RANK[self]

    @property
    def hashing(self) -> bool:
        """True for the modes that hash at a catalogue point: low, normal, high."""
        return self in HASHING_MODES

    def nearest_safe(self, supported: frozenset[Mode]) -> Mode:
        """This mode if ``supported``, else the supported mode closest below it in power among
        sleep, low and normal (never ``limit``, which needs a setting of its own, nor ``off``,
        which cuts power), else sleep as the last resort."""
        if self in supported:
            return self
        rank = _POWER_RANK[self]
        below = [m for m in supported if m in _SAFE_STEPS and _POWER_RANK[m] < rank]
        return max(below, key=_POWER_RANK.__getitem__) if below else Mode.SLEEP


_POWER_RANK: dict[Mode, int] = {
    Mode.OFF: 0,
    Mode.SLEEP: 1,
    Mode.LOW: 2,
    Mode.LIMIT: 3,
    Mode.NORMAL: 4,
    Mode.HIGH: 5,
    Mode.UNKNOWN: 6,
}

HASHING_MODES: tuple[Mode, ...] = (Mode.LOW, Mode.NORMAL, Mode.HIGH)
"""The modes that hash, lowest power first (the one definition)."""

CURTAILED_MODES: frozenset[Mode] = frozenset({Mode.OFF, Mode.SLEEP, Mode.LOW, Mode.LIMIT})
"""A rig decided into one of these is curtailed (counted so in the tick's summary, the fleet
state, the metrics and the multi-site view: the one definition)."""

_SAFE_STEPS = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH})


class PowerSource(StrEnum):
    """Where an observation's watts came from; estimated figures are flagged wherever shown."""

    REPORTED = "reported"  # the rig's own PSU reading
    ESTIMATED = "estimated"  # model, mode and measured hashrate (stock Antminer reports none)
    METER = "meter"  # an external meter pushed to rigpilot


class FailureKind(StrEnum):
    """Why a rig could not be observed this cycle."""

    UNREACHABLE = "unreachable"  # connection refused, reset, no route
    TIMEOUT = "timeout"  # no complete answer before the per-rig deadline
    BAD_REPLY = "bad_reply"  # answered, but not what its firmware answers (garbage, bad JSON)
    UNKNOWN_MINER = "unknown_miner"  # nothing pyasic recognises at this address
    CIRCUIT_OPEN = "circuit_open"  # skipped: failing repeatedly, retried later with backoff
    IMPLAUSIBLE = "implausible"  # answered, with a hashrate no such rig can have (a lie)
    WORKER_LOST = "worker_lost"  # not read: its observer worker process died this cycle


@dataclass(frozen=True, slots=True)
class Identity:
    """What a rig is. Cached on disk; re-identified when it changes."""

    address: str
    make: Make
    model: str
    firmware: str
    driver: str  # the adapter that speaks to it, e.g. "antminer-stock", "whatsminer-v2"
    serial: str | None = None
    mac: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    """Driver-private facts worth caching (e.g. how pyasic classifies the rig)."""

    @property
    def rig_id(self) -> RigId:
        return self.address

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "make": self.make.value,
            "model": self.model,
            "firmware": self.firmware,
            "driver": self.driver,
            "serial": self.serial,
            "mac": self.mac,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        """Inverse of as_dict; KeyError/ValueError on a malformed entry."""
        return cls(
            address=str(data["address"]),
            make=Make(data["make"]),
            model=str(data["model"]),
            firmware=str(data["firmware"]),
            driver=str(data["driver"]),
            serial=None if data.get("serial") is None else str(data["serial"]),
            mac=None if data.get("mac") is None else str(data["mac"]),
            extra={str(k): str(v) for k, v in dict(data.get("extra") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Board:
    index: int
    hashrate_ths: float
    board_temp_c: float | None
    chip_temp_c: float | None
    chips: int | None
    alive: bool


@dataclass(frozen=True, slots=True)
class Observation:
    """One rig's state as read at ``observed_at``."""

    identity: Identity
    observed_at: float
    hashrate_ths: float
    power_w: float | None
    power_source: PowerSource | None
    mode: Mode
    mining: bool
    boards: tuple[Board, ...] = ()
    max_chip_temp_c: float | None = None
    inlet_c: float | None = None
    outlet_c: float | None = None
    ambient_c: float | None = None
    fan_rpm: tuple[int, ...] = ()
    power_limit_w: int | None = None
    errors: tuple[str, ...] = ()
    uptime_s: int | None = None
    model_unknown: bool = False
    """The model is not in the catalogue: read as reported, power never estimated."""

    @property
    def rig_id(self) -> RigId:
        return self.identity.rig_id

    @property
    def efficiency_j_per_th(self) -> float | None:
        if self.power_w is None or self.hashrate_ths <= 0:
            return None
        return self.power_w / self.hashrate_ths

    def as_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict (``rigpilot observe --json``)."""
        ident = self.identity
        return {
            "address": ident.address,
            "make": ident.make.value,
            "model": ident.model,
            "firmware": ident.firmware,
            "ok": True,
            "hashrate_ths": round(self.hashrate_ths, 3),
            "power_w": None if self.power_w is None else round(self.power_w, 1),
            "power_source": None if self.power_source is None else self.power_source.value,
            "max_chip_temp_c": self.max_chip_temp_c,
            "mode": self.mode.value,
            "mining": self.mining,
            "errors": list(self.errors),
            "model_unknown": self.model_unknown,
            "power_limit_w": self.power_limit_w,
            "inlet_c": self.inlet_c,
            "outlet_c": self.outlet_c,
            "ambient_c": self.ambient_c,
            "fan_rpm": list(self.fan_rpm),
            "boards": [
                {
                    "index": b.index,
                    "hashrate_ths": round(b.hashrate_ths, 3),
                    "board_temp_c": b.board_temp_c,
                    "chip_temp_c": b.chip_temp_c,
                    "chips": b.chips,
                    "alive": b.alive,
                }
                for b in self.boards
            ],
            "uptime_s": self.uptime_s,
            "observed_at": self.observed_at,
        }


@dataclass(frozen=True, slots=True)
class ObservationFailure:
    """A rig that could not be observed this cycle, and why."""

    address: str
    kind: FailureKind
    detail: str
    observed_at: float
    identity: Identity | None = None
    consecutive: int = 1

    @property
    def rig_id(self) -> RigId:
        return self.address

    def as_dict(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "address": self.address,
            "make": ident.make.value if ident else None,
            "model": ident.model if ident else None,
            "firmware": ident.firmware if ident else None,
            "ok": False,
            "error": self.kind.value,
            "detail": self.detail,
            "hashrate_ths": None,
            "power_w": None,
            "power_source": None,
            "max_chip_temp_c": None,
            "mode": None,
            "mining": None,
            "errors": [f"{self.kind.value}: {self.detail}"],
            "consecutive_failures": self.consecutive,
            "observed_at": self.observed_at,
        }


Reading = Observation | ObservationFailure


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver can do to its rig: the one model the reconciler, the MQTT answers, Home
    Assistant discovery and the audit read (docs/drivers.md, "Supported firmware").

    ``modes`` are exactly the modes the rig can be put in and confirmed in by observation
    (daemon/reconciler.py ``satisfied``); ``limit`` is declared only with the watts it takes
    (a range, or presets), so a request is checked before anything is sent.
    """

    modes: frozenset[Mode]
    power_limit: bool = False
    power_limit_range_w: tuple[int, int] | None = None
    """The watts ``limit`` takes, lowest and highest (inclusive)."""
    power_limit_presets_w: tuple[int, ...] | None = None
    """When the firmware limits power by presets (VNish): the only watts ``limit`` takes,
    ascending; ``power_limit_range_w`` is then their lowest and highest."""
    reports_power: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    transition: Transition = STOCK
    """How long the firmware takes to settle after a change (policies/timing.py)."""


class QuoteKind(StrEnum):
    HASHPRICE = "hashprice"  # value in USD per PH/s per day
    POWER_PRICE = "power_price"  # value in the site currency per kWh, adders included


QUOTE_UNITS = {QuoteKind.HASHPRICE: "USD/PH/day", QuoteKind.POWER_PRICE: "USD/kWh"}


@dataclass(frozen=True, slots=True)
class Quote:
    """A market input: value, unit, where it came from, when it was true, and how long for.

    ``observed_at`` is when the source says the value applies (a price interval's start, a
    block's time) or, for sources that do not say, when it was fetched. A quote older than
    ``ttl_s`` is stale: it is still shown, and never drives a change.
    """

    kind: QuoteKind
    value: float
    unit: str
    source: str
    observed_at: float
    ttl_s: float
    detail: str = ""

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.observed_at)

    def stale(self, now: float) -> bool:
        return self.age_s(now) > self.ttl_s


MAX_RIG_TEXT = 200
"""Characters of one rig-supplied string (an error message, a status) kept where it is shown or
logged; identity fields (model, firmware, serial, MAC) keep 64."""


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def rig_text(value: object, limit: int = MAX_RIG_TEXT) -> str:
    """Text from a rig, made safe to show: every non-printable character (C0 and C1 controls,
    DEL, bidirectional overrides, line separators) escaped as ``\\xNN`` / ``\\uNNNN`` (an ANSI
    or OSC sequence cannot clear a terminal or set its title), and cut to ``limit`` characters
    with "…" marking the cut."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    return text + "…" if cut else text
