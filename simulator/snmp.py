"""A small SNMP v2c agent: BER encoding and decoding written here, one UDP socket per PDU.

Enough of RFC 3416 for what PDU managers send: GetRequest, GetNextRequest, GetBulkRequest and
SetRequest, with the v2c exceptions (noSuchObject, noSuchInstance, endOfMibView) and error
statuses (notWritable, wrongType, wrongValue). Requests with a community the agent does not
know, or in SNMPv1/v3, are dropped without a reply, as real agents do. The MIB is a callback
(:class:`MibView`), so the values are read from the simulated outlets at the moment of the
request. Tests check it with net-snmp's own tools (tests/test_switches.py).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Oid = tuple[int, ...]

# Universal and SNMP application tags
INTEGER, OCTET_STRING, NULL, OBJECT_ID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS = 0x40, 0x41, 0x42, 0x43
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
GET, GET_NEXT, RESPONSE, SET, GET_BULK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5

# error-status values (RFC 3416)
NO_ERROR, TOO_BIG, GEN_ERR, NO_ACCESS, WRONG_TYPE = 0, 1, 5, 6, 7
WRONG_VALUE, NOT_WRITABLE = 10, 17

V2C = 1
MAX_DATAGRAM = 1472


class BerError(ValueError):
    """The datagram is not a well-formed SNMP message."""


@dataclass(frozen=True, slots=True)
class Value:
    """A typed SNMP value: ``tag`` is the BER tag, ``value`` an int, bytes or OID."""

    tag: int
    value: int | bytes | Oid | None = None


def integer(v: int) -> Value:
    return Value(INTEGER, v)


def gauge(v: int) -> Value:
    return Value(GAUGE32, max(0, min(v, 2**32 - 1)))


def string(v: str) -> Value:
    return Value(OCTET_STRING, v.encode())


def oid_value(v: str) -> Value:
    return Value(OBJECT_ID, parse_oid(v))


def timeticks(v: int) -> Value:
    return Value(TIMETICKS, v % 2**32)


def parse_oid(text: str) -> Oid:
    return tuple(int(p) for p in text.strip(".").split("."))


# ---- BER ----------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _length(len(body)) + body


def _int_body(v: int, unsigned: bool) -> bytes:
    if unsigned:
        return v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    size = max(1, (v + (v < 0)).bit_length() // 8 + 1)
    return v.to_bytes(size, "big", signed=True)


def _oid_body(oid: Oid) -> bytes:
    if len(oid) < 2 or oid[0] > 2 or (oid[0] < 2 and oid[1] >= 40):
        raise BerError(f"cannot encode OID {'.'.join(map(str, oid))}")
    out = bytearray()
    for arc in (oid[0] * 40 + oid[1], *oid[2:]):
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def encode_value(v: Value) -> bytes:
    if v.tag == INTEGER:
        assert isinstance(v.value, int)
        return tlv(INTEGER, _int_body(v.value, unsigned=False))
    if v.tag in (COUNTER32, GAUGE32, TIMETICKS):
        assert isinstance(v.value, int)
        return tlv(v.tag, _int_body(v.value, unsigned=True))
    if v.tag in (OCTET_STRING, IP_ADDRESS):
        assert isinstance(v.value, bytes)
        return tlv(v.tag, v.value)
    if v.tag == OBJECT_ID:
        assert isinstance(v.value, tuple)
        return tlv(OBJECT_ID, _oid_body(v.value))
    return tlv(v.tag, b"")  # NULL and the three v2c exceptions


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, body, position after it)."""
    if pos + 2 > len(data):
        raise BerError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise BerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    end = pos + length
    if end > len(data):
        raise BerError("truncated")
    return tag, data[pos:end], end


def _decode_int(body: bytes) -> int:
    if not body or len(body) > 9:
        raise BerError("bad integer")
    return int.from_bytes(body, "big", signed=True)


