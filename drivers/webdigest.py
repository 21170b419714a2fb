"""A small HTTP client for the stock Antminer web UI: GET a CGI with digest auth, cheaply.

pyasic opens a new httpx client per call, so each read costs a 401 challenge plus the
authenticated request and several milliseconds of CPU. Here one keep-alive connection carries
both, and the server's nonce is remembered per rig, so later reads are one request (a stale
nonce earns a fresh 401 and one retry). The reply's meaning is still pyasic's business: the
caller hands the decoded JSON to pyasic's config parser.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from drivers.transport import DriverError
from policies.values import FailureKind

MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class _Challenge:
    realm: str
    nonce: str
    qop: str
    opaque: str | None
    nc: int = 0


_NONCES: dict[str, _Challenge] = {}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _parse_challenge(header: str) -> _Challenge:
    if not header.lower().startswith("digest "):
        raise DriverError(
            FailureKind.BAD_REPLY,
            f"web UI asks for {header.split(' ', maxsplit=1)[0]!r} auth, not digest",
        )
    fields: dict[str, str] = {}
    for part in _split_params(header[7:]):
        key, _, value = part.partition("=")
        fields[key.strip().lower()] = value.strip().strip('"')
    if "nonce" not in fields or "realm" not in fields:
        raise DriverError(FailureKind.BAD_REPLY, "digest challenge without realm or nonce")
    qop = fields.get("qop", "")
    return _Challenge(
        fields["realm"], fields["nonce"], "auth" if "auth" in qop else "", fields.get("opaque")
    )


def _split_params(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return parts


def _authorization(ch: _Challenge, user: str, password: str, uri: str, method: str = "GET") -> str:
    ch.nc += 1
    ha1 = _md5(f"{user}:{ch.realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    cnonce = os.urandom(8).hex()
    nc = f"{ch.nc:08x}"
    if ch.qop:
        response = _md5(f"{ha1}:{ch.nonce}:{nc}:{cnonce}:{ch.qop}:{ha2}")
    else:
        response = _md5(f"{ha1}:{ch.nonce}:{ha2}")
    header = (
        f'Digest username="{user}", realm="{ch.realm}", nonce="{ch.nonce}", '
        f'uri="{uri}", response="{response}", algorithm=MD5'
    )
    if ch.qop:
        header += f', qop={ch.qop}, nc={nc}, cnonce="{cnonce}"'
    if ch.opaque:
        header += f', opaque="{ch.opaque}"'
    return header


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    uri: str,
    auth: str | None,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {uri} HTTP/1.1", f"Host: {host}", "Accept: application/json"]
    if auth:
        lines.append(f"Authorization: {auth}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise DriverError(FailureKind.BAD_REPLY, f"web UI: bad status line {status_line!r}")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raw_length = headers.get("content-length", "0") or "0"
    length = int(raw_length) if raw_length.isdigit() else -1
    if length < 0:
        raise DriverError(FailureKind.BAD_REPLY, f"web UI: bad Content-Length {raw_length[:40]!r}")
    if length > MAX_BODY:
        raise DriverError(FailureKind.BAD_REPLY, "web UI reply too large")
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), headers, body


async def get_json(
    host: str, uri: str, user: str, password: str, timeout_s: float, port: int = 80
) -> dict[str, Any]:
    """GET ``uri`` with digest auth and return its JSON object, within ``timeout_s``.

    Raises DriverError: TIMEOUT, UNREACHABLE, or BAD_REPLY (wrong credentials, non-JSON).
    """
    return await request_json(host, uri, user, password, timeout_s, port=port)


async def post_json(
    host: str,
    uri: str,
    payload: dict[str, Any],
    user: str,
    password: str,
    timeout_s: float,
    port: int = 80,
) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``uri`` with digest auth; the reply's JSON object."""
    body = json.dumps(payload).encode()
    return await request_json(host, uri, user, password, timeout_s, "POST", body, port)


async def request_json(
    host: str,
    uri: str,
    user: str,
    password: str,
    timeout_s: float,
    method: str = "GET",
    body: bytes | None = None,
    port: int = 80,
) -> dict[str, Any]:
    """One digest-authenticated request on one connection (two if the nonce is new);
    errors as :func:`get_json`."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            challenge = _NONCES.get(host)
            auth = _authorization(challenge, user, password, uri, method) if challenge else None
            status, headers, reply = await _exchange(reader, writer, host, uri, auth, method, body)
            if status == 401:
                challenge = _parse_challenge(headers.get("www-authenticate", ""))
                _NONCES[host] = challenge
                auth = _authorization(challenge, user, password, uri, method)
                status, headers, reply = await _exchange(
                    reader, writer, host, uri, auth, method, body
                )
                if status == 401:
                    _NONCES.pop(host, None)
                    raise DriverError(
                        FailureKind.BAD_REPLY, f"web UI refused the credentials for user {user!r}"
                    )
    except TimeoutError:
        raise DriverError(
            FailureKind.TIMEOUT, f"web UI: no answer within {timeout_s:.1f} s"
        ) from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise DriverError(FailureKind.UNREACHABLE, f"web UI: {exc}") from None
    finally:
        if writer is not None:
            writer.transport.abort()
    if status != 200:
        raise DriverError(FailureKind.BAD_REPLY, f"web UI {uri}: HTTP {status}")
    try:
        value = json.loads(reply)
    except (ValueError, UnicodeDecodeError):
        raise DriverError(FailureKind.BAD_REPLY, f"web UI {uri}: not JSON") from None
    if not isinstance(value, dict):
        raise DriverError(FailureKind.BAD_REPLY, f"web UI {uri}: not a JSON object")
    return value
