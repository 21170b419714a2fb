"""A real local HTTP server for feed tests: routes of recorded replies, fault modes, a log."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Reply:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FeedServer:
    """Serves ``routes`` (path -> Reply, or a list of Replies served in turn, the last one
    repeated) on 127.0.0.1 and records each request."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | list[Reply]] = {}
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def requests_to(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def _reply(self, path: str) -> Reply:
        route = self.routes.get(path)
        if route is None:
            return Reply(b"<html><body>404 Not Found</body></html>", 404, "text/html")
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                server.seen.append(
                    Seen(parts.path, dict(parse_qsl(parts.query)), dict(self.headers.items()))
                )
                reply = server._reply(parts.path)
                if reply.delay_s and server.stop.wait(reply.delay_s):
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
