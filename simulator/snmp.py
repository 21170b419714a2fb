"""A small SNMP v2c agent, one UDP socket per PDU, on the BER codec of drivers/switches/ber.py.

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

from drivers.switches.ber import (
    END_OF_MIB_VIEW,
    GEN_ERR,
    GET,
    GET_BULK,
    GET_NEXT,
    MAX_DATAGRAM,
    NO_ACCESS,
    NO_ERROR,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    NOT_WRITABLE,
    RESPONSE,
    SET,
    TOO_BIG,
    V2C,
    BerError,
    Message,
    Oid,
    Value,
    decode_message,
    encode_message,
)

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
