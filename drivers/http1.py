"""HTTP/1.1 to a rig: one kept-alive connection, h11 framing, bounds, deadlines, pipelining.

The one HTTP/1.1 client of the drivers. The stock Antminer web UI (digest auth on top,
``drivers.webdigest``), Braiins OS (a token, ``drivers.braiins``), VNish and ePIC all send
their requests through :class:`Http1`; what differs between them is only the authentication
and the meaning of the replies.

- Framing is h11's (the HTTP/1.1 state machine under httpx): Content-Length, chunked with
  extensions and trailers, close-delimited, HTTP/1.0 replies, ``Connection: close``, 1xx.
- Bounds: a reply's body is capped at ``max_body`` as it arrives, its head at h11's 16 KiB,
  and :meth:`Http1.fetch` / :meth:`Http1.guarded` put a deadline on the whole exchange.
- One connection per rig, kept alive across requests (and across cycles, where the caller
  does not :meth:`~Http1.release` it). A kept-alive connection the rig dropped while idle is
  noticed (it answers nothing) and the requests are sent again on a new one, once.
- Pipelining (RFC 9112 9.3.2): a batch of requests is written at once and the replies are
  read back in order, so a read of several resources costs one write. A server that closes
  the connection after a reply (``Connection: close``, HTTP/1.0, a close-delimited body, or
  silently) gets the requests it left unanswered again on a new connection, one by one.
- Every failure is a :class:`~drivers.transport.DriverError` with a kind and a detail naming
  the API (``label``) and the request: TIMEOUT, UNREACHABLE, or BAD_REPLY (a broken framing,
  a body over the cap, a server that closes a new connection without answering).

Why not ``httpx.AsyncClient``: measured against the simulator (docs/benchmarks.md), a stock
command's GET + POST cost 1.7-2.0 ms of CPU through the client against 0.4-0.5 ms this way,
and a 10,000-rig curtailment is CPU-bound on its sends; nor does httpx pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import h11

from drivers.transport import DriverError
from policies.values import FailureKind

MAX_BODY = 1024 * 1024
_READ = 64 * 1024
_BUILT_CACHE = 64
_BODY_METHODS = frozenset({"PUT", "POST", "PATCH"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Request:
    """One request: ``body`` (JSON bytes) goes with Content-Length; ``headers`` are extra
    (an Authorization, say). Host and ``Accept: application/json`` are always sent."""

    method: str
    target: str
    body: bytes | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Reply:
    """A whole reply of any status: the status, the headers (names in lower case), the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Closed(Exception):
    """The server closed the connection before sending anything of a reply."""

    def __init__(self, cause: OSError | None) -> None:
        super().__init__()
        self.cause = cause


