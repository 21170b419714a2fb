"""The stock Antminer web UI: httpx digest auth on top of the drivers' HTTP/1.1 connection.

Real firmware's lighttpd runs the ``cgi-bin/*.cgi`` shell scripts, which print no
Content-Length: on HTTP/1.1 lighttpd sends their replies chunked, on HTTP/1.0 it closes the
connection. The framing, the bounds, the deadline, the kept-alive connection and its reopening
are ``drivers.http1``'s (h11 frames every message); what is left here is the authentication:
``httpx.DigestAuth`` answers the challenge (it remembers it, so a later request is sent
authenticated at once: one request instead of a 401 and a retry; a stale nonce earns a fresh
401 and one retry).

One connection per rig, kept alive across the requests of a burst (the configuration and the
summary; the configuration read and the write of a command) and closed by :meth:`release`
after it (web reads come minutes apart, lighttpd drops idle connections after seconds, and
10,000 idle sockets would only hold file descriptors). The replies' meaning is still pyasic's
business: the caller hands the decoded JSON to pyasic's config parser.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx

from drivers import http1
from drivers.http1 import Http1, Reply, Request
from drivers.transport import DriverError
from policies.values import FailureKind

WEB_PORT = 80
MAX_BODY = http1.MAX_BODY


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
        self.http = Http1(host, port, "web UI", max_body)
        self._auth = httpx.DigestAuth(user, password)
        self._requests: dict[tuple[str, str], httpx.Request] = {}

    async def release(self) -> None:
        """Close the connection (the remembered challenge stays); the next call opens one."""
        self.http.release()

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
        status, raw, reply = await self.http.guarded(
            self._authenticated(method, uri, body), timeout_s, uri
        )
        if status == 401:
            offered = httpx.Headers(raw).get("www-authenticate", "")
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
        self, method: str, uri: str, body: bytes | None, timeout_s: float
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request (two on a new or stale challenge): the status, headers and body of any
        status; DriverError TIMEOUT, UNREACHABLE, or BAD_REPLY (a body over the cap, broken
        framing)."""
        status, raw, reply = await self.http.guarded(
            self._authenticated(method, uri, body), timeout_s, uri
        )
        return status, httpx.Headers(raw), reply

    async def _authenticated(
        self, method: str, uri: str, body: bytes | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run httpx's digest flow over our connection: the request, and again on a 401.

        The flow needs only the method and the URI (no auth-int), so one bodiless
        ``httpx.Request`` per method and URI stands for every request sent there.
        """
        request = self._requests.get((method, uri))
        if request is None:
            request = self._requests[method, uri] = httpx.Request(method, _url(uri))
        request.headers.pop("Authorization", None)
        flow = self._auth.sync_auth_flow(request)
        try:
            request = next(flow)
            reply = await self._send(method, uri, body, request)
            if reply.status == 401:
                challenge = httpx.Response(401, headers=reply.headers, request=request)
                try:
                    request = flow.send(challenge)
                except StopIteration:
                    return reply.status, reply.headers, reply.body
                reply = await self._send(method, uri, body, request)
        finally:
            flow.close()
        return reply.status, reply.headers, reply.body

    async def _send(self, method: str, uri: str, body: bytes | None, auth: httpx.Request) -> Reply:
        authorization = auth.headers.get("Authorization")
        headers = () if authorization is None else ((b"Authorization", authorization.encode()),)
        # a digest response is good for one request only: nothing to keep built
        [reply] = await self.http.exchange([Request(method, uri, body, headers)], keep=False)
        return reply


@functools.lru_cache(maxsize=64)
def _url(uri: str) -> httpx.URL:
    """``uri`` parsed once for every rig: the digest flow reads only its path (the response
    covers the method and the path, not the host), and the request goes out with our own
    Host header, so one URL stands for every rig's request there."""
    return httpx.URL("http://rig" + uri)


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
