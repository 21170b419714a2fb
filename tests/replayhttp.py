"""A small HTTP/1.1 server for the tests: fixed replies (captures served verbatim, or garbage)
per method and path, the requests it was sent recorded."""

from __future__ import annotations

import asyncio

Route = tuple[int, bytes]
"""A reply: HTTP status and body bytes (sent with Content-Length)."""


class ReplayServer:
    """An HTTP/1.1 server that answers each (method, path) with fixed bytes, and records the
    requests (method, path, body) it was sent."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, bytes]] = []
        self.server: asyncio.Server | None = None
        self.connections = 0
        self.drop = False
        """Close each connection after one reply without saying so (an idle timeout)."""

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, body))
                status, payload = self.routes.get((method, path), (404, b'{"result":false}'))
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if self.drop:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
