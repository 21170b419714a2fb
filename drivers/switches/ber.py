"""SNMP v2c messages in BER (X.690, RFC 3416): the one codec, for the PDU driver's client
(drivers/switches/snmp.py) and the simulator's agent (simulator/snmp.py).

Decoding is strict, for datagrams from anywhere: every malformed input raises :class:`BerError`
saying what was wrong and at which byte, never another exception. Refused: truncation, a
length past its container, bytes left over inside one, indefinite lengths, lengths of more
than four bytes, high-tag-number tags, constructed or unknown value types, integers of more
than nine content bytes or out of their SNMP type's range, OIDs with a padded arc (a leading
0x80 octet: X.690 8.19.2), arcs past 2^32 - 1 or more than 128 arcs (RFC 2578 3.5), a
non-empty NULL or exception. Accepted, as X.690 allows and agents send: a length in long
form where the short would do, an integer with a redundant leading octet. The nesting is the
message's fixed shape (message, PDU, varbind list, varbind, value), so no input can nest
deeper.

The tests check this codec against pysnmp's (tests/test_ber.py), byte for byte both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

Oid = tuple[int, ...]

# Universal and SNMP application tags
INTEGER, OCTET_STRING, NULL, OBJECT_ID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS, OPAQUE, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x44, 0x46
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
GET, GET_NEXT, RESPONSE, SET, GET_BULK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5
INFORM, TRAP_V2, REPORT = 0xA6, 0xA7, 0xA8

# error-status values (RFC 3416)
NO_ERROR, TOO_BIG, GEN_ERR, NO_ACCESS, WRONG_TYPE = 0, 1, 5, 6, 7
WRONG_VALUE, NOT_WRITABLE = 10, 17
ERROR_STATUS_NAMES = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)

V2C = 1
MAX_DATAGRAM = 1472
MAX_ARCS = 128
MAX_INT_OCTETS = 9

TYPE_NAMES = {
    INTEGER: "Integer",
    OCTET_STRING: "OctetString",
    NULL: "Null",
    OBJECT_ID: "ObjectIdentifier",
    IP_ADDRESS: "IpAddress",
    COUNTER32: "Counter32",
    GAUGE32: "Gauge32",
    TIMETICKS: "TimeTicks",
    OPAQUE: "Opaque",
    COUNTER64: "Counter64",
    NO_SUCH_OBJECT: "NoSuchObject",
    NO_SUCH_INSTANCE: "NoSuchInstance",
    END_OF_MIB_VIEW: "EndOfMibView",
}
_PDU_TYPES = frozenset({GET, GET_NEXT, RESPONSE, SET, GET_BULK, INFORM, TRAP_V2, REPORT})
_UNSIGNED_MAX = {COUNTER32: 2**32 - 1, GAUGE32: 2**32 - 1, TIMETICKS: 2**32 - 1}
_UNSIGNED_MAX[COUNTER64] = 2**64 - 1
_EMPTY = (NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW)


class BerError(ValueError):
    """The bytes are not a well-formed SNMP message (or a value cannot be encoded)."""


@dataclass(frozen=True, slots=True)
class Value:
    """A typed SNMP value: ``tag`` is the BER tag, ``value`` an int, bytes or OID."""

    tag: int
    value: int | bytes | Oid | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.tag, f"tag 0x{self.tag:02x}")

    def pretty(self) -> str:
        if isinstance(self.value, bytes):
            text = self.value.decode("ascii", "replace")
            return text if text.isprintable() else "0x" + self.value.hex()
        if isinstance(self.value, tuple):
            return oid_text(self.value)
        return "" if self.value is None else str(self.value)


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
    """``"1.3.6.1"`` or ``".1.3.6.1"`` as a tuple; ValueError naming the text otherwise."""
    try:
        oid = tuple(int(p) for p in text.strip().strip(".").split("."))
    except ValueError:
        raise ValueError(f"not an OID: {text!r}") from None
    if len(oid) < 2 or min(oid) < 0:
        raise ValueError(f"not an OID: {text!r}")
    return oid


def oid_text(oid: Oid) -> str:
    return ".".join(map(str, oid))


# ---- encoding ----------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _int_body(v: int, unsigned: bool) -> bytes:
    if unsigned:
        return v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    size = max(1, (v + (v < 0)).bit_length() // 8 + 1)
    return v.to_bytes(size, "big", signed=True)


def oid_body(oid: Oid) -> bytes:
    if (
        len(oid) < 2
        or len(oid) > MAX_ARCS
        or oid[0] > 2
        or (oid[0] < 2 and oid[1] >= 40)
        or min(oid) < 0
        or max(oid) > 2**32 - 1
    ):
        raise BerError(f"cannot encode OID {oid_text(oid)}")
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
    if v.tag == INTEGER and isinstance(v.value, int):
        if not -(2**31) <= v.value < 2**31:
            raise BerError(f"INTEGER {v.value} is outside Integer32")
        return tlv(INTEGER, _int_body(v.value, unsigned=False))
    if v.tag in _UNSIGNED_MAX and isinstance(v.value, int):
        if not 0 <= v.value <= _UNSIGNED_MAX[v.tag]:
            raise BerError(f"{v.type_name} {v.value} is out of range")
        return tlv(v.tag, _int_body(v.value, unsigned=True))
    if v.tag in (OCTET_STRING, IP_ADDRESS, OPAQUE) and isinstance(v.value, bytes):
        return tlv(v.tag, v.value)
    if v.tag == OBJECT_ID and isinstance(v.value, tuple):
        return tlv(OBJECT_ID, oid_body(v.value))
    if v.tag in _EMPTY and v.value is None:
        return tlv(v.tag, b"")
    raise BerError(f"cannot encode {v.type_name} value {v.value!r}")


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


def _pdu_rest(msg: Message) -> bytes:
    """The PDU's fields after its request-id."""
    vbl = b"".join(
        tlv(SEQUENCE, tlv(OBJECT_ID, oid_body(oid)) + encode_value(value))
        for oid, value in msg.varbinds
    )
    return (
        tlv(INTEGER, _int_body(msg.error_status, unsigned=False))
        + tlv(INTEGER, _int_body(msg.error_index, unsigned=False))
        + tlv(SEQUENCE, vbl)
    )


