"""The cheapest correct way to ask a rig one question: one TCP connection, one request, a deadline.

pyasic's own socket layer waits up to 100 s for a hung rig and costs several milliseconds of
CPU per call; the observer's hot path uses this instead and leaves decoding firmware quirks to
pyasic's decoder (:func:`decode`), so pyasic stays the layer that knows firmware formats.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from pyasic.errors import APIError
from pyasic.rpc.base import BaseMinerRPCAPI

from policies.values import FailureKind

MAX_REPLY = 4 * 1024 * 1024  # a reply larger than this is garbage, not a status report
BTMINER_STOPPED = b"Socket connect failed: Connection refused\n"


class DriverError(Exception):
    """A rig could not be read or commanded; ``kind`` says how it failed."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class RigChanged(DriverError):
    """The rig at this address is not the one identified there (firmware update, swap)."""

    def __init__(self, detail: str) -> None:
        super().__init__(FailureKind.BAD_REPLY, detail)


class _OneShot(asyncio.Protocol):
    """Send one request, collect the reply until the rig closes the connection."""

    def __init__(self, payload: bytes, done: asyncio.Future[bytes], framed: bool) -> None:
        self.payload = payload
        self.done = done
        self.framed = framed
        self.chunks: list[bytes] = []
        self.size = 0
        self.need: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > MAX_REPLY:
            self._finish(exc=DriverError(FailureKind.BAD_REPLY, "reply larger than 4 MiB"))
        elif self.framed and self.size >= 4:
            if self.need is None:  # the length prefix, read once (not the buffer every time)
                self.need = int.from_bytes(b"".join(self.chunks)[:4], "little") + 4
            if self.size >= self.need:
                self._finish(result=b"".join(self.chunks)[4 : self.need])

    def eof_received(self) -> bool | None:
        self._finish(result=b"".join(self.chunks))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._finish(exc=DriverError(FailureKind.UNREACHABLE, f"connection lost: {exc}"))
        else:
            self._finish(result=b"".join(self.chunks))

    def _finish(self, result: bytes | None = None, exc: Exception | None = None) -> None:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(result or b"")
        if self.transport is not None and (exc is not None or self.framed):
            self.transport.abort()


async def request(
    host: str, port: int, payload: bytes, timeout_s: float, framed: bool = False
) -> bytes:
    """Send ``payload`` to ``host:port`` and return the reply bytes within ``timeout_s``.

    Unframed (cgminer/btminer API): the reply is everything until the rig closes. Framed
    (btminer API v3): a 4-byte little-endian length prefix both ways. Raises DriverError:
    TIMEOUT past the deadline, UNREACHABLE when the connection is refused or reset.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    if framed:
        payload = len(payload).to_bytes(4, "little") + payload
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(
                lambda: _OneShot(payload, done, framed), host, port
            )
            return await done
    except TimeoutError:
        raise DriverError(
            FailureKind.TIMEOUT, f"no answer on port {port} within {timeout_s:.1f} s"
        ) from None
    except OSError as exc:
        raise DriverError(FailureKind.UNREACHABLE, f"port {port}: {exc.strerror or exc}") from None
    finally:
        if isinstance(transport, asyncio.Transport) and not transport.is_closing():
            transport.abort()


def decode(data: bytes) -> dict[str, Any]:
    """Decode a cgminer/btminer reply.

    Well-formed JSON (with cgminer's trailing NUL) is decoded directly; anything else goes
    through pyasic's own decoder, which knows and repairs the JSON bugs of real firmwares (about
    60 us a reply, so not on the hot path when the rig speaks proper JSON). Raises
    DriverError(BAD_REPLY) for an empty reply, non-JSON, or JSON that is not an object.
    """
    if not data:
        raise DriverError(FailureKind.BAD_REPLY, "empty reply")
    try:
        value = json.loads(data[:-1] if data.endswith(b"\x00") else data)
    except (ValueError, UnicodeDecodeError):
        try:
            value = BaseMinerRPCAPI._load_api_data(data)
        except (APIError, ValueError, UnicodeDecodeError) as exc:
            raise DriverError(FailureKind.BAD_REPLY, f"not JSON: {_excerpt(data)}") from exc
    if not isinstance(value, dict):
        raise DriverError(FailureKind.BAD_REPLY, f"not a JSON object: {_excerpt(data)}")
    return value


def decode_framed(data: bytes) -> dict[str, Any]:
    """Decode a btminer API v3 payload (plain JSON)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DriverError(FailureKind.BAD_REPLY, f"not JSON: {_excerpt(data)}") from exc
    if not isinstance(value, dict):
        raise DriverError(FailureKind.BAD_REPLY, f"not a JSON object: {_excerpt(data)}")
    return value


def _excerpt(data: bytes, limit: int = 80) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(data) > limit else ""))
