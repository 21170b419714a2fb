"""Control-room commands: their JSON shapes, and parsing that never raises past a rejection.

Pure: bytes in, a validated request or a :class:`Rejected` naming the problem out. Every shape
forbids unknown fields, bounds every string and list, and refuses NaN and infinities. Commands
are absolute ("these rigs: sleep"), so repeating one is harmless; a ``transaction`` id (or MQTT 5
correlation data) additionally lets the desk recognise a redelivery and not apply it twice.

The catalogue of commands, with examples, is docs/mqtt.md; docs/mqtt-asyncapi.json is generated
from these models (``python -m daemon.mqtt.asyncapi``).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from policies.values import Mode

MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_RIGS_PER_COMMAND: Final = 10_000
MAX_PIN_S: Final = 30 * 86400.0
DEFAULT_SET_FOR_S: Final = 86400.0
MAX_WAIT_S: Final = 86400.0
MAX_ERRORS_SHOWN: Final = 5

Name = Annotated[str, Field(min_length=1, max_length=64)]
RigName = Annotated[str, Field(min_length=1, max_length=255)]


def _is_true(value: bool) -> bool:
    if value is not True:
        raise ValueError("Input should be true (or leave the field out)")
    return value


AllRigs = Annotated[
    bool,
    Strict(),
    AfterValidator(_is_true),
    WithJsonSchema({"type": "boolean", "const": True}),
]
"""``"all": true``, and only ``true``: a plain ``Literal[True]`` lets pydantic accept ``1`` and
``1.0`` (they compare equal to ``True``), and one stray ``1`` would act on every rig."""


class SetMode(StrEnum):
    """What ``set`` may ask for: an operating mode, or ``auto`` (hand back to the policies).
    ``off`` only for rigs wired to outlets (docs/power-switches.md)."""

    OFF = "off"
    SLEEP = "sleep"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    LIMIT = "limit"
    AUTO = "auto"

    def mode(self) -> Mode | None:
        return None if self is SetMode.AUTO else Mode(self.value)


class PinMode(StrEnum):
    OFF = "off"
    SLEEP = "sleep"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    LIMIT = "limit"


class MarketInput(StrEnum):
    HASHPRICE = "hashprice"  # USD/PH/day
    POWER_PRICE = "power_price"  # the site's currency per kWh, all-in


class Request(BaseModel):
    """Fields every command may carry."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=255, strict=True
    )

    transaction: Name | None = Field(
        default=None,
        description="Client's id, echoed in every answer; redeliveries with the "
        "same id are recognised and not applied twice.",
    )
    expires_at: float | None = Field(
        default=None, description="POSIX seconds; a command arriving later is rejected."
    )
    by: Name | None = Field(default=None, description="Who asks (shown in the audit log).")


class Targeted(Request):
    """A command addressed to rigs: exactly one of ``rig``, ``rigs``, ``group`` or ``all``."""

    rig: RigName | None = None
    rigs: Annotated[list[RigName], Field(min_length=1, max_length=MAX_RIGS_PER_COMMAND)] | None = (
        None
    )
    group: Name | None = None
    all: AllRigs | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Targeted:
        given = [k for k in ("rig", "rigs", "group", "all") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "name the rigs with exactly one of rig, rigs, group or all"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


def _check_limit(mode: str, power_limit_w: int | None) -> None:
    if mode == "limit" and power_limit_w is None:
        raise ValueError("mode 'limit' needs power_limit_w")
    if mode != "limit" and power_limit_w is not None:
        raise ValueError("power_limit_w goes with mode 'limit' only")


class SetCommand(Targeted):
    """Pin rigs to a mode (or ``auto``: back to the policies) and answer once observed."""

    mode: SetMode
    power_limit_w: Annotated[int, Field(ge=100, le=100_000)] | None = None
    for_s: Annotated[float, Field(gt=0, le=MAX_PIN_S)] = DEFAULT_SET_FOR_S
    bypass_dwell: bool = True
    timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S)] | None = None

    @model_validator(mode="after")
    def _limit(self) -> SetCommand:
        _check_limit(self.mode.value, self.power_limit_w)
        return self


class CurtailCommand(Targeted):
    """Pin rigs to sleep and answer once they are observed asleep."""

    for_s: Annotated[float, Field(gt=0, le=MAX_PIN_S)] = DEFAULT_SET_FOR_S
    bypass_dwell: bool = True
    timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S)] | None = None


class ResumeCommand(Targeted):
    """Remove every pin on these rigs: the policies decide again."""


class PinCommand(Targeted):
    """Pin rigs to a mode until a time; the minimum dwell applies unless ``bypass_dwell``."""

    mode: PinMode
    power_limit_w: Annotated[int, Field(ge=100, le=100_000)] | None = None
    until: float | None = None
    for_s: Annotated[float, Field(gt=0, le=MAX_PIN_S)] | None = None
    bypass_dwell: bool = False

    @model_validator(mode="after")
    def _expiry(self) -> PinCommand:
        _check_limit(self.mode.value, self.power_limit_w)
        if (self.until is None) == (self.for_s is None):
            raise ValueError("a pin needs exactly one of until (POSIX seconds) or for_s")
        return self