def _wrap(msg: Message, pdu: bytes) -> bytes:
    body = (
        tlv(INTEGER, _int_body(msg.version, unsigned=False))
        + tlv(OCTET_STRING, msg.community)
        + tlv(msg.pdu_type, pdu)
    )
    return tlv(SEQUENCE, body)


def encode_message(msg: Message) -> bytes:
    rid = tlv(INTEGER, _int_body(msg.request_id, unsigned=False))
    return _wrap(msg, rid + _pdu_rest(msg))


# Request-ids in this range take exactly four content octets, so one encoded request serves
# every id: only those four octets change (see :class:`Template`).
REQUEST_ID_MIN, REQUEST_ID_MAX = 0x0080_0000, 0x7FFF_FFFF


@dataclass(frozen=True, slots=True)
class Template:
    """An encoded message whose request-id alone changes from one send to the next."""

    head: bytes
    tail: bytes

    def encode(self, request_id: int) -> bytes:
        if not REQUEST_ID_MIN <= request_id <= REQUEST_ID_MAX:
            raise BerError(f"request-id {request_id} does not take four octets")
        return self.head + request_id.to_bytes(4, "big") + self.tail


def template(msg: Message) -> Template:
    """``msg`` encoded once; its request-id is ignored (give one to :meth:`Template.encode`)."""
    rest = _pdu_rest(msg)
    whole = _wrap(msg, tlv(INTEGER, REQUEST_ID_MAX.to_bytes(4, "big")) + rest)
    at = len(whole) - len(rest) - 4  # the request-id's content: the PDU's fields end the message
    return Template(whole[:at], whole[at + 4 :])


# ---- decoding ------------------------------------------------------------------------------


