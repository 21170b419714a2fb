"""Just enough HTTP/1.1 for the rigs' web UIs and the control API: parse requests, format replies.

Strict where real servers are strict (request line, header syntax, Content-Length), with keep-alive
so one httpx client can do its 401 challenge and the authenticated request on one connection.
Replies are framed as the firmware's server frames them: a CGI's output (``dynamic``) goes out
chunked on HTTP/1.1 and close-delimited on HTTP/1.0, as lighttpd sends it, unless the rig is
given another framing (``simulator.rig.HTTP_FRAMINGS``); everything else with Content-Length.
The status line answers in the request's HTTP version, as lighttpd does.
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

from simulator.protocol import HttpRequest, HttpResponse

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


class HttpError(Exception):
    """A request that cannot be parsed; ``status`` is what to answer before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(buf: bytearray) -> tuple[HttpRequest, bool] | None:
    """Take one complete request off the front of ``buf``.

    Returns (request, keep_alive), or None when more bytes are needed. Raises HttpError for a
    malformed request.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HttpError(431, "request header too large")
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line!r}")
        headers[name.lower()] = value.strip()
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, f"bad Content-Length {length_text!r}")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, "body too large")
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    path, _, query = target.partition("?")
    conn = headers.get("connection", "").lower()
    keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    return HttpRequest(
        method=method, path=path, query=query, headers=headers, body=body, version=version
    ), keep_alive


def format_response(
    resp: HttpResponse, keep_alive: bool, version: str = "HTTP/1.1", framing: str = "length"
) -> tuple[bytes, bool]:
    """Serialise ``resp`` for a request of HTTP ``version``; returns (bytes, keep_alive after).

    ``framing`` applies to ``dynamic`` replies only (see ``simulator.rig.HTTP_FRAMINGS``).
    """
    reason = resp.reason or _reason(resp.status)
    status_version = "HTTP/1.0" if version == "HTTP/1.0" or framing == "http10" else "HTTP/1.1"
    if not resp.dynamic or framing == "length":
        how = "length"
    elif framing == "chunked" and version == "HTTP/1.1":
        how = "chunked"
    else:  # lighttpd cannot chunk for HTTP/1.0; "close" and "http10" never can
        how, keep_alive = "close", False
    headers = {**resp.headers}
    headers.setdefault("Content-Type", "text/html")
    if how == "length":
        headers["Content-Length"] = str(len(resp.body))
        body = resp.body
    elif how == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body = _chunked(resp.body)
    else:
        body = resp.body
    headers["Date"] = formatdate(usegmt=True)
    if status_version == "HTTP/1.0":
        if keep_alive:
            headers["Connection"] = "keep-alive"
    else:
        headers["Connection"] = "keep-alive" if keep_alive else "close"
    lines = [f"{status_version} {resp.status} {reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, keep_alive


def _chunked(body: bytes, size: int = 4096) -> bytes:
    """``body`` as chunks of at most ``size`` bytes (a CGI's writes reach lighttpd so)."""
    out = bytearray()
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