class _Connection:
    """One TCP connection, its h11 state machine, and how many replies it has given."""

    __slots__ = ("answered", "eof", "h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.answered = 0
        self.eof = False  # the server closed its side (a close-delimited body ends so)

    def close(self) -> None:
        self.writer.transport.abort()


class _Built:
    """A request as h11 checked it, its body, and its bytes on the wire once asked for (only
    the requests after the first of a write need them)."""

    __slots__ = ("body", "message", "wire")

    def __init__(self, message: h11.Request, body: bytes | None) -> None:
        self.message = message
        self.body = body
        self.wire: bytes | None = None

    def bytes(self) -> bytes:
        """``message`` as h11 writes it (Content-Length framing), to write several at once."""
        if self.wire is None:
            head = b"%s %s HTTP/1.1\r\n" % (self.message.method, self.message.target)
            head += b"".join(b"%s: %s\r\n" % item for item in self.message.headers.raw_items())
            self.wire = head + b"\r\n" + (self.body or b"")
        return self.wire


class Http1:
    """One rig's HTTP/1.1 endpoint: one connection, kept alive until :meth:`release`."""

    def __init__(self, host: str, port: int, label: str, max_body: int = MAX_BODY) -> None:
        self.host = host
        self.port = port
        self.label = label
        self.max_body = max_body
        self._conn: _Connection | None = None
        self._built: dict[Request, _Built] = {}
        # An IPv6 literal goes in brackets in the Host header (RFC 3986, 7230).
        authority = f"[{host}]" if ":" in host else host
        self.authority = authority if port == 80 else f"{authority}:{port}"
        self._host_header = self.authority.encode()

    def release(self) -> None:
        """Close the connection; the next request opens one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def fetch(self, requests: Sequence[Request], timeout_s: float) -> list[Reply]:
        """Send ``requests`` (pipelined when more than one) and return their replies in order,
        all within ``timeout_s``. Raises DriverError as :meth:`guarded`."""
        return await self.guarded(self.exchange(requests), timeout_s, requests[0].target)

    async def guarded(self, work: Awaitable[T], timeout_s: float, target: str) -> T:
        """Await ``work`` (exchanges on this endpoint) within ``timeout_s``; its failures as
        DriverError: TIMEOUT, UNREACHABLE, BAD_REPLY (broken HTTP, naming ``target``). The
        connection is closed on any failure: whatever it was doing, it is not reusable."""
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        except TimeoutError:
            self.release()
            raise DriverError(
                FailureKind.TIMEOUT, f"{self.label}: no answer within {timeout_s:.1f} s"
            ) from None
        except DriverError:
            self.release()
            raise
        except h11.ProtocolError as exc:
            self.release()
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label} {target}: broken HTTP reply ({exc})"
            ) from None
        except OSError as exc:
            self.release()
            raise DriverError(
                FailureKind.UNREACHABLE, f"{self.label}: {exc or type(exc).__name__}"
            ) from None

    async def exchange(self, requests: Sequence[Request], keep: bool = True) -> list[Reply]:
        """The replies to ``requests``, in order, without a deadline of its own (run it under
        :meth:`guarded`). ``keep``: remember the bodiless ones, built, for the next time (not
        for a request sent once, as one with a digest response). Raises h11.ProtocolError,
        OSError or DriverError (a body over the cap)."""
        built = [self._build(r, keep) for r in requests]
        replies: list[Reply] = []
        pipeline = True
        while len(replies) < len(built):
            conn = self._conn
            if conn is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                conn = self._conn = _Connection(reader, writer)
            before = conn.answered
            start = len(replies)
            todo = built[start:] if pipeline else built[start : start + 1]
            machine = conn.h11
            first = todo[0]
            out = machine.send(first.message) or b""
            if first.body is not None:
                out += machine.send(h11.Data(data=first.body)) or b""
            out += machine.send(h11.EndOfMessage()) or b""
            conn.writer.write(out + b"".join(later.bytes() for later in todo[1:]))
            for i, request in enumerate(todo):
                if i:  # already on the wire: this keeps h11's state in step
                    machine.send(request.message)
                    if request.body is not None:
                        machine.send(h11.Data(data=request.body))
                    machine.send(h11.EndOfMessage())
                try:
                    replies.append(await self._response(conn, request.message))
                except _Closed as closed:
                    self.release()
                    if conn.answered > before:
                        pipeline = False  # closed after a reply: the rest one by one
                    elif before == 0:  # a new connection that answers nothing
                        if closed.cause is not None:
                            raise closed.cause from None
                        raise h11.RemoteProtocolError(
                            "the server closed the connection without answering"
                        ) from None
                    # else: kept alive from an earlier call and dropped while idle: again
                    break
                conn.answered += 1
                if (
                    machine.our_state is h11.DONE
                    and machine.their_state is h11.DONE
                    and not conn.eof
                ):
                    machine.start_next_cycle()
                else:  # Connection: close, HTTP/1.0, a close-delimited body
                    self.release()
                    pipeline = False
                    break
        return replies

    def _build(self, request: Request, keep: bool) -> _Built:
        """The h11 request; a bodiless one is built once (a cycle's reads are the same every
        cycle)."""
        keep = keep and request.body is None
        built = self._built.get(request) if keep else None
        if built is not None:
            return built
        body = request.body
        headers = [(b"Host", self._host_header), (b"Accept", b"application/json")]
        headers += request.headers
        if body is not None:
            headers += [
                (b"Content-Type", b"application/json"),
                (b"Content-Length", str(len(body)).encode()),
            ]
        elif request.method in _BODY_METHODS:
            headers.append((b"Content-Length", b"0"))
        built = _Built(
            h11.Request(method=request.method, target=request.target, headers=headers), body
        )
        if keep:
            if len(self._built) >= _BUILT_CACHE:
                self._built.clear()
            self._built[request] = built
        return built

    async def _response(self, conn: _Connection, request: h11.Request) -> Reply:
        machine = conn.h11
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            event = machine.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await conn.reader.read(_READ)
                except ConnectionError as exc:
                    if status is None and not machine.trailing_data[0]:
                        raise _Closed(exc) from None
                    raise
                if not data:
                    if status is None and not machine.trailing_data[0]:
                        raise _Closed(None)
                    conn.eof = True
                machine.receive_data(data)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise DriverError(
                        FailureKind.BAD_REPLY,
                        f"{self.label} {request.target.decode()}: reply over {self.max_body} bytes",
                    )
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return Reply(status, headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the connection closed before a reply")
            # h11.InformationalResponse (100 Continue): nothing to do but read on