def _read_tlv(data: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """The TLV of ``what`` at ``pos`` within ``data[:end]``: (tag, body start, body end)."""
    if pos + 2 > end:
        raise BerError(f"truncated: {what} at byte {pos} lacks its tag and length")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise BerError(f"{what} at byte {pos}: high-tag-number form (0x{tag:02x}) is not SNMP")
    start = pos + 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0:
            raise BerError(f"{what} at byte {pos}: indefinite length")
        if count > 4:
            raise BerError(f"{what} at byte {pos}: a length of {count} octets")
        if start + count > end:
            raise BerError(f"truncated: {what} at byte {pos} in its length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    else:
        length = first
    if length > end - start:
        raise BerError(
            f"truncated: {what} at byte {pos} says {length} bytes, {end - start} are left"
        )
    return tag, start, start + length


def _decode_int(body: bytes, what: str, low: int, high: int) -> int:
    if not body:
        raise BerError(f"{what}: an integer of no octets")
    if len(body) > MAX_INT_OCTETS:
        raise BerError(f"{what}: an integer of {len(body)} octets")
    v = int.from_bytes(body, "big", signed=True)
    if not low <= v <= high:
        raise BerError(f"{what}: {v} is outside {low}..{high}")
    return v


def _decode_unsigned(tag: int, body: bytes, what: str) -> int:
    if not body:
        raise BerError(f"{what}: an integer of no octets")
    if len(body) > MAX_INT_OCTETS:
        raise BerError(f"{what}: an integer of {len(body)} octets")
    v = int.from_bytes(body, "big", signed=True)
    if not 0 <= v <= _UNSIGNED_MAX[tag]:
        raise BerError(f"{what}: {TYPE_NAMES[tag]} {v} is out of range")
    return v


def _decode_oid(body: bytes, what: str) -> Oid:
    if not body:
        raise BerError(f"{what}: an OID of no octets")
    if body[-1] & 0x80:
        raise BerError(f"{what}: the OID ends inside an arc")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in body:
        if fresh and byte == 0x80:
            raise BerError(f"{what}: an OID arc padded with a leading 0x80")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            if value > 2**32 - 1 + (80 if not arcs else 0):
                raise BerError(f"{what}: an OID arc past 2^32 - 1")
            arcs.append(value)
            value = 0
    if len(arcs) + 1 > MAX_ARCS:
        raise BerError(f"{what}: an OID of more than {MAX_ARCS} arcs")
    first = arcs[0]
    top = min(first // 40, 2)
    return (top, first - 40 * top, *arcs[1:])


def _decode_value(tag: int, body: bytes, what: str) -> Value:
    if tag == INTEGER:
        return Value(INTEGER, _decode_int(body, what, -(2**31), 2**31 - 1))
    if tag in _UNSIGNED_MAX:
        return Value(tag, _decode_unsigned(tag, body, what))
    if tag in (OCTET_STRING, OPAQUE):
        return Value(tag, body)
    if tag == IP_ADDRESS:
        if len(body) != 4:
            raise BerError(f"{what}: an IpAddress of {len(body)} octets")
        return Value(tag, body)
    if tag == OBJECT_ID:
        return Value(OBJECT_ID, _decode_oid(body, what))
    if tag in _EMPTY:
        if body:
            raise BerError(f"{what}: {TYPE_NAMES[tag]} with {len(body)} content octets")
        return Value(tag)
    raise BerError(f"{what}: unknown type 0x{tag:02x}")


def decode_message(data: bytes) -> Message:
    """The message in ``data`` (exactly one, nothing after it), or BerError."""
    n = len(data)
    tag, start, end = _read_tlv(data, 0, n, "message")
    if tag != SEQUENCE:
        raise BerError(f"not an SNMP message: starts with 0x{tag:02x}, not a SEQUENCE")
    if end != n:
        raise BerError(f"{n - end} bytes after the message")
    tag, s, e = _read_tlv(data, start, end, "version")
    if tag != INTEGER:
        raise BerError(f"version: 0x{tag:02x}, not an INTEGER")
    version = _decode_int(data[s:e], "version", 0, 2**31 - 1)
    tag, s, e = _read_tlv(data, e, end, "community")
    if tag != OCTET_STRING:
        raise BerError(f"community: 0x{tag:02x}, not an OCTET STRING")
    community = data[s:e]
    pdu_type, pdu_start, pdu_end = _read_tlv(data, e, end, "PDU")
    if pdu_type not in _PDU_TYPES:
        raise BerError(f"PDU: type 0x{pdu_type:02x} is not an SNMP v2c PDU")
    if pdu_end != end:
        raise BerError(f"{end - pdu_end} bytes after the PDU")
    fields: list[int] = []
    pos = pdu_start
    for name in ("request-id", "error-status", "error-index"):
        tag, s, pos = _read_tlv(data, pos, pdu_end, name)
        if tag != INTEGER:
            raise BerError(f"{name}: 0x{tag:02x}, not an INTEGER")
        fields.append(_decode_int(data[s:pos], name, -(2**31), 2**31 - 1))
    tag, pos, vbl_end = _read_tlv(data, pos, pdu_end, "varbind list")
    if tag != SEQUENCE:
        raise BerError(f"varbind list: 0x{tag:02x}, not a SEQUENCE")
    if vbl_end != pdu_end:
        raise BerError(f"{pdu_end - vbl_end} bytes after the varbind list")
    varbinds = _decode_varbinds(data, pos, vbl_end)
    return Message(version, community, pdu_type, fields[0], fields[1], fields[2], varbinds)


def _decode_varbinds(data: bytes, pos: int, end: int) -> tuple[tuple[Oid, Value], ...]:
    varbinds: list[tuple[Oid, Value]] = []
    while pos < end:
        what = f"varbind {len(varbinds) + 1}"
        tag, s, vb_end = _read_tlv(data, pos, end, what)
        if tag != SEQUENCE:
            raise BerError(f"{what}: 0x{tag:02x}, not a SEQUENCE")
        tag, s, e = _read_tlv(data, s, vb_end, f"{what}'s name")
        if tag != OBJECT_ID:
            raise BerError(f"{what}'s name: 0x{tag:02x}, not an OBJECT IDENTIFIER")
        oid = _decode_oid(data[s:e], f"{what}'s name")
        vtag, s, e = _read_tlv(data, e, vb_end, f"{what}'s value")
        if e != vb_end:
            raise BerError(f"{what}: {vb_end - e} bytes after its value")
        varbinds.append((oid, _decode_value(vtag, data[s:e], f"{what}'s value")))
        pos = vb_end
    return tuple(varbinds)
