"""Switched, metered rack PDUs over SNMP v2c (pysnmp): APC PowerNet-MIB and Raritan PDU2-MIB.

One GET (in chunks of at most 24 variables) reads every configured outlet's state and power;
one SET switches an outlet. The OIDs, their value encodings and their sources are listed in
docs/power-switches.md. pysnmp is the client (not our own BER code, which the simulator's agent
uses), so the two ends of every test are written independently.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
    set_cmd,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import Integer32
from pysnmp.proto.rfc1905 import NoSuchInstance, NoSuchObject

from drivers.switches.base import OutletReading, PowerSwitch
from drivers.transport import DriverError
from policies.values import FailureKind

MAX_VARBINDS = 24  # per request: keeps every reply well inside one Ethernet-sized datagram

_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _engine() -> Any:
    """One pysnmp engine per event loop (it binds its socket to the loop it first runs on)."""
    loop = asyncio.get_running_loop()
    engine = _ENGINES.get(loop)
    if engine is None:
        engine = _ENGINES[loop] = SnmpEngine()
    return engine


class SnmpPdu(PowerSwitch):
    """A PDU whose outlets are a state column, a command column and a power column."""

    state_oid: str
    command_oid: str
    power_oid: str | None = None  # None: this PDU does not meter per outlet
    on_state: int
    off_state: int
    on_command: int
    off_command: int
    metered = True

    def __init__(
        self,
        name: str,
        address: str,
        outlets: tuple[int, ...],
        read_community: str = "public",
        write_community: str = "private",
        port: int = 161,
    ) -> None:
        super().__init__(name, address, outlets)
        self.read_community = read_community
        self.write_community = write_community
        self.port = port
        # The GET requests' objects, kept: pysnmp resolves an ObjectType against its MIB view
        # once and marks it clean, and resolving (even with lookupMib=False) was half of a
        # PDU read's CPU. A switch's read asks the same OIDs every sweep.
        self._get_objects: dict[tuple[str, ...], list[ObjectType]] = {}

    def state_of(self, outlet: int) -> str:
        return f"{self.state_oid}.{outlet}"

    def power_of(self, outlet: int) -> str | None:
        return None if self.power_oid is None else f"{self.power_oid}.{outlet}"

    def command_of(self, outlet: int) -> str:
        return f"{self.command_oid}.{outlet}"

    def power_w(self, outlet: int, raw: int) -> float:
        return float(raw)

    async def _request(
        self, oids: Sequence[str], timeout_s: float, values: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """GET ``oids`` (or SET them to ``values``, in one request); {oid: value} or
        DriverError."""
        target = await UdpTransportTarget.create(
            (self.address, self.port), timeout=timeout_s, retries=0
        )
        community = self.write_community if values is not None else self.read_community
        auth = CommunityData(community, mpModel=1)
        if values is None:
            asked = tuple(oids)
            objects = self._get_objects.get(asked)
            if objects is None:
                objects = self._get_objects[asked] = [ObjectType(ObjectIdentity(o)) for o in oids]
            result = await get_cmd(
                _engine(), auth, target, ContextData(), *objects, lookupMib=False
            )
        else:
            objects = [
                ObjectType(ObjectIdentity(o), Integer32(v))
                for o, v in zip(oids, values, strict=True)
            ]
            result = await set_cmd(
                _engine(), auth, target, ContextData(), *objects, lookupMib=False
            )
        indication, status, index, varbinds = result
        what = "SET" if values is not None else "GET"
        if indication:
            kind = (
                FailureKind.TIMEOUT
                if isinstance(indication, errind.RequestTimedOut)
                else FailureKind.UNREACHABLE
            )
            raise DriverError(kind, f"{self.label}: SNMP {what}: {indication}")
        if int(status):
            at = oids[int(index) - 1] if 0 < int(index) <= len(oids) else "?"
            hint = " (is the write community right?)" if int(status) in (6, 16, 17) else ""
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"{self.label}: SNMP {what} refused: {status.prettyPrint()} at {at}{hint}",
            )
        out: dict[str, Any] = {}
        for name, val in varbinds:
            key = str(name)
            if isinstance(val, NoSuchInstance | NoSuchObject):
                raise DriverError(
                    FailureKind.BAD_REPLY,
                    f"{self.label}: {key} does not exist on this PDU (wrong kind, or no such "
                    "outlet)",
                )
            out[key] = val
        missing = [o for o in oids if o not in out]
        if missing:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label}: reply lacks {', '.join(missing)}"
            )
        return out

    def _int(self, values: Mapping[str, Any], oid: str) -> int:
        val = values[oid]
        try:
            return int(val)
        except (TypeError, ValueError):
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"{self.label}: {oid} is {type(val).__name__} {val.prettyPrint()!r}, "
                "not an integer",
            ) from None

    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        oids: list[str] = []
        for n in self.outlets:
            oids.append(self.state_of(n))
            power_oid = self.power_of(n)
            if power_oid is not None:
                oids.append(power_oid)
        values: dict[str, Any] = {}
        for start in range(0, len(oids), MAX_VARBINDS):
            values.update(await self._request(oids[start : start + MAX_VARBINDS], timeout_s))
        readings: dict[int, OutletReading] = {}
        for n in self.outlets:
            state = self._int(values, self.state_of(n))
            if state not in (self.on_state, self.off_state):
                raise DriverError(
                    FailureKind.BAD_REPLY,
                    f"{self.label}: outlet {n} state {state} is neither on ({self.on_state}) "
                    f"nor off ({self.off_state})",
                )
            power_oid = self.power_of(n)
            power: float | None = None
            if power_oid is not None:
                raw = self._int(values, power_oid)
                if raw < 0:
                    raise DriverError(
                        FailureKind.BAD_REPLY, f"{self.label}: outlet {n} power {raw} W < 0"
                    )
                power = self.power_w(n, raw)
            readings[n] = OutletReading(n, state == self.on_state, power)
        return readings

    async def set_outlet(self, outlet: int, on: bool, *, timeout_s: float) -> None:
        self.check_outlet(outlet)
        command = self.on_command if on else self.off_command
        await self._request([self.command_of(outlet)], timeout_s, values=[command])

    async def set_outlets(self, states: Mapping[int, bool], *, timeout_s: float) -> None:
        """One SET per 24 outlets: a PDU applies every variable of a SET or none."""
        for outlet in states:
            self.check_outlet(outlet)
        items = sorted(states.items())
        for start in range(0, len(items), MAX_VARBINDS):
            chunk = items[start : start + MAX_VARBINDS]
            await self._request(
                [self.command_of(n) for n, _ in chunk],
                timeout_s,
                values=[self.on_command if on else self.off_command for _, on in chunk],
            )


class ApcPdu(SnmpPdu):
    """APC / Schneider Electric switched rack PDUs (AP79xx, AP86xx/88xx/89xx) by PowerNet-MIB.

    State: rPDUOutletStatusOutletState (outletStatusOn 1, outletStatusOff 2). Command:
    rPDUOutletControlOutletCommand (immediateOn 1, immediateOff 2). Power per outlet:
    rPDU2OutletMeteredStatusPower in W, on metered-by-outlet models (AP88xx/AP89xx) only; give
    ``metered = False`` for the others.
    """

    kind = "apc"
    state_oid = "1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"
    command_oid = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
    power_oid: str | None = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7"
    on_state, off_state = 1, 2
    on_command, off_command = 1, 2


class ApcPduUnmetered(ApcPdu):
    """APC switched PDUs without per-outlet metering (AP79xx, AP86xx)."""

    kind = "apc-switched"
    power_oid = None
    metered = False


class RaritanPdu(SnmpPdu):
    """Raritan PX2/PX3 by PDU2-MIB (PDU 1 of a daisy chain).

    State: outletSwitchingState (on 7, off 8). Command: switchingOperation (off 0, on 1).
    Power: measurementsOutletSensorValue for activePower (sensor type 5), scaled by
    outletSensorDecimalDigits (read once).
    """

    kind = "raritan"
    state_oid = "1.3.6.1.4.1.13742.6.4.1.2.1.3.1"
    command_oid = "1.3.6.1.4.1.13742.6.4.1.2.1.2.1"
    power_oid: str | None = "1.3.6.1.4.1.13742.6.5.4.3.1.4.1"
    digits_oid = "1.3.6.1.4.1.13742.6.3.5.4.1.7.1"
    active_power = 5
    on_state, off_state = 7, 8
    on_command, off_command = 1, 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._digits: dict[int, int] = {}

    def power_of(self, outlet: int) -> str:
        return f"{self.power_oid}.{outlet}.{self.active_power}"

    def power_w(self, outlet: int, raw: int) -> float:
        return float(raw) / float(10 ** self._digits.get(outlet, 0))

    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        if not self._digits:
            oids = [f"{self.digits_oid}.{n}.{self.active_power}" for n in self.outlets]
            values: dict[str, Any] = {}
            for start in range(0, len(oids), MAX_VARBINDS):
                chunk = oids[start : start + MAX_VARBINDS]
                values.update(await self._request(chunk, timeout_s))
            digits = {n: self._int(values, o) for n, o in zip(self.outlets, oids, strict=True)}
            if any(not 0 <= d <= 6 for d in digits.values()):
                raise DriverError(
                    FailureKind.BAD_REPLY, f"{self.label}: implausible decimal digits {digits}"
                )
            self._digits = digits
        return await super().read_outlets(timeout_s=timeout_s)
