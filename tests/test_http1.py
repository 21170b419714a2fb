"""The drivers' one HTTP/1.1 client (drivers/http1.py) against a server scripted byte by byte.

Every connection the client opens runs a script written in the test: it reads the requests
it wants, writes exactly the bytes given (each framing HTTP/1.1 allows, garbage, half a
reply), and closes when told. What each connection received is kept, so a test sees which
requests were written at once (pipelined) and which went again on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers.http1 import Http1, Reply, Request
from drivers.transport import DriverError
from policies.values import FailureKind


class Conn:
    """One accepted connection: the bytes it received, its requests, its writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.raw = b""

    async def request(self) -> tuple[str, str, dict[str, str], bytes]:
        """Read one request (head, and a body by its Content-Length)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        assert version == "HTTP/1.1"
        headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.raw += head + body
        return method, target, headers, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close_after(self, data: bytes = b"") -> None:
        """Write ``data``, close our side, and keep what the client still sends until it
        closes its own."""
        self.writer.write(data)
        await self.writer.drain()
        self.writer.write_eof()
        with contextlib.suppress(ConnectionError):
            self.raw += await self.reader.read()

    @property
    def targets(self) -> list[str]:
        """The request targets this connection was sent, in order."""
        return [t.decode() for t in re.findall(rb"^[A-Z]+ (\S+) HTTP/1\.1\r$", self.raw, re.M)]


Script = Callable[[Conn, int], Awaitable[None]]


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.conns: list[Conn] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        self.conns.append(conn)
        try:
            await self.script(conn, len(self.conns) - 1)
            with contextlib.suppress(ConnectionError):
                conn.raw += await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Server]:
    server = Server(script)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


def http(server: Server, max_body: int = 1024) -> Http1:
    return Http1("127.0.0.1", server.port, "test API", max_body)


async def answer_each(conn: Conn, _: int) -> None:
    """Answer every request with its own target, Content-Length, kept alive."""
    while True:
        target = (await conn.request())[1]
        await conn.send(ok(target.encode()))


# ---- every framing, one request -----------------------------------------------------------------

FRAMINGS: dict[str, tuple[bytes, int, bytes, bool]] = {
    # name: (the reply's bytes, its status, its body, whether the connection stays)
    "content-length": (ok(b'{"a":1}'), 200, b'{"a":1}', True),
    "chunked, extensions and trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;name=value\r\n{"a\r\n4;x\r\n":1}\r\n0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n',
        200,
        b'{"a":1}',
        True,
    ),
    "close-delimited": (b'HTTP/1.1 200 OK\r\n\r\n{"a":1}', 200, b'{"a":1}', False),
    "HTTP/1.0 with a length": (
        b'HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}',
        200,
        b'{"a":1}',
        False,
    ),
    "HTTP/1.0 close-delimited": (b'HTTP/1.0 200 OK\r\n\r\n{"a":1}', 200, b'{"a":1}', False),
    "Connection: close on a keep-alive request": (
        ok(b'{"a":1}', b"Connection: close\r\n"),
        200,
        b'{"a":1}',
        False,
    ),
    "401 with a body": (
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="r"\r\n'
        b"Content-Type: text/html\r\nContent-Length: 13\r\n\r\n<h1>401</h1>\n",
        401,
        b"<h1>401</h1>\n",
        True,
    ),
    "401 without a body": (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        401,
        b"",
        True,
    ),
    "100 Continue first": (
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}"),
        200,
        b"{}",
        True,
    ),
    "204 No Content": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
}


@pytest.mark.parametrize("name", FRAMINGS)
async def test_every_framing_then_the_next_request(name: str) -> None:
    """Each framing read whole; the next request goes on the same connection exactly when
    the reply left it open."""
    reply, status, body, kept = FRAMINGS[name]

    async def script(conn: Conn, index: int) -> None:
        await conn.request()
        if kept:
            await conn.send(reply)
            await conn.request()
            await conn.send(ok(b"second"))
        else:
            await conn.close_after(reply if index == 0 else ok(b"second"))

    async with scripted(script) as server:
        client = http(server)
        [first] = await client.fetch([Request("GET", "/one")], 2.0)
        [second] = await client.fetch([Request("GET", "/two")], 2.0)
        client.release()
    assert (first.status, first.body) == (status, body)
    assert second.body == b"second"
    assert len(server.conns) == (1 if kept else 2)


async def test_the_reply_headers_are_given_in_lower_case() -> None:
    async def script(conn: Conn, _: int) -> None:
        await conn.request()
        await conn.send(
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="r"\r\n'
            b"Content-Length: 0\r\n\r\n"
        )

    async with scripted(script) as server:
        [reply] = await http(server).fetch([Request("GET", "/")], 2.0)
    assert reply == Reply(
        401, [(b"www-authenticate", b'Digest realm="r"'), (b"content-length", b"0")], b""
    )


async def test_the_request_as_written() -> None:
    """Host (with the port), Accept, the extra headers, and a body's type and length; a
    bodiless POST says Content-Length: 0."""
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def script(conn: Conn, _: int) -> None:
        for _ in range(2):
            seen.append(await conn.request())
            await conn.send(ok(b"{}"))

    async with scripted(script) as server:
        await http(server).fetch(
            [
                Request("POST", "/set", b'{"x":1}', ((b"Authorization", b"T0K"),)),
                Request("POST", "/start"),
            ],
            2.0,
        )
    assert seen == [
        (
            "POST",
            "/set",
            {
                "host": f"127.0.0.1:{server.port}",
                "accept": "application/json",
                "authorization": "T0K",
                "content-type": "application/json",
                "content-length": "7",
            },
            b'{"x":1}',
        ),
        (
            "POST",
            "/start",
            {
                "host": f"127.0.0.1:{server.port}",
                "accept": "application/json",
                "content-length": "0",
            },
            b"",
        ),
    ]


# ---- pipelining ---------------------------------------------------------------------------------


async def test_a_batch_is_written_at_once_and_read_in_order() -> None:
    """The server reads all three requests before it answers any: a client that waited for
    each reply before writing the next would never be answered."""

    async def script(conn: Conn, _: int) -> None:
        targets = [(await conn.request())[1] for _ in range(3)]
        await conn.send(
            ok(targets[0].encode())
            + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n/b\r\n0\r\n\r\n"
            + ok(targets[2].encode())
        )
        await answer_each(conn, 0)

    async with scripted(script) as server:
        client = http(server)
        replies = await client.fetch([Request("GET", p) for p in ("/a", "/b", "/c")], 2.0)
        again = await client.fetch([Request("GET", "/d")], 2.0)
    assert [r.body for r in replies] == [b"/a", b"/b", b"/c"]
    assert again[0].body == b"/d"
    assert len(server.conns) == 1
    assert server.conns[0].targets == ["/a", "/b", "/c", "/d"]


async def test_a_server_that_closes_after_the_first_reply_gets_the_rest_one_by_one() -> None:
    """The first connection was sent the whole batch and answered one, saying it closes; the
    rest go again on new connections, one request per write (each of these connections
    closes after its reply too, so each was sent exactly one)."""

    async def script(conn: Conn, _: int) -> None:
        target = (await conn.request())[1]
        await conn.close_after(ok(target.encode(), b"Connection: close\r\n"))

    async with scripted(script) as server:
        client = http(server)
        replies = await client.fetch([Request("GET", p) for p in ("/a", "/b", "/c")], 2.0)
    assert [r.body for r in replies] == [b"/a", b"/b", b"/c"]
    assert [c.targets for c in server.conns] == [["/a", "/b", "/c"], ["/b"], ["/c"]]


async def test_a_server_that_closes_silently_after_the_first_reply() -> None:
    """Kept alive by its headers, closed after one reply all the same: the unanswered rest
    goes again on a new connection, which stays."""

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            target = (await conn.request())[1]
            await conn.close_after(ok(target.encode()))
        else:
            await answer_each(conn, index)

    async with scripted(script) as server:
        client = http(server)
        replies = await client.fetch([Request("GET", p) for p in ("/a", "/b", "/c")], 2.0)
        again = await client.fetch([Request("GET", "/d")], 2.0)
    assert [r.body for r in replies + again] == [b"/a", b"/b", b"/c", b"/d"]
    assert [c.targets for c in server.conns] == [["/a", "/b", "/c"], ["/b", "/c", "/d"]]


async def test_after_a_close_mid_batch_a_new_connection_that_stays_is_kept() -> None:
    """One by one after the close, on one new connection while it stays open."""

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            target = (await conn.request())[1]
            await conn.close_after(ok(target.encode(), b"Connection: close\r\n"))
        else:
            await answer_each(conn, index)

    async with scripted(script) as server:
        client = http(server)
        replies = await client.fetch([Request("GET", p) for p in ("/a", "/b", "/c")], 2.0)
    assert [r.body for r in replies] == [b"/a", b"/b", b"/c"]
    assert [c.targets for c in server.conns] == [["/a", "/b", "/c"], ["/b", "/c"]]


MID_BATCH = {
    "a body cut short": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial',
    "a head cut short": b"HTTP/1.1 200 OK\r\nContent-Le",
    "garbage": b"\x00\x01garbage, not HTTP\r\n\r\n",
    "a broken chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
}


@pytest.mark.parametrize("name", MID_BATCH)
async def test_a_broken_reply_mid_batch_is_a_bad_reply(name: str) -> None:
    """The first reply whole, the second broken, then the connection closed: the batch fails
    with a detail naming the request, and the next call starts on a new connection."""

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            for _ in range(3):
                await conn.request()
            await conn.close_after(ok(b"/a") + MID_BATCH[name])
        else:
            await answer_each(conn, index)

    async with scripted(script) as server:
        client = http(server)
        with pytest.raises(DriverError) as err:
            await client.fetch([Request("GET", p) for p in ("/a", "/b", "/c")], 2.0)
        assert err.value.kind is FailureKind.BAD_REPLY
        assert err.value.detail.startswith("test API /a: broken HTTP reply (")
        [reply] = await client.fetch([Request("GET", "/d")], 2.0)
    assert reply.body == b"/d"
    assert len(server.conns) == 2


# ---- kept-alive connections, dropped ------------------------------------------------------------


async def test_a_connection_dropped_while_idle_is_reopened_once() -> None:
    """The rig closed the kept connection between two calls: the batch goes again, whole, on a
    new connection."""
    first = asyncio.Event()

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            target = (await conn.request())[1]
            await conn.send(ok(target.encode()))
            await first.wait()
            await conn.close_after()
        else:
            await answer_each(conn, index)

    async with scripted(script) as server:
        client = http(server)
        await client.fetch([Request("GET", "/a")], 2.0)
        first.set()
        await asyncio.sleep(0)  # not a timing assumption: the retry covers either order
        replies = await client.fetch([Request("GET", "/b"), Request("GET", "/c")], 2.0)
    assert [r.body for r in replies] == [b"/b", b"/c"]
    assert len(server.conns) == 2
    assert server.conns[1].targets == ["/b", "/c"]


async def test_a_new_connection_closed_unanswered_is_not_retried() -> None:
    async def script(conn: Conn, _: int) -> None:
        await conn.request()
        await conn.close_after()

    async with scripted(script) as server:
        with pytest.raises(DriverError) as err:
            await http(server).fetch([Request("GET", "/a")], 2.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == (
        "test API /a: broken HTTP reply (the server closed the connection without answering)"
    )
    assert len(server.conns) == 1


async def test_a_dropped_connection_and_a_new_one_unanswered_is_an_error() -> None:
    """Reopened once only: the new connection closing unanswered too ends the call."""

    async def script(conn: Conn, index: int) -> None:
        if index == 0:
            await conn.request()
            await conn.send(ok(b"{}"))
        await conn.request()
        await conn.close_after()

    async with scripted(script) as server:
        client = http(server)
        await client.fetch([Request("GET", "/a")], 2.0)
        with pytest.raises(DriverError, match="closed the connection without answering"):
            await client.fetch([Request("GET", "/b")], 2.0)
    assert len(server.conns) == 2


# ---- bounds and deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        ok(b"x" * 2000),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100\r\n" + b"x" * 256 + b"\r\n") * 8,
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000,
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
async def test_a_body_over_the_cap_is_a_bad_reply(reply: bytes) -> None:
    async def script(conn: Conn, _: int) -> None:
        await conn.request()
        await conn.send(reply)

    async with scripted(script) as server:
        with pytest.raises(DriverError) as err:
            await http(server, max_body=1024).fetch([Request("GET", "/big")], 2.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == "test API /big: reply over 1024 bytes"


async def stalled(parts: list[bytes], timeout_s: float) -> DriverError:
    """The error of one request to a server that writes ``parts`` and then nothing, open."""
    hold = asyncio.Event()

    async def script(conn: Conn, _: int) -> None:
        await conn.request()
        for part in parts:
            await conn.send(part)
        await hold.wait()

    async with scripted(script) as server:
        with pytest.raises(DriverError) as err:
            await http(server).fetch([Request("GET", "/h")], timeout_s)
        hold.set()
    return err.value


async def test_a_head_without_end_is_cut_at_h11s_limit() -> None:
    """A head that never ends is refused once it passes h11's 16 KiB, not read forever."""
    err = await stalled([b"HTTP/1.1 200 OK\r\nX-Pad: "] + [b"p" * 4096] * 8, 5.0)
    assert err.kind is FailureKind.BAD_REPLY
    assert err.detail.startswith("test API /h: broken HTTP reply (")


async def test_a_silent_server_meets_the_deadline() -> None:
    err = await stalled([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"], 0.3)
    assert err.kind is FailureKind.TIMEOUT
    assert err.detail == "test API: no answer within 0.3 s"


async def test_nothing_listening_is_unreachable() -> None:
    async with scripted(answer_each) as server:
        port = server.port
    with pytest.raises(DriverError) as err:
        await Http1("127.0.0.1", port, "test API").fetch([Request("GET", "/")], 2.0)
    assert err.value.kind is FailureKind.UNREACHABLE
    assert err.value.detail.startswith("test API: ")