def _decode_oid(body: bytes) -> Oid:
    if not body:
        raise BerError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if body[-1] & 0x80:
        raise BerError("bad OID")
    first = arcs[0]
    head = (min(first // 40, 2), first - 40 * min(first // 40, 2))
    return (*head, *arcs[1:])


def _decode_value(tag: int, body: bytes) -> Value:
    if tag == INTEGER:
        return Value(INTEGER, _decode_int(body))
    if tag in (COUNTER32, GAUGE32, TIMETICKS):
        return Value(tag, int.from_bytes(body, "big") if body else 0)
    if tag in (OCTET_STRING, IP_ADDRESS):
        return Value(tag, body)
    if tag == OBJECT_ID:
        return Value(OBJECT_ID, _decode_oid(body))
    return Value(tag)


@dataclass(frozen=True, slots=True)
class Message:
    version: int
    community: bytes
    pdu_type: int
    request_id: int
    # For GetBulk: non-repeaters and max-repetitions in place of error status and index.
    error_status: int
    error_index: int
    varbinds: tuple[tuple[Oid, Value], ...]


def decode_message(data: bytes) -> Message:
    tag, body, end = _read_tlv(data, 0)
    if tag != SEQUENCE or end != len(data):
        raise BerError("not an SNMP message")
    tag, raw_version, pos = _read_tlv(body, 0)
    if tag != INTEGER:
        raise BerError("no version")
    tag, community, pos = _read_tlv(body, pos)
    if tag != OCTET_STRING:
        raise BerError("no community")
    pdu_type, pdu, _ = _read_tlv(body, pos)
    fields: list[int] = []
    pos = 0
    for _ in range(3):
        tag, raw, pos = _read_tlv(pdu, pos)
        if tag != INTEGER:
            raise BerError("bad PDU header")
        fields.append(_decode_int(raw))
    tag, vbl, _ = _read_tlv(pdu, pos)
    if tag != SEQUENCE:
        raise BerError("no varbind list")
    varbinds: list[tuple[Oid, Value]] = []
    pos = 0
    while pos < len(vbl):
        tag, vb, pos = _read_tlv(vbl, pos)
        if tag != SEQUENCE:
            raise BerError("bad varbind")
        tag, raw_oid, inner = _read_tlv(vb, 0)
        if tag != OBJECT_ID:
            raise BerError("bad varbind name")
        vtag, vbody, _ = _read_tlv(vb, inner)
        varbinds.append((_decode_oid(raw_oid), _decode_value(vtag, vbody)))
    return Message(
        _decode_int(raw_version),
        community,
        pdu_type,
        fields[0],
        fields[1],
        fields[2],
        tuple(varbinds),
    )


def encode_message(msg: Message) -> bytes:
    vbl = b"".join(
        tlv(SEQUENCE, tlv(OBJECT_ID, _oid_body(oid)) + encode_value(value))
        for oid, value in msg.varbinds
    )
    pdu = (
        tlv(INTEGER, _int_body(msg.request_id, unsigned=False))
        + tlv(INTEGER, _int_body(msg.error_status, unsigned=False))
        + tlv(INTEGER, _int_body(msg.error_index, unsigned=False))
        + tlv(SEQUENCE, vbl)
    )
    body = (
        tlv(INTEGER, _int_body(msg.version, unsigned=False))
        + tlv(OCTET_STRING, msg.community)
        + tlv(msg.pdu_type, pdu)
    )
    return tlv(SEQUENCE, body)


# ---- the agent ----------------------------------------------------------------------------


class SetRefused(Exception):
    """A SetRequest the MIB refuses: ``status`` is the RFC 3416 error status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class MibView:
    """What an agent serves: ``objects()`` lists (OID, value) now; ``set`` writes one."""

    def objects(self) -> Sequence[tuple[Oid, Value]]:
        raise NotImplementedError

    def check_set(self, oid: Oid, value: Value) -> None:
        """Raise SetRefused when ``oid`` cannot take ``value``; change nothing."""
        raise SetRefused(NOT_WRITABLE)

    def commit_set(self, oid: Oid, value: Value) -> None:
        raise NotImplementedError


def answer(view: MibView, msg: Message, write: bool) -> Message:  # noqa: C901, PLR0912  the agent's PDU types and error statuses, one case each
    """The Response to ``msg`` (already checked for version and community)."""
    table = sorted(view.objects(), key=lambda item: item[0])
    oids = [o for o, _ in table]
    values = dict(table)

    def following(oid: Oid) -> tuple[Oid, Value]:
        i = bisect.bisect_right(oids, oid)
        return (oids[i], table[i][1]) if i < len(oids) else (oid, Value(END_OF_MIB_VIEW))

    def reply(status: int, index: int, vbs: Sequence[tuple[Oid, Value]]) -> Message:
        return Message(V2C, msg.community, RESPONSE, msg.request_id, status, index, tuple(vbs))

    if msg.pdu_type == GET:
        out = []
        for oid, _ in msg.varbinds:
            if oid in values:
                out.append((oid, values[oid]))
            else:
                prefix = any(o[: len(oid) - 1] == oid[:-1] for o in oids)
                out.append((oid, Value(NO_SUCH_INSTANCE if prefix else NO_SUCH_OBJECT)))
        return reply(NO_ERROR, 0, out)
    if msg.pdu_type == GET_NEXT:
        return reply(NO_ERROR, 0, [following(oid) for oid, _ in msg.varbinds])
    if msg.pdu_type == GET_BULK:
        non_rep = max(0, msg.error_status)
        max_rep = max(0, min(msg.error_index, 64))
        out = [following(oid) for oid, _ in msg.varbinds[:non_rep]]
        cursors = [oid for oid, _ in msg.varbinds[non_rep:]]
        for _ in range(max_rep):
            if not cursors:
                break
            step = [following(c) for c in cursors]
            out += step
            cursors = [o for o, _ in step]
            if all(v.tag == END_OF_MIB_VIEW for _, v in step):
                break
        return reply(NO_ERROR, 0, out)
    if msg.pdu_type == SET:
        if not write:
            return reply(NO_ACCESS, 1, msg.varbinds)
        for i, (oid, value) in enumerate(msg.varbinds, 1):
            try:
                if oid not in values:
                    raise SetRefused(NOT_WRITABLE)
                view.check_set(oid, value)
            except SetRefused as exc:
                return reply(exc.status, i, msg.varbinds)
        for oid, value in msg.varbinds:
            view.commit_set(oid, value)
        return reply(NO_ERROR, 0, msg.varbinds)
    return reply(GEN_ERR, 0, msg.varbinds)


class AgentProtocol(asyncio.DatagramProtocol):
    """One PDU's UDP socket: decode, check community, answer."""

    def __init__(
        self,
        view: MibView,
        read_community: bytes,
        write_community: bytes,
        dropping: Callable[[], bool],
    ) -> None:
        self.view = view
        self.read_community = read_community
        self.write_community = write_community
        self.dropping = dropping
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0
        self.sets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.dropping() or self.transport is None:
            return
        try:
            msg = decode_message(data)
        except BerError:
            return  # real agents count these (snmpInASNParseErrs) and stay silent
        if msg.version != V2C or msg.community not in (
            self.read_community,
            self.write_community,
        ):
            return
        self.requests += 1
        if msg.pdu_type == SET:
            self.sets += 1
        response = answer(self.view, msg, write=msg.community == self.write_community)
        payload = encode_message(response)
        if len(payload) > MAX_DATAGRAM:
            payload = encode_message(
                Message(V2C, msg.community, RESPONSE, msg.request_id, TOO_BIG, 0, ())
            )
        self.transport.sendto(payload, addr)
