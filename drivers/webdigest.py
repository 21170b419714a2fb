"""The stock Antminer web UI over HTTP as HTTP is: h11 framing, httpx digest auth, one connection.

Real firmware's lighttpd runs the ``cgi-bin/*.cgi`` shell scripts, which print no
Content-Length: on HTTP/1.1 lighttpd sends their replies chunked, on HTTP/1.0 it closes the
connection. Reading HTTP is therefore not ours to write: h11 (the HTTP/1.1 state machine under
httpx) frames every message (Content-Length, chunked with extensions and trailers,
close-delimited, HTTP/1.0, ``Connection: close``, keep-alive), and ``httpx.DigestAuth``
answers the challenge (it remembers it, so a later request is sent authenticated at once: one
request instead of a 401 and a retry; a stale nonce earns a fresh 401 and one retry).

Why not ``httpx.AsyncClient`` itself: measured against the simulator (docs/benchmarks.md), a
command's GET + POST cost 1.7-2.0 ms of CPU through the client against 0.4-0.5 ms here, and a
10,000-rig curtailment is CPU-bound on its sends. What is left to this module is the socket:
one connection per rig, kept alive across the requests of a burst (the configuration and the
summary; the configuration read and the write of a command) and closed by :meth:`release`
after it (web reads come minutes apart, lighttpd drops idle connections after seconds, and
10,000 idle sockets would only hold file descriptors). A kept-alive connection the server has
dropped is noticed and the request sent once more on a new one. Every body, a 401's included,
is capped at :data:`MAX_BODY` as it arrives, headers at h11's 16 KiB, and every call has a
deadline. The replies' meaning is still pyasic's business: the caller hands the decoded JSON
to pyasic's config parser.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import httpx

from drivers.transport import DriverError
from policies.values import FailureKind

MAX_BODY = 1024 * 1024
WEB_PORT = 80
_READ = 64 * 1024


class _Dropped(Exception):
    """The server closed a kept-alive connection before answering anything on it."""


class _Connection:
    """One TCP connection and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.used = False

    def close(self) -> None:
        self.writer.transport.abort()


