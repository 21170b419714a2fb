"""The contract between the socket server and the per-make protocol handlers.

A handler is a plain synchronous function from (rig, parsed request) to reply bytes. The server
(``server.py``) owns sockets, framing, faults that act on the connection (offline, hang, slow,
malformed, reset, refuse) and connection counters; handlers own command semantics, auth, and
the rig's read/write counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.rig import SimRig, Snapshot


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    version: str = "HTTP/1.1"  # the request line's


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    dynamic: bool = False
    """A CGI's output, which carries no length of its own: the server frames it (lighttpd:
    chunked on HTTP/1.1, close-delimited on HTTP/1.0). Static pages and the server's own
    errors and challenges go out with Content-Length."""


RpcHandler = Callable[[SimRig, Any], bytes]
"""Port 4028: the request is the decoded JSON value (normally a dict); the reply is sent and
the connection closed, as cgminer and btminer do."""

HttpHandler = Callable[[SimRig, HttpRequest], HttpResponse]
"""Port 80."""

FramedHandler = Callable[[SimRig, Any], bytes]
"""Port 4433 (Whatsminer API v3): the request is the decoded JSON of one length-prefixed frame;
the reply is the JSON payload (the server adds the 4-byte little-endian length prefix)."""


def _always(rig: SimRig) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class MakeHandlers:
    """What one make answers on each port; None = nothing listens there for this make."""

    rpc: RpcHandler | None
    """None when port 4028 speaks HTTP instead (``api_http``)."""
    http: HttpHandler | None
    framed: FramedHandler | None
    framed_for: Callable[[SimRig], bool] = _always
    """Which rigs of the make run the framed API (Whatsminer: firmware after 2024-11 only)."""
    api_http: HttpHandler | None = None
    """Port 4028 as an HTTP server (ePIC's API), with the framing and keep-alive of port 80."""


SectionBuilder = Callable[[SimRig, "Snapshot | None", int], dict[str, Any]]
"""One cgminer-style read (``summary``, ``stats``...): (rig, snapshot if it needs one, when)."""


def read_sections(
    rig: SimRig,
    names: list[str],
    reads: dict[str, tuple[SectionBuilder, bool]],
    invalid: Callable[[], dict[str, Any]],
    when: int,
) -> dict[str, dict[str, Any]]:
    """Each of ``names`` (a ``+``-joined read split up) answered from ``reads`` (builder, needs
    a snapshot), one snapshot for all of them; an unknown name answers ``invalid()``. Counts
    one read (if any name was known) and one rejection (if any was not), as cgminer-style
    firmware answers a joined command in one go."""
    counters = rig.counters
    snap: Snapshot | None = None
    sections: dict[str, dict[str, Any]] = {}
    known = unknown = 0
    for name in names:
        entry = reads.get(name)
        if entry is None:
            unknown += 1
            sections[name] = invalid()
            continue
        builder, needs_snap = entry
        if needs_snap and snap is None:
            snap = rig.snapshot()
        sections[name] = builder(rig, snap, when)
        counters.by_command[name] += 1
        known += 1
    if known:
        counters.reads += 1
    if unknown:
        counters.rejected += 1
    return sections


def joined(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reply to a joined command: each section in a one-element list, and ``id``."""
    reply: dict[str, Any] = {name: [body] for name, body in sections.items()}
    reply["id"] = 1
    return reply
