"""An observer worker that answers every cycle with a readings buffer that breaks the layout
(tests/test_workers.py: the controller must replace it and report its rigs unread). Started by
the pool as ``python -m broken_worker --fd N ...``, with tests/ on PYTHONPATH."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from daemon.observe_worker import CYCLE, READINGS, READINGS_HEAD, frame, read_frame


async def serve(fd: int) -> None:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    while True:
        try:
            kind, payload = await read_frame(reader)
        except asyncio.IncompleteReadError:
            return
        if kind == CYCLE:
            request_id = int(json.loads(payload)["id"])
            meta = b'{"identities": []}'
            garbage = bytes([9, 7]) + b"127.1.0.1"  # record tag 7: no such tag
            writer.write(
                frame(READINGS, READINGS_HEAD.pack(request_id, len(meta)) + meta + garbage)
            )
            await writer.drain()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[sys.argv.index("--fd") + 1])))
