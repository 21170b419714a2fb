"""The one interface every rig adapter implements."""

from __future__ import annotations

import abc
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers import catalogue, parse
from drivers.pyasic_miner import NotClassified
from drivers.transport import DriverError, RigChanged
from policies.values import Capabilities, FailureKind, Identity, Mode, Observation

_T = TypeVar("_T")


def _contained(method: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """``method``, with any exception but DriverError, UnsupportedMode and cancellation turned
    into a DriverError: a missing pyasic classification (NotClassified) is UNKNOWN_MINER
    (re-identify the rig), anything else BAD_REPLY naming the exception."""

    @functools.wraps(method)
    async def wrapper(self: RigDriver, *args: Any, **kwargs: Any) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except (DriverError, UnsupportedMode):
            raise
        except NotClassified as exc:
            raise DriverError(FailureKind.UNKNOWN_MINER, f"{exc}: re-identify it") from None
        except Exception as exc:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.name}: {type(exc).__name__}: {exc}"
            ) from None

    return wrapper


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What happened when a command was sent.

    ``sent`` means the rig accepted the request, not that it obeyed: some firmwares answer OK and
    do nothing (pyasic passes that on as True). Success is the next observation showing the new
    state; drivers mark themselves so that observation reads the authoritative setting.
    """

    sent: bool
    mode: Mode
    power_limit_w: int | None = None
    detail: str = ""


class UnsupportedMode(ValueError):
    """The rig cannot do what was asked; the message names the rig, the mode and what it can do."""


class RigDriver(abc.ABC):
    """Speaks to one rig. Instances keep per-rig state (e.g. what mode was last confirmed).

    Every failure of ``observe`` and ``apply`` leaves them as a DriverError with a kind and a
    detail (or UnsupportedMode): whatever else a subclass's code raises on a reply it did not
    expect is turned into one here, for every driver (see :func:`_contained`).
    """

    name: str = "abstract"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("observe", "apply"):
            if method in cls.__dict__:
                setattr(cls, method, _contained(cls.__dict__[method]))

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        # Looked up once per rig, not per observation: the poll path is hot.
        self.entry = catalogue.lookup(identity.make.value, identity.model)
        self.expected_boards: int | None = self.entry.hashboards if self.entry else None
        """Hashboards the model has: a board the firmware stops listing is reported dead."""
        self.bounds = parse.bounds_for(self.entry)
        """The most this rig can plausibly hash and draw (a reading beyond is implausible)."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The modes and power controls this rig supports."""

    @abc.abstractmethod
    async def observe(self, timeout_s: float, now: float) -> Observation:
        """Read the rig within ``timeout_s``; raise DriverError with the reason otherwise.

        ``now`` (POSIX seconds, from the caller's clock) stamps the observation.
        """

    @abc.abstractmethod
    async def apply(
        self,
        mode: Mode,
        power_limit_w: int | None,
        timeout_s: float,
    ) -> ApplyResult:
        """Send an absolute, idempotent command: be in ``mode`` (with a limit for LIMIT).

        Raises UnsupportedMode when the rig cannot do it, DriverError when it cannot be reached.
        """

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise RigChanged when a reply's model/firmware fingerprint differs from the one
        cached at identification (a firmware update, another rig at this address)."""
        expected = self.identity.extra.get("fingerprint")
        if expected and fingerprint and fingerprint != expected:
            raise RigChanged(f"rig changed: now {fingerprint!r}, was {expected!r}")

    def check_supported(self, mode: Mode, power_limit_w: int | None) -> None:
        caps = self.capabilities
        if mode not in caps.modes:
            can = ", ".join(sorted(m.value for m in caps.modes))
            raise UnsupportedMode(
                f"{self.identity.address} ({self.identity.model}, {self.name}) cannot do "
                f"{mode.value}; it supports: {can}"
            )
        if mode is Mode.LIMIT:
            if power_limit_w is None:
                raise UnsupportedMode("mode limit needs power_limit_w")
            presets = caps.power_limit_presets_w
            if presets is not None and power_limit_w not in presets:
                watts = ", ".join(str(w) for w in presets)
                raise UnsupportedMode(
                    f"{self.identity.address}: power limit {power_limit_w} W is not one of "
                    f"the rig's presets ({watts} W)"
                )
            bounds = caps.power_limit_range_w
            if bounds and not bounds[0] <= power_limit_w <= bounds[1]:
                raise UnsupportedMode(
                    f"{self.identity.address}: power limit {power_limit_w} W is outside "
                    f"{bounds[0]}..{bounds[1]} W"
                )
