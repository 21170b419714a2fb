"""Switched, metered rack PDUs over SNMP v2c: APC PowerNet-MIB and Raritan PDU2-MIB.

One GET (in chunks of at most 24 variables) reads every configured outlet's state and power;
one SET switches an outlet. The OIDs, their value encodings and their sources are listed in
docs/power-switches.md.

The client is rigpilot's own: one UDP socket per event loop (:class:`SnmpClient`), shared by
every PDU, on the BER codec of drivers/switches/ber.py. pysnmp, the client before it, cost 6-10
ms of CPU per 24-outlet read (docs/benchmarks.md); it is now the tests' oracle: they check the
codec against pysnmp's, and this client against an agent built on pysnmp's codec.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from drivers.switches import ber
from drivers.switches.base import OutletReading, PowerSwitch
from drivers.transport import DriverError
from policies.values import FailureKind

MAX_VARBINDS = 24  # per request: keeps every reply well inside one Ethernet-sized datagram
NO_RESPONSE = "No SNMP response received before timeout"
# The client socket's receive buffer, asked of the kernel (which caps it at net.core.rmem_max):
# a sweep's replies arrive together, and at the default (208 KiB) a sweep of 420 PDUs
# overflowed it, the replies dropped (RcvbufErrors) and their reads timed out.
RECEIVE_BUFFER = 4 * 1024 * 1024
_INTEGER_TAGS = frozenset({ber.INTEGER, ber.COUNTER32, ber.GAUGE32, ber.TIMETICKS, ber.COUNTER64})
_ABSENT = frozenset({ber.NO_SUCH_INSTANCE, ber.NO_SUCH_OBJECT})
_REFUSED_HINT = frozenset({6, 16, 17})  # noAccess, authorizationError, notWritable

log = structlog.get_logger("snmp")

Peer = tuple[str, int]


class SnmpFailure(Exception):
    """A request failed before a well-formed reply came: ``kind`` says how."""

    def __init__(self, kind: FailureKind, why: str) -> None:
        super().__init__(why)
        self.kind = kind


class SnmpClient(asyncio.DatagramProtocol):
    """One UDP socket for every SNMP request of an event loop.

    A reply is taken for the pending request with its request-id only when it comes from the
    address and port that request went to. Dropped, counted in :attr:`dropped` and logged the
    first time for each reason: replies with an unknown request-id (late, duplicated) or from
    another address, and PDUs that are not a Response. A datagram that is not a well-formed
    message fails every request pending from its sender, a reply in another version or
    community its request (BAD_REPLY, naming the problem). A send the kernel
    refuses fails its request (UNREACHABLE). Linux reports no ICMP errors (port unreachable) on
    an unconnected UDP socket, so a PDU that is down is a timeout, as it was with pysnmp.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped: Counter[str] = Counter()
        self._pending: dict[int, tuple[Peer, bytes, asyncio.Future[ber.Message]]] = {}
        self._next_id = random.randint(ber.REQUEST_ID_MIN, ber.REQUEST_ID_MAX)
        self._sending: int | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._lock:
            if self.transport is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                    sock.bind(("0.0.0.0", 0))
                    sock.setblocking(False)
                    await asyncio.get_running_loop().create_datagram_endpoint(
                        lambda: self, sock=sock
                    )
                except BaseException:
                    sock.close()
                    raise
                got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                if got < RECEIVE_BUFFER:  # Linux reports twice what it was asked, capped
                    log.warning(  # a sweep of many PDUs may lose replies (timeouts)
                        "snmp.receive_buffer_capped", asked=RECEIVE_BUFFER, got=got
                    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for rid in list(self._pending):
            self._fail(rid, FailureKind.UNREACHABLE, f"the client's socket closed ({exc})")

    def _new_id(self) -> int:
        rid = self._next_id
        while rid in self._pending:
            rid = rid + 1 if rid < ber.REQUEST_ID_MAX else ber.REQUEST_ID_MIN
        self._next_id = rid + 1 if rid < ber.REQUEST_ID_MAX else ber.REQUEST_ID_MIN
        return rid

    async def ask(
        self, peer: Peer, community: bytes, encode: Callable[[int], bytes]
    ) -> ber.Message:
        """Send ``encode(request_id)`` to ``peer``; its reply, or SnmpFailure. No deadline: the
        caller's (the request stays pending until it is cancelled)."""
        if self.transport is None:
            await self.open()
        assert self.transport is not None
        rid = self._new_id()
        future: asyncio.Future[ber.Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (peer, community, future)
        try:
            self._sending = rid
            try:
                self.transport.sendto(encode(rid), peer)
            finally:
                self._sending = None
            return await future
        finally:
            self._pending.pop(rid, None)

    def _fail(self, rid: int, kind: FailureKind, why: str) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[2].done():
            entry[2].set_exception(SnmpFailure(kind, why))

    def _drop(self, reason: str, addr: Any) -> None:
        self.dropped[reason] += 1
        if self.dropped[reason] == 1:
            log.warning("snmp.reply_dropped", reason=reason, peer=addr, logged="once per reason")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer = (addr[0], addr[1])
        try:
            msg = ber.decode_message(data)
        except ber.BerError as exc:
            ours = [rid for rid, (p, _, _) in self._pending.items() if p == peer]
            if not ours:
                self._drop("undecodable datagram from an address with nothing pending", peer)
            for rid in ours:
                self._fail(rid, FailureKind.BAD_REPLY, f"undecodable reply ({exc})")
            return
        if msg.pdu_type != ber.RESPONSE:
            self._drop(f"PDU type 0x{msg.pdu_type:02x}, not a Response", peer)
            return
        entry = self._pending.get(msg.request_id)
        if entry is None:
            self._drop("unknown request-id (late or duplicated reply)", peer)
            return
        asked, community, future = entry
        if asked != peer:
            self._drop("a request's id from another address than it went to", peer)
            return
        if msg.version != ber.V2C:
            self._fail(msg.request_id, FailureKind.BAD_REPLY, f"reply in version {msg.version}")
        elif msg.community != community:
            self._fail(msg.request_id, FailureKind.BAD_REPLY, "reply in another community")
        elif not future.done():
            del self._pending[msg.request_id]
            future.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        if self._sending is not None:  # sendto failed at once: this request's
            self._fail(self._sending, FailureKind.UNREACHABLE, str(exc))
        else:
            self._drop(f"socket error no request can be told from ({exc})", None)


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SnmpClient] = (
    weakref.WeakKeyDictionary()
)


def client() -> SnmpClient:
    """The event loop's client (its socket opens on its first request)."""
    loop = asyncio.get_running_loop()
    found = _CLIENTS.get(loop)
    if found is None:
        found = _CLIENTS[loop] = SnmpClient()
    return found


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
        # A switch's read asks the same OIDs every sweep: each chunk's GET is encoded once,
        # the request-id alone filled in per send.
        self._gets: dict[tuple[str, ...], tuple[ber.Template, tuple[ber.Oid, ...]]] = {}
        self._peer: Peer | None = None

    def state_of(self, outlet: int) -> str:
        return f"{self.state_oid}.{outlet}"

    def power_of(self, outlet: int) -> str | None:
        return None if self.power_oid is None else f"{self.power_oid}.{outlet}"

    def command_of(self, outlet: int) -> str:
        return f"{self.command_oid}.{outlet}"

    def power_w(self, outlet: int, raw: int) -> float:
        return float(raw)

    async def _resolve(self) -> Peer:
        """The PDU's IPv4 address and port: an address literal once, a host name per request."""
        if self._peer is not None:
            return self._peer
        try:
            self._peer = (str(ipaddress.IPv4Address(self.address)), self.port)
            return self._peer
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(
            self.address, self.port, family=socket.AF_INET, type=socket.SOCK_DGRAM
        )
        return (str(infos[0][4][0]), self.port)

    def _get(self, oids: Sequence[str]) -> tuple[ber.Template, tuple[ber.Oid, ...]]:
        key = tuple(oids)
        found = self._gets.get(key)
        if found is None:
            names = tuple(ber.parse_oid(o) for o in oids)
            msg = ber.Message(
                ber.V2C,
                self.read_community.encode(),
                ber.GET,
                0,
                0,
                0,
                tuple((n, ber.Value(ber.NULL)) for n in names),
            )
            found = self._gets[key] = (ber.template(msg), names)
        return found

    async def _request(
        self, oids: Sequence[str], timeout_s: float, values: Sequence[int] | None = None
    ) -> dict[str, ber.Value]:
        """GET ``oids`` (or SET them to ``values``, in one request); {oid: value} or
        DriverError."""
        what = "SET" if values is not None else "GET"
        if values is None:
            community = self.read_community.encode()
            get, names = self._get(oids)
            encode: Callable[[int], bytes] = get.encode
        else:
            community = self.write_community.encode()
            names = tuple(ber.parse_oid(o) for o in oids)
            varbinds = tuple((n, ber.integer(v)) for n, v in zip(names, values, strict=True))

            def encode(rid: int) -> bytes:
                return ber.encode_message(
                    ber.Message(ber.V2C, community, ber.SET, rid, 0, 0, varbinds)
                )

        peer = await self._resolve()
        try:
            async with asyncio.timeout(timeout_s):
                reply = await client().ask(peer, community, encode)
        except TimeoutError:
            raise DriverError(
                FailureKind.TIMEOUT, f"{self.label}: SNMP {what}: {NO_RESPONSE}"
            ) from None
        except SnmpFailure as exc:
            raise DriverError(exc.kind, f"{self.label}: SNMP {what}: {exc}") from None
        return self._values(what, oids, names, reply)

    def _values(
        self, what: str, oids: Sequence[str], names: Sequence[ber.Oid], reply: ber.Message
    ) -> dict[str, ber.Value]:
        """The reply's values by the OIDs asked, or DriverError naming what is wrong."""
        status = reply.error_status
        if status:
            index = reply.error_index
            at = oids[index - 1] if 0 < index <= len(oids) else "?"
            hint = " (is the write community right?)" if status in _REFUSED_HINT else ""
            name = (
                ber.ERROR_STATUS_NAMES[status]
                if 0 <= status < len(ber.ERROR_STATUS_NAMES)
                else f"error-status {status}"
            )
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"{self.label}: SNMP {what} refused: {name} at {at}{hint}",
            )
        got: dict[ber.Oid, ber.Value] = {}
        for name_, val in reply.varbinds:
            if val.tag in _ABSENT:
                raise DriverError(
                    FailureKind.BAD_REPLY,
                    f"{self.label}: {ber.oid_text(name_)} does not exist on this PDU (wrong "
                    "kind, or no such outlet)",
                )
            got[name_] = val
        out: dict[str, ber.Value] = {}
        missing: list[str] = []
        for text, oid in zip(oids, names, strict=True):
            found = got.get(oid)
            if found is None:
                missing.append(text)
            else:
                out[text] = found
        if missing:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label}: reply lacks {', '.join(missing)}"
            )
        return out

    def _int(self, values: Mapping[str, ber.Value], oid: str) -> int:
        val = values[oid]
        if val.tag in _INTEGER_TAGS and isinstance(val.value, int):
            return val.value
        raise DriverError(
            FailureKind.BAD_REPLY,
            f"{self.label}: {oid} is {val.type_name} {val.pretty()!r}, not an integer",
        )

    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        oids: list[str] = []
        for n in self.outlets:
            oids.append(self.state_of(n))
            power_oid = self.power_of(n)
            if power_oid is not None:
                oids.append(power_oid)
        values: dict[str, ber.Value] = {}
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
            values: dict[str, ber.Value] = {}
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