class UnpinCommand(Request):
    """Remove one pin by its id, or every pin on the named rigs."""

    pin: Name | None = None
    rig: RigName | None = None
    rigs: Annotated[list[RigName], Field(min_length=1, max_length=MAX_RIGS_PER_COMMAND)] | None = (
        None
    )
    group: Name | None = None
    all: AllRigs | None = None

    @model_validator(mode="after")
    def _one(self) -> UnpinCommand:
        given = [k for k in ("pin", "rig", "rigs", "group", "all") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "name exactly one of pin, rig, rigs, group or all"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class SiteTargetCommand(Request):
    """Demand response: keep the site at or under ``kw`` until ``until`` (or for ``for_s``);
    ``kw`` null clears the target. Answered once the fleet is observed under it."""

    kw: Annotated[float, Field(gt=0, le=10_000_000)] | None
    until: float | None = None
    for_s: Annotated[float, Field(gt=0, le=MAX_PIN_S)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S)] | None = None

    @model_validator(mode="after")
    def _expiry(self) -> SiteTargetCommand:
        if self.kw is not None and (self.until is None) == (self.for_s is None):
            raise ValueError("a site target needs exactly one of until (POSIX seconds) or for_s")
        if self.kw is None and (self.until is not None or self.for_s is not None):
            raise ValueError("kw null clears the target; it takes no until or for_s")
        return self


class MarketSetCommand(Request):
    """Set a market input by hand; it outranks every feed until it expires."""

    input: MarketInput
    value: float
    for_s: Annotated[float, Field(ge=60, le=7 * 86400.0)] = 3600.0


class MarketClearCommand(Request):
    """Drop a hand-set market input: the feeds decide again."""

    input: MarketInput


class StatusCommand(Request):
    """The fleet summary; with ``rigs`` true, every rig's state too."""

    rigs: bool = False


class RetryCommand(Targeted):
    """Forget that these rigs ignored their commands, so they are commanded again."""


class PowerCycleCommand(Targeted):
    """Power-cycle rigs at their outlets: off, then on through the site ramp; answered once each
    is back (hashing, if it was). Only rigs wired to outlets, none an operator pinned, within
    the [power_cycle] limits."""

    timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S)] | None = None


COMMANDS: Final[dict[str, type[Request]]] = {
    "set": SetCommand,
    "curtail": CurtailCommand,
    "resume": ResumeCommand,
    "pin": PinCommand,
    "unpin": UnpinCommand,
    "site_target": SiteTargetCommand,
    "market_set": MarketSetCommand,
    "market_clear": MarketClearCommand,
    "status": StatusCommand,
    "retry": RetryCommand,
    "power_cycle": PowerCycleCommand,
}

LONG_COMMANDS: Final = frozenset({"set", "curtail", "site_target", "power_cycle"})
"""Answered "accepted" at once and "done"/"failed" once the fleet is observed."""


class Rejected(Exception):
    """A command that will not be applied, and why (sent back as the answer)."""

    def __init__(self, reason: str, transaction: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transaction = transaction


def parse(command: str, payload: bytes, now: float) -> Request:
    """The validated request, or :class:`Rejected` naming every problem (never anything else).

    ``now`` is only compared with the request's ``expires_at``.
    """
    model = COMMANDS.get(command)
    if model is None:
        raise Rejected(
            f"unknown command {command!r}; commands: {', '.join(sorted(COMMANDS))}",
            transaction_of(payload[:MAX_PAYLOAD_BYTES]),
        )
    if len(payload) > MAX_PAYLOAD_BYTES:  # not parsed at all, so no transaction to echo
        raise Rejected(f"payload too large: {len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    if not payload.strip():
        raise Rejected(
            "invalid command: empty payload (a command is a JSON object; one without "
            "arguments is {})"
        )
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(
            f"invalid command: payload is not UTF-8 text (byte 0x{payload[exc.start]:02x} at "
            f"offset {exc.start}); a command is a JSON object"
        ) from None
    try:
        request = model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        raise Rejected(describe(exc), transaction_of(payload)) from None
    except (ValueError, TypeError, RecursionError) as exc:  # pragma: no cover - pydantic wraps
        raise Rejected(f"invalid payload: {exc}", transaction_of(payload)) from None
    if request.expires_at is not None and request.expires_at <= now:
        raise Rejected(
            f"expired: expires_at {request.expires_at:.3f} is {now - request.expires_at:.1f} s "
            "in the past",
            request.transaction,
        )
    return request


def describe(exc: ValidationError) -> str:
    """A one-line account of what is wrong, field by field (the first few)."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors[:MAX_ERRORS_SHOWN]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(errors) - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid command: " + "; ".join(parts)


def transaction_of(payload: bytes) -> str | None:
    """Best effort: the ``transaction`` of a payload that failed validation, so the answer
    can still be matched by the client."""
    try:
        data: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        tx = data.get("transaction")
        if isinstance(tx, str) and 0 < len(tx) <= 64:
            return tx
    return None
