"""Just enough HTTP/1.1 for the rigs' web UIs and the control API: parse requests, format replies.

Strict where real servers are strict (request line, header syntax, Content-Length), with keep-alive
so one httpx client can do its 401 challenge and the authenticated request on one connection.
"""

from __future__ import annotations

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
        method=method, path=path, query=query, headers=headers, body=body
    ), keep_alive


def format_response(resp: HttpResponse, keep_alive: bool) -> bytes:
    """Serialise ``resp`` with Content-Length and a Connection header."""
    reason = resp.reason or _reason(resp.status)
    lines = [f"HTTP/1.1 {resp.status} {reason}"]
    headers = {"Content-Length": str(len(resp.body)), **resp.headers}
    headers.setdefault("Content-Type", "text/html")
    headers["Connection"] = "keep-alive" if keep_alive else "close"
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
