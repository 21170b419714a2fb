"""rigpilot's BER codec (drivers/switches/ber.py) against pysnmp's, an encoder and decoder
nobody here wrote: messages encoded by one end are decoded by the other, byte for byte; and
hostile bytes, every one refused with a BerError naming the problem, never another exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder as pyasn1_decoder
from pyasn1.codec.ber import encoder as pyasn1_encoder
from pysnmp.proto import api

from drivers.switches import ber

V2C: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
STATE = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4)

# (our value, pysnmp's) for every type an SNMP v2c varbind carries
PAIRS: list[tuple[ber.Value, Any]] = [
    (ber.integer(0), V2C.Integer(0)),
    (ber.integer(-(2**31)), V2C.Integer(-(2**31))),
    (ber.integer(2**31 - 1), V2C.Integer(2**31 - 1)),
    (ber.integer(-129), V2C.Integer(-129)),
    (ber.gauge(2**32 - 1), V2C.Gauge32(2**32 - 1)),
    (ber.Value(ber.COUNTER32, 2**31), V2C.Counter32(2**31)),
    (ber.Value(ber.COUNTER64, 2**64 - 1), V2C.Counter64(2**64 - 1)),
    (ber.timeticks(123456), V2C.TimeTicks(123456)),
    (ber.string("Outlet 1"), V2C.OctetString("Outlet 1")),
    (ber.Value(ber.OCTET_STRING, bytes(range(256))), V2C.OctetString(bytes(range(256)))),
    (ber.Value(ber.IP_ADDRESS, bytes([10, 0, 0, 1])), V2C.IpAddress("10.0.0.1")),
    (ber.oid_value("1.3.6.1.4.1.318.1.3.4.5"), V2C.ObjectIdentifier("1.3.6.1.4.1.318.1.3.4.5")),
    (ber.Value(ber.OBJECT_ID, (2, 999, 2**32 - 1)), V2C.ObjectIdentifier((2, 999, 2**32 - 1))),
    (ber.Value(ber.NULL), V2C.Null("")),
    (ber.Value(ber.NO_SUCH_OBJECT), V2C.NoSuchObject("")),
    (ber.Value(ber.NO_SUCH_INSTANCE), V2C.NoSuchInstance("")),
    (ber.Value(ber.END_OF_MIB_VIEW), V2C.EndOfMibView("")),
]
PDUS = {ber.GET: V2C.GetRequestPDU, ber.SET: V2C.SetRequestPDU, ber.RESPONSE: V2C.ResponsePDU}


def pysnmp_message(
    pdu_type: int,
    request_id: int,
    varbinds: list[tuple[tuple[int, ...], Any]],
    community: str = "public",
    error_status: int = 0,
    error_index: int = 0,
) -> bytes:
    pdu = PDUS[pdu_type]()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, request_id)
    V2C.apiPDU.set_error_status(pdu, error_status)
    V2C.apiPDU.set_error_index(pdu, error_index)
    V2C.apiPDU.set_varbinds(pdu, varbinds)
    msg = V2C.Message()
    V2C.apiMessage.set_defaults(msg)
    V2C.apiMessage.set_community(msg, community)
    V2C.apiMessage.set_pdu(msg, pdu)
    return bytes(pyasn1_encoder.encode(msg))


def pyasn1_pads(v: object) -> bool:
    """pyasn1 encodes -2^7, -2^15, -2^23 and -2^31 with a redundant leading 0xff (X.690 8.3.2
    asks for the minimal form, which ours writes; both decode to the same value)."""
    return isinstance(v, int) and v < 0 and (-v).bit_count() == 1 and (-v).bit_length() % 8 == 0


def pysnmp_decode(data: bytes) -> tuple[str, Any, list[tuple[str, Any]]]:
    msg, rest = pyasn1_decoder.decode(data, asn1Spec=V2C.Message())
    assert rest == b""
    pdu = V2C.apiMessage.get_pdu(msg)
    varbinds = [(str(o), v) for o, v in V2C.apiPDU.get_varbinds(pdu)]
    return str(V2C.apiMessage.get_community(msg)), pdu, varbinds


def test_a_get_request_is_byte_for_byte_pysnmps() -> None:
    names = [(*STATE, n) for n in range(1, 25)]
    ours = ber.Message(
        ber.V2C, b"public", ber.GET, 0, 0, 0, tuple((n, ber.Value(ber.NULL)) for n in names)
    )
    theirs = pysnmp_message(ber.GET, 8_400_000, [(n, V2C.Null("")) for n in names])
    assert ber.template(ours).encode(8_400_000) == theirs
    assert ber.encode_message(dataclasses.replace(ours, request_id=8_400_000)) == theirs
    with pytest.raises(ber.BerError, match="four octets"):
        ber.template(ours).encode(5)


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_each_value_type_both_ways(index: int) -> None:
    ours, theirs = PAIRS[index]
    name = (*STATE, 7)
    data = pysnmp_message(ber.RESPONSE, -5, [(name, theirs)], community="private")
    msg = ber.decode_message(data)
    assert (msg.version, msg.community, msg.pdu_type, msg.request_id) == (
        1,
        b"private",
        ber.RESPONSE,
        -5,
    )
    assert msg.varbinds == ((name, ours),)
    encoded = ber.encode_message(msg)
    assert encoded == data or pyasn1_pads(ours.value)
    _, _, varbinds = pysnmp_decode(encoded)
    assert varbinds == [(ber.oid_text(name), theirs)]
    assert type(varbinds[0][1]) is type(theirs)


def test_error_status_and_index_both_ways() -> None:
    data = pysnmp_message(
        ber.RESPONSE, 99, [((*STATE, 1), V2C.Integer(2))], error_status=6, error_index=1
    )
    msg = ber.decode_message(data)
    assert (msg.error_status, msg.error_index) == (6, 1)
    assert ber.ERROR_STATUS_NAMES[msg.error_status] == "noAccess"
    _, pdu, _ = pysnmp_decode(ber.encode_message(msg))
    assert V2C.apiPDU.get_error_status(pdu).prettyPrint() == "noAccess"


arcs = st.integers(0, 2**32 - 1)
oids = st.tuples(st.integers(0, 2), st.integers(0, 39), st.lists(arcs, max_size=30)).map(
    lambda t: (t[0], t[1], *t[2])
)
values = st.sampled_from(range(len(PAIRS))).flatmap(lambda i: st.just(PAIRS[i]))


@settings(max_examples=200, deadline=None)
@given(
    request_id=st.integers(-(2**31), 2**31 - 1),
    varbinds=st.lists(st.tuples(oids, values), max_size=12),
    community=st.binary(max_size=40),
)
def test_random_messages_are_pysnmps_both_ways(
    request_id: int, varbinds: list[tuple[tuple[int, ...], tuple[ber.Value, Any]]], community: bytes
) -> None:
    theirs = pysnmp_message(
        ber.RESPONSE,
        request_id,
        [(o, t) for o, (_, t) in varbinds],
        community=community,  # type: ignore[arg-type]
    )
    ours = ber.Message(
        ber.V2C, community, ber.RESPONSE, request_id, 0, 0, tuple((o, v) for o, (v, _) in varbinds)
    )
    assert ber.decode_message(theirs) == ours
    encoded = ber.encode_message(ours)
    padded = pyasn1_pads(request_id) or any(pyasn1_pads(v.value) for _, (v, _) in varbinds)
    assert encoded == theirs or padded
    _, pdu, decoded = pysnmp_decode(encoded)
    assert int(V2C.apiPDU.get_request_id(pdu)) == request_id
    assert decoded == [(ber.oid_text(o), t) for o, (_, t) in varbinds]


# ---- hostile input ------------------------------------------------------------------------

GOOD = pysnmp_message(ber.RESPONSE, 8_400_001, [((*STATE, 1), V2C.Integer(1))])


NAME = bytes.fromhex("06102b06010401823e01010c030501010401")  # STATE.1


def raw(value: str, name: bytes = NAME) -> bytes:
    """A Response like GOOD with ``value`` (hex, tag, length and content as given) and
    ``name`` in its one varbind."""
    t = ber.tlv
    vbl = t(ber.SEQUENCE, t(ber.SEQUENCE, name + bytes.fromhex(value)))
    pdu = t(ber.RESPONSE, bytes.fromhex("020400802c81" + "020100" * 2) + vbl)
    return t(ber.SEQUENCE, bytes.fromhex("020101") + t(ber.OCTET_STRING, b"public") + pdu)


REFUSED = {
    "empty": (b"", "truncated: message at byte 0"),
    "not a sequence": (b"\x04\x00", "not a SEQUENCE"),
    "garbage": (b"\x30\x03\x02\x01", "says 3 bytes, 2 are left"),
    "indefinite length": (b"\x30\x80" + GOOD[2:] + b"\x00\x00", "indefinite length"),
    "five-octet length": (b"\x30\x85\x00\x00\x00\x00\x2f" + GOOD[2:], "a length of 5 octets"),
    "length past the datagram": (b"\x30\x84\xff\xff\xff\xff" + GOOD[2:], "4294967295 bytes"),
    "high tag number": (b"\x1f\x01\x00", "high-tag-number"),
    "trailing bytes": (GOOD + b"\x00", "1 bytes after the message"),
    "truncated by one": (GOOD[:-1], "truncated"),
    "SNMPv1 trap PDU": (GOOD.replace(b"\xa2", b"\xa4", 1), "type 0xa4"),
    "huge integer": (raw("020a" + "01" * 10), "an integer of 10 octets"),
    "integer outside Integer32": (raw("02050100000000"), "outside"),
    "empty integer": (raw("0200"), "an integer of no octets"),
    "padded OID arc": (
        raw("020101", bytes.fromhex("06112b80") + NAME[3:]),
        "padded with a leading 0x80",
    ),
    "constructed value": (raw("3003020101"), "unknown type 0x30"),
    "NULL with content": (raw("050100"), "Null with 1 content octets"),
    "short IpAddress": (raw("4003010203"), "an IpAddress of 3 octets"),
    "negative Gauge32": (raw("4201ff"), "Gauge32 -1 is out of range"),
    "two values in a varbind": (raw("020101020101"), "3 bytes after its value"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_malformed_messages_are_refused_naming_the_problem(case: str) -> None:
    data, why = REFUSED[case]
    with pytest.raises(ber.BerError) as err:
        ber.decode_message(data)
    assert why in str(err.value)


def test_raw_helper_makes_well_formed_messages() -> None:
    assert raw("020101") == GOOD
    assert ber.decode_message(raw("020102")).varbinds[0][1] == ber.integer(2)


def test_oid_limits() -> None:
    with pytest.raises(ber.BerError, match="past 2"):
        ber.decode_message(raw("0500", bytes.fromhex("06062b9080808000")))  # arc 2^32
    with pytest.raises(ber.BerError, match="ends inside an arc"):
        ber.decode_message(raw("0500", bytes.fromhex("06022b86")))
    assert ber.decode_message(raw("0500", bytes.fromhex("06062b8fffffff7f"))).varbinds[0][0] == (
        1,
        3,
        2**32 - 1,
    )
    with pytest.raises(ber.BerError, match="more than 128 arcs"):
        ber.decode_message(raw("0500", bytes([ber.OBJECT_ID, 0x81, 128, 0x2B, *[1] * 127])))
    ber.decode_message(raw("0500", bytes([ber.OBJECT_ID, 127, 0x2B, *[1] * 126])))
    with pytest.raises(ber.BerError, match=r"cannot encode OID 1\.3\.1\.1"):
        ber.encode_message(
            ber.Message(1, b"", ber.GET, 1, 0, 0, (((1, 3, *[1] * 127), ber.Value(ber.NULL)),))
        )
    with pytest.raises(ber.BerError, match=r"cannot encode OID 1\.40"):
        ber.encode_message(ber.Message(1, b"", ber.GET, 1, 0, 0, (((1, 40), ber.Value(ber.NULL)),)))
    with pytest.raises(ber.BerError, match="outside Integer32"):
        ber.encode_value(ber.integer(2**31))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_a_message_or_a_ber_error(data: bytes) -> None:
    with contextlib.suppress(ber.BerError):
        ber.decode_message(data)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.integers(0, len(GOOD)))
def test_every_mutation_of_a_reply_is_a_message_or_a_ber_error(
    at: int, byte: int, cut: int
) -> None:
    mutated = bytearray(GOOD)
    mutated[at] = byte
    for data in (bytes(mutated), bytes(mutated[:cut]), GOOD[:cut]):
        try:
            msg = ber.decode_message(data)
        except ber.BerError:
            continue
        assert ber.decode_message(ber.encode_message(msg)).varbinds == msg.varbinds