class WebSession:
    """One rig's web UI: digest credentials, the remembered challenge, one connection."""

    def __init__(
        self,
        host: str,
        user: str,
        password: str,
        port: int = WEB_PORT,
        max_body: int = MAX_BODY,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.max_body = max_body
        self._auth = httpx.DigestAuth(user, password)
        self._conn: _Connection | None = None
        self._requests: dict[tuple[str, str], httpx.Request] = {}
        # An IPv6 literal goes in brackets, in the URL and the Host header (RFC 3986, 7230).
        authority = f"[{host}]" if ":" in host else host
        if port != WEB_PORT:
            authority = f"{authority}:{port}"
        self._base = f"http://{authority}"
        self._host_header = authority

    async def release(self) -> None:
        """Close the connection (the remembered challenge stays); the next call opens one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def get_json(self, uri: str, timeout_s: float) -> dict[str, Any]:
        """GET ``uri`` with digest auth and return its JSON object, within ``timeout_s``.

        Raises DriverError: TIMEOUT, UNREACHABLE, or BAD_REPLY (wrong credentials, an HTTP
        error status, a body over the cap, a broken framing, non-JSON).
        """
        return await self.request_json("GET", uri, None, timeout_s)

    async def post_json(
        self, uri: str, payload: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """POST ``payload`` as JSON to ``uri`` with digest auth; the reply's JSON object."""
        return await self.request_json("POST", uri, json.dumps(payload).encode(), timeout_s)

    async def request_json(
        self, method: str, uri: str, body: bytes | None, timeout_s: float
    ) -> dict[str, Any]:
        """One request (two on a new or stale challenge); errors as :meth:`get_json`."""
        status, headers, reply = await self.request(method, uri, body, timeout_s)
        if status == 401:
            offered = headers.get("www-authenticate", "")
            if offered and not offered.lower().startswith("digest "):
                scheme = offered.split(" ", maxsplit=1)[0]
                raise DriverError(
                    FailureKind.BAD_REPLY, f"web UI asks for {scheme!r} auth, not digest"
                )
            raise DriverError(
                FailureKind.BAD_REPLY, f"web UI refused the credentials for user {self.user!r}"
            )
        if status != 200:
            raise DriverError(FailureKind.BAD_REPLY, f"web UI {uri}: HTTP {status}")
        return json_object(reply, f"web UI {uri}")

    async def request(
        self,
        method: str,
        uri: str,
        body: bytes | None,
        timeout_s: float,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request (two on a new or stale challenge): the status, headers and body of any
        status; DriverError TIMEOUT, UNREACHABLE, or BAD_REPLY (a body over the cap, broken
        framing). ``extra`` headers go with it (a firmware's own token, say)."""
        try:
            async with asyncio.timeout(timeout_s):
                status, headers, reply = await self._authenticated(method, uri, body, extra)
        except TimeoutError:
            await self.release()  # whatever the connection was doing, it is not reusable
            raise DriverError(
                FailureKind.TIMEOUT, f"web UI: no answer within {timeout_s:.1f} s"
            ) from None
        except DriverError:
            await self.release()
            raise
        except h11.RemoteProtocolError as exc:
            await self.release()
            raise DriverError(
                FailureKind.BAD_REPLY, f"web UI {uri}: broken HTTP reply ({exc})"
            ) from None
        except OSError as exc:
            await self.release()
            raise DriverError(
                FailureKind.UNREACHABLE, f"web UI: {exc or type(exc).__name__}"
            ) from None
        return status, headers, reply

    async def _authenticated(
        self, method: str, uri: str, body: bytes | None, extra: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[int, httpx.Headers, bytes]:
        """Run httpx's digest flow over our connection: the request, and again on a 401.

        The flow needs only the method and the URI (no auth-int), so one bodiless
        ``httpx.Request`` per method and URI stands for every request sent there.
        """
        request = self._requests.get((method, uri))
        if request is None:
            request = self._requests[method, uri] = httpx.Request(method, self._base + uri)
        request.headers.pop("Authorization", None)
        flow = self._auth.sync_auth_flow(request)
        try:
            request = next(flow)
            status, raw, reply = await self._exchange(method, uri, body, request, extra)
            if status == 401:
                challenge = httpx.Response(401, headers=raw, request=request)
                try:
                    request = flow.send(challenge)
                except StopIteration:
                    return status, challenge.headers, reply
                status, raw, reply = await self._exchange(method, uri, body, request, extra)
        finally:
            flow.close()
        return status, httpx.Headers(raw), reply

    async def _exchange(
        self,
        method: str,
        uri: str,
        body: bytes | None,
        auth: httpx.Request,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [(b"Host", self._host_header.encode()), (b"Accept", b"application/json")]
        authorization = auth.headers.get("Authorization")
        if authorization is not None:
            headers.append((b"Authorization", authorization.encode()))
        headers += extra
        if body is not None:
            headers += [
                (b"Content-Type", b"application/json"),
                (b"Content-Length", str(len(body)).encode()),
            ]
        request = h11.Request(method=method, target=uri, headers=headers)
        for attempt in (1, 2):
            conn = self._conn
            if conn is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                conn = self._conn = _Connection(reader, writer)
            try:
                return await self._roundtrip(conn, request, body)
            except _Dropped:
                await self.release()
                if attempt == 2:
                    raise h11.RemoteProtocolError(
                        "the server closed the connection without answering"
                    ) from None
        raise AssertionError("unreachable")

    async def _roundtrip(  # noqa: C901, PLR0912  one HTTP/1.1 exchange as h11's event loop: each event kind is a case
        self, conn: _Connection, request: h11.Request, body: bytes | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        machine = conn.h11
        reused, conn.used = conn.used, True
        out = machine.send(request)
        if body is not None:
            out += machine.send(h11.Data(data=body))
        out += machine.send(h11.EndOfMessage())
        conn.writer.write(out)
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            event = machine.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await conn.reader.read(_READ)
                except ConnectionError:
                    if reused and status is None:
                        raise _Dropped from None
                    raise
                if not data and reused and status is None:
                    raise _Dropped  # nothing answered on a kept-alive connection
                machine.receive_data(data)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise DriverError(
                        FailureKind.BAD_REPLY,
                        f"web UI {request.target.decode()}: reply over {self.max_body} bytes",
                    )
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the connection closed before a reply")
            # h11.InformationalResponse (100 Continue): nothing to do but read on
        assert status is not None
        if machine.our_state is h11.DONE and machine.their_state is h11.DONE:
            machine.start_next_cycle()  # kept alive: the next request goes on this connection
        else:
            await self.release()  # Connection: close, HTTP/1.0, or a close-delimited body
        return status, headers, b"".join(chunks)


def json_object(body: bytes, where: str) -> dict[str, Any]:
    """``body`` as a JSON object; DriverError BAD_REPLY naming ``where`` otherwise."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DriverError(FailureKind.BAD_REPLY, f"{where}: not JSON") from None
    if not isinstance(value, dict):
        raise DriverError(FailureKind.BAD_REPLY, f"{where}: not a JSON object")
    return value


async def get_json(
    host: str, uri: str, user: str, password: str, timeout_s: float, port: int = WEB_PORT
) -> dict[str, Any]:
    """One GET on a session of its own (opened and closed here); errors as
    :meth:`WebSession.get_json`. Drivers keep a :class:`WebSession` per rig instead."""
    session = WebSession(host, user, password, port)
    try:
        return await session.get_json(uri, timeout_s)
    finally:
        await session.release()
