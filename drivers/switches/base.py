"""The one interface every power switch adapter implements: read outlets, switch an outlet.

Every method takes a deadline (``timeout_s``) and leaves as a :class:`DriverError` with a kind
and a detail naming the switch and the outlet: whatever else a subclass raises on a reply it did
not expect is turned into one here, for every switch driver (see :func:`_contained`).
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers.transport import DriverError
from policies.values import FailureKind

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OutletReading:
    """One outlet as the switch reports it now."""

    outlet: int
    """The outlet's number as the device numbers it (PDU outlets from 1, Shelly switches from
    0, Tasmota relays from 1)."""
    on: bool
    power_w: float | None = None
    """Active power through the outlet in W where the switch meters it per outlet, else None."""


@dataclass(frozen=True, slots=True)
class SwitchInfo:
    """What a switch can do."""

    kind: str
    metered: bool
    """True when the switch reports power per outlet."""


def _contained(method: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """``method`` with its deadline (the keyword ``timeout_s``) enforced and every failure left
    as a DriverError: a missed deadline is TIMEOUT, an OSError UNREACHABLE, anything else
    BAD_REPLY naming the exception."""

    @functools.wraps(method)
    async def wrapper(self: PowerSwitch, *args: Any, **kwargs: Any) -> _T:
        timeout_s = float(kwargs["timeout_s"])
        try:
            async with asyncio.timeout(timeout_s):
                return await method(self, *args, **kwargs)
        except DriverError:
            raise
        except TimeoutError:
            raise DriverError(
                FailureKind.TIMEOUT, f"{self.label}: no answer within {timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise DriverError(FailureKind.UNREACHABLE, f"{self.label}: {exc}") from None
        except Exception as exc:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label}: {type(exc).__name__}: {exc}"
            ) from None

    return wrapper


class PowerSwitch(abc.ABC):
    """Speaks to one switch (a PDU or a smart plug) at ``address``.

    Commands are absolute (outlet ``n`` on / off), never toggles, so a retried command is
    harmless. ``set_outlet`` returns once the switch accepted the command; that the outlet obeyed
    is for the next reading to show (a stuck relay answers OK and stays on).
    """

    kind: str = "abstract"
    metered: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("read_outlets", "set_outlet", "set_outlets"):
            if method in cls.__dict__:
                setattr(cls, method, _contained(cls.__dict__[method]))

    def __init__(self, name: str, address: str, outlets: tuple[int, ...]) -> None:
        self.name = name
        self.address = address
        self.outlets = outlets
        """The outlets rigpilot reads and switches on this device."""

    @property
    def label(self) -> str:
        return f"switch {self.name} ({self.kind} at {self.address})"

    @property
    def info(self) -> SwitchInfo:
        return SwitchInfo(kind=self.kind, metered=self.metered)

    def check_outlet(self, outlet: int) -> None:
        if outlet not in self.outlets:
            known = ", ".join(str(o) for o in self.outlets)
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"{self.label}: outlet {outlet} is not configured (configured: {known})",
            )

    @abc.abstractmethod
    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        """Every configured outlet's state (and power where metered), in one round where the
        protocol allows it."""

    @abc.abstractmethod
    async def set_outlet(self, outlet: int, on: bool, *, timeout_s: float) -> None:
        """Switch ``outlet`` on or off; DriverError when the switch refuses or cannot be reached."""

    async def set_outlets(self, states: Mapping[int, bool], *, timeout_s: float) -> None:
        """Switch several outlets (one request where the protocol allows it); by default one
        :meth:`set_outlet` after the other, within the one deadline."""
        for outlet, on in states.items():
            await self.set_outlet(outlet, on, timeout_s=timeout_s)

    async def aclose(self) -> None:  # noqa: B027 - most switches hold nothing open
        """Release sockets held between calls."""
