"""rigpilot's SNMP client (drivers/switches/snmp.py) over real UDP sockets: against an agent
built on pysnmp's codec (an end nobody here wrote), and against agents that answer what no
PDU should: truncated or garbage datagrams, wrong request-ids, replies from another port,
duplicates, error statuses, oversize replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pyasn1.codec.ber import decoder as pyasn1_decoder
from pyasn1.codec.ber import encoder as pyasn1_encoder
from pysnmp.proto import api

from drivers.switches import ber
from drivers.switches.snmp import RECEIVE_BUFFER, ApcPdu, RaritanPdu, client
from drivers.transport import DriverError
from policies.values import FailureKind

V2C: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
STATE = "1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"
COMMAND = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
POWER = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7"
T = 2.0


class PysnmpAgent(asyncio.DatagramProtocol):
    """An APC PDU of 24 outlets whose every datagram is decoded and encoded by pysnmp."""

    def __init__(self) -> None:
        self.on = dict.fromkeys(range(1, 25), True)
        self.requests = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def value(self, oid: str) -> Any:
        base, _, n = oid.rpartition(".")
        outlet = int(n)
        if outlet not in self.on:
            return V2C.NoSuchInstance("")
        if base in (STATE, COMMAND):
            return V2C.Integer(1 if self.on[outlet] else 2)
        if base == POWER:
            return V2C.Integer(3000 + outlet if self.on[outlet] else 0)
        return V2C.NoSuchObject("")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.requests += 1
        msg, _ = pyasn1_decoder.decode(data, asn1Spec=V2C.Message())
        community = str(V2C.apiMessage.get_community(msg))
        pdu = V2C.apiMessage.get_pdu(msg)
        response = V2C.apiPDU.get_response(pdu)
        asked = [(str(o), v) for o, v in V2C.apiPDU.get_varbinds(pdu)]
        if pdu.isSameTypeWith(V2C.SetRequestPDU()):
            if community != "private":
                V2C.apiPDU.set_error_status(response, 6)
                V2C.apiPDU.set_error_index(response, 1)
                V2C.apiPDU.set_varbinds(response, asked)
            else:
                for oid, v in asked:
                    self.on[int(oid.rpartition(".")[2])] = int(v) == 1
                V2C.apiPDU.set_varbinds(response, asked)
        else:
            V2C.apiPDU.set_varbinds(response, [(o, self.value(o)) for o, _ in asked])
        reply = V2C.Message()
        V2C.apiMessage.set_defaults(reply)
        V2C.apiMessage.set_community(reply, community)
        V2C.apiMessage.set_pdu(reply, response)
        self.transport.sendto(pyasn1_encoder.encode(reply), addr)


async def serve(factory: Callable[[], asyncio.DatagramProtocol]) -> tuple[Any, int]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        factory, local_addr=("127.0.0.1", 0)
    )
    return transport, protocol, transport.get_extra_info("sockname")[1]  # type: ignore[return-value]


@pytest.fixture
async def pysnmp_agent() -> AsyncIterator[tuple[PysnmpAgent, int]]:
    transport, agent, port = await serve(PysnmpAgent)  # type: ignore[misc]
    yield agent, port
    transport.close()


async def test_reads_and_switches_24_outlets_through_a_pysnmp_agent(
    pysnmp_agent: tuple[PysnmpAgent, int],
) -> None:
    agent, port = pysnmp_agent
    pdu = ApcPdu("p", "127.0.0.1", tuple(range(1, 25)), port=port)
    readings = await pdu.read_outlets(timeout_s=T)
    assert agent.requests == 2  # 48 objects in two GETs of 24
    assert [(r.outlet, r.on, r.power_w) for r in readings.values()] == [
        (n, True, 3000.0 + n) for n in range(1, 25)
    ]
    await pdu.set_outlets({n: n % 2 == 0 for n in range(1, 25)}, timeout_s=T)
    assert agent.requests == 3  # one SET for 24 outlets
    readings = await pdu.read_outlets(timeout_s=T)
    assert [(r.on, r.power_w) for r in readings.values()][:2] == [(False, 0.0), (True, 3002.0)]
    await pdu.set_outlet(1, True, timeout_s=T)
    assert agent.on[1] is True
    # the same GET bytes, a new request-id each time, twice over
    assert (await pdu.read_outlets(timeout_s=T))[1].on is True


async def test_pysnmp_agent_refusals_and_absent_outlets(
    pysnmp_agent: tuple[PysnmpAgent, int],
) -> None:
    _, port = pysnmp_agent
    with pytest.raises(DriverError) as err:
        await ApcPdu("p", "127.0.0.1", (1,), write_community="public", port=port).set_outlet(
            1, False, timeout_s=T
        )
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == (
        "switch p (apc at 127.0.0.1): SNMP SET refused: noAccess at "
        f"{COMMAND}.1 (is the write community right?)"
    )
    with pytest.raises(DriverError, match=f"{STATE}.30 does not exist on this PDU"):
        await ApcPdu("p", "127.0.0.1", (30,), port=port).read_outlets(timeout_s=T)
    with pytest.raises(DriverError, match="does not exist on this PDU"):
        await RaritanPdu("r", "127.0.0.1", (1,), port=port).read_outlets(timeout_s=T)


async def test_requests_to_two_pdus_at_once_share_one_socket(
    pysnmp_agent: tuple[PysnmpAgent, int],
) -> None:
    _, port = pysnmp_agent
    other_transport, other, other_port = await serve(PysnmpAgent)  # type: ignore[misc]
    other.on[3] = False
    try:
        pdus = [
            ApcPdu(f"p{i}", "127.0.0.1", (1, 2, 3), port=p) for i, p in ((0, port), (1, other_port))
        ]
        results = await asyncio.gather(*(p.read_outlets(timeout_s=T) for p in pdus * 10))
        first, second = results[:2]
        assert (first[3].on, second[3].on) == (True, False)
        assert client().transport is not None
        sock = client().transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockname()[1] != 0
        # a sweep's replies arrive together: the buffer is what was asked (Linux doubles it),
        # or as much as the kernel allows
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert got >= min(2 * RECEIVE_BUFFER, 2 * rmem_max)
    finally:
        other_transport.close()


# ---- agents that misbehave ------------------------------------------------------------------

Reply = Callable[[ber.Message, bytes], list[bytes]]


class Scripted(asyncio.DatagramProtocol):
    """Answers each request with what ``script(request, good reply bytes)`` returns; the good
    reply says every asked object is 1."""

    def __init__(self, script: Reply) -> None:
        self.script = script
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = ber.decode_message(data)
        good = dataclasses.replace(
            msg,
            pdu_type=ber.RESPONSE,
            varbinds=tuple((o, ber.integer(1)) for o, _ in msg.varbinds),
        )
        for out in self.script(good, ber.encode_message(good)):
            self.transport.sendto(out, addr)


async def read_from(script: Reply, timeout_s: float = 0.5) -> Any:
    transport, _, port = await serve(lambda: Scripted(script))  # type: ignore[misc]
    try:
        return await ApcPdu("x", "127.0.0.1", (1,), port=port).read_outlets(timeout_s=timeout_s)
    finally:
        transport.close()


async def refused(script: Reply, kind: FailureKind = FailureKind.BAD_REPLY) -> str:
    with pytest.raises(DriverError) as err:
        await read_from(script)
    assert err.value.kind is kind, err.value.detail
    return err.value.detail


def with_id(msg: ber.Message, request_id: int) -> bytes:
    return ber.encode_message(dataclasses.replace(msg, request_id=request_id))


async def test_truncated_reply_is_a_bad_reply_naming_it() -> None:
    detail = await refused(lambda msg, good: [good[:-3]])
    assert "SNMP GET: undecodable reply (truncated: " in detail


async def test_garbage_is_a_bad_reply() -> None:
    detail = await refused(lambda msg, good: [b"\xff" * 40])
    assert "undecodable reply (message at byte 0: high-tag-number form" in detail


async def test_wrong_request_id_is_dropped_and_counted_then_the_right_one_taken() -> None:
    dropped = client().dropped["unknown request-id (late or duplicated reply)"]
    detail = await refused(
        lambda msg, good: [with_id(msg, msg.request_id ^ 1)], FailureKind.TIMEOUT
    )
    assert (
        detail.endswith("SNMP GET: No SNMP response received before timeout")
        or "no answer" in detail
    )
    assert client().dropped["unknown request-id (late or duplicated reply)"] == dropped + 1
    readings = await read_from(lambda msg, good: [with_id(msg, msg.request_id + 7), good])
    assert readings[1].on is True


async def test_reply_from_another_port_is_dropped() -> None:
    other, _, _ = await serve(asyncio.DatagramProtocol)  # type: ignore[misc]
    reason = "a request's id from another address than it went to"
    before = client().dropped[reason]

    def elsewhere(msg: ber.Message, good: bytes) -> list[bytes]:
        other.sendto(good, client().transport.get_extra_info("sockname"))  # type: ignore[union-attr]
        return []

    try:
        await refused(elsewhere, FailureKind.TIMEOUT)
    finally:
        other.close()
    assert client().dropped[reason] == before + 1


async def test_duplicate_reply_is_harmless() -> None:
    reason = "unknown request-id (late or duplicated reply)"
    before = client().dropped[reason]
    transport, _, port = await serve(lambda: Scripted(lambda msg, good: [good, good]))  # type: ignore[misc]
    try:
        pdu = ApcPdu("x", "127.0.0.1", (1,), port=port)
        for _ in range(3):
            assert (await pdu.read_outlets(timeout_s=T))[1].on is True
        await asyncio.sleep(0.05)
    finally:
        transport.close()
    assert client().dropped[reason] >= before + 2


async def test_error_status_names_the_status_and_object() -> None:
    detail = await refused(
        lambda msg, good: [
            ber.encode_message(dataclasses.replace(msg, error_status=5, error_index=2))
        ]
    )
    assert detail.endswith(f"SNMP GET refused: genErr at {POWER}.1")
    detail = await refused(
        lambda msg, good: [
            ber.encode_message(dataclasses.replace(msg, error_status=99, error_index=7))
        ]
    )
    assert detail.endswith("SNMP GET refused: error-status 99 at ?")


async def test_oversize_and_lying_replies_are_bad_replies() -> None:
    def huge(msg: ber.Message, good: bytes) -> list[bytes]:
        first = (msg.varbinds[0][0], ber.Value(ber.OCTET_STRING, b"x" * 60_000))
        return [ber.encode_message(dataclasses.replace(msg, varbinds=(first, *msg.varbinds[1:])))]

    detail = await refused(huge)
    assert f"{STATE}.1 is OctetString" in detail and "not an integer" in detail
    detail = await refused(lambda msg, good: [b"\x30\x84\x7f\xff\xff\xff" + good[2:]])
    assert "says 2147483647 bytes" in detail
    detail = await refused(
        lambda msg, good: [
            with_id(dataclasses.replace(msg, varbinds=msg.varbinds[:1]), msg.request_id)
        ]
    )
    assert detail.endswith(f"reply lacks {POWER}.1")
    detail = await refused(
        lambda msg, good: [ber.encode_message(dataclasses.replace(msg, community=b"other"))]
    )
    assert detail.endswith("SNMP GET: reply in another community")


async def test_a_pdu_that_is_not_a_response_is_ignored() -> None:
    reason = "PDU type 0xa0, not a Response"
    before = client().dropped[reason]
    readings = await read_from(
        lambda msg, good: [ber.encode_message(dataclasses.replace(msg, pdu_type=ber.GET)), good]
    )
    assert readings[1].on is True
    assert client().dropped[reason] == before + 1


async def test_nothing_listening_is_a_timeout_and_a_bad_host_name_unreachable() -> None:
    transport, _, port = await serve(asyncio.DatagramProtocol)  # type: ignore[misc]
    transport.close()
    with pytest.raises(DriverError) as err:
        await ApcPdu("x", "127.0.0.1", (1,), port=port).read_outlets(timeout_s=0.3)
    assert err.value.kind is FailureKind.TIMEOUT
    with pytest.raises(DriverError) as err:
        await ApcPdu("x", "no-such-host.invalid", (1,)).read_outlets(timeout_s=T)
    assert err.value.kind is FailureKind.UNREACHABLE


async def test_a_send_the_kernel_refuses_fails_that_request_unreachable(sim: object) -> None:
    # the test network namespace (tests/conftest.py) has no route to TEST-NET-1
    with pytest.raises(DriverError) as err:
        await ApcPdu("x", "192.0.2.1", (1,)).read_outlets(timeout_s=T)
    assert err.value.kind is FailureKind.UNREACHABLE
    assert err.value.detail.endswith("SNMP GET: [Errno 101] Network is unreachable")
