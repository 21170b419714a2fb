"""pyasic's detection, with every byte it reads going through rigpilot's bounded transports.

pyasic's ``MinerFactory`` knows which firmware answers what, and how its model names map to its
classes; it stays the source of both. Its transports do not bound anything: its RPC reader has
no size cap and copies its buffer on every read, its web pings read whole bodies (and redirect
bodies), and its API reader swallows cancellation, so one rig streaming endlessly on 4028 could
keep a scan busy for minutes and outlive every deadline. :class:`BoundedFactory` is the
factory with only those transports replaced:

- RPC (4028) and API v3 (4433): :func:`drivers.transport.request`, at most ``MAX_REPLY`` bytes
  and ``factory_get_timeout`` seconds per exchange;
- HTTP: httpx through :class:`CappedTransport`, at most ``MAX_WEB_BODY`` bytes per body
  (redirect and 401 bodies included), no compression (so no inflation bomb), httpx's own
  per-operation timeout;
- the two model probes that open their own HTTP clients (Innosilicon, IceRiver) are not run:
  those rigs are identified as their make's generic pyasic class.

:func:`detect` runs the factory's ``get_miner`` as a task it can always stop: past the deadline
the task is cancelled, and cancelled again for as long as it keeps running (pyasic's helper
``concurrent_get_first_result`` can swallow one cancellation), so no detection task outlives
its deadline by more than one exchange's cleanup.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import httpx
from pyasic import settings
from pyasic.miners.factory import MinerFactory

from drivers.transport import BTMINER_STOPPED, DriverError, request

MAX_WEB_BODY = 1024 * 1024  # an identification page or JSON larger than this is not a miner's
STOP_GRACE_S = 1.0  # how long a stopped detection task may take to unwind

T = TypeVar("T")


class BodyTooLarge(httpx.ReadError):
    """A web reply exceeded MAX_WEB_BODY; httpx treats it as a failed read."""


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.inner:
            size += len(chunk)
            if size > self.limit:
                raise BodyTooLarge(f"web reply larger than {self.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose response bodies stop at ``limit`` bytes (then BodyTooLarge)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int = MAX_WEB_BODY) -> None:
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self.inner.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _client(verify: bool = True) -> httpx.AsyncClient:
    # pyasic's default transport shares one SSL context; ``verify=True`` would load the CA
    # bundle again for every client (about 70 ms of CPU, blocking the event loop).
    inner = settings.transport() if verify else settings.transport(verify=False)
    return httpx.AsyncClient(transport=CappedTransport(inner))


def _exchange_timeout() -> float:
    return float(settings.get("factory_get_timeout", 3))


async def _rpc(ip: str, port: int, payload: dict[str, str], framed: bool) -> bytes | None:
    try:
        return await request(
            ip, port, json.dumps(payload).encode(), _exchange_timeout(), framed=framed
        )
    except DriverError:
        return None


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}  # pyasic's factory answers {} for "something, but not JSON"
    return value if isinstance(value, dict) else {}


class BoundedFactory(MinerFactory):  # type: ignore[misc]  # pyasic is untyped here
    """pyasic's MinerFactory with bounded transports (see the module docstring)."""

    @staticmethod
    async def _socket_ping(ip: str, cmd: str) -> str | None:
        data = await _rpc(ip, 4028, {"command": cmd}, framed=False)
        return data.decode("utf-8", errors="replace") if data else None

    @staticmethod
    async def _socket_ping_btminer_v3(ip: str, cmd: str) -> str | None:
        data = await _rpc(ip, 4433, {"cmd": cmd}, framed=True)
        return data.decode("utf-8", errors="replace") if data else None

    async def send_api_command(self, ip: str, command: str) -> dict[str, Any] | None:
        data = await _rpc(ip, 4028, {"command": command}, framed=False)
        if data is None or data == BTMINER_STOPPED:
            return None
        try:
            text = await self._fix_api_data(data)
        except (UnicodeDecodeError, ValueError):
            return {}
        return _json(text)

    async def send_btminer_v3_api_command(self, ip: str, command: str) -> dict[str, Any] | None:
        data = await _rpc(ip, 4433, {"cmd": command}, framed=True)
        if data is None or data == BTMINER_STOPPED:
            return None
        return _json(data.decode("utf-8", errors="replace"))

    @staticmethod
    async def _web_ping(
        session: httpx.AsyncClient, url: str
    ) -> tuple[str | None, httpx.Response | None]:
        # The factory's own session reads uncapped bodies; ours does not.
        try:
            async with _client(verify=False) as capped:
                resp = await capped.get(url, follow_redirects=True)
                return resp.text, resp
        except (httpx.HTTPError, httpx.InvalidURL, OSError):  # InvalidURL: pyasic writes no [::1]
            return None, None

    async def send_web_command(
        self, ip: str, location: str, auth: httpx.DigestAuth | None = None
    ) -> dict[str, Any] | None:
        try:
            async with _client() as session:
                resp = await session.get(
                    f"http://{ip}{location}", auth=auth, timeout=_exchange_timeout()
                )
                text = resp.text
        except (httpx.HTTPError, httpx.InvalidURL, OSError):  # InvalidURL: pyasic writes no [::1]
            return None
        return _json(text)

    async def get_miner_model_innosilicon(self, ip: str) -> str | None:
        return None  # pyasic's probe opens its own uncapped HTTP client

    async def get_miner_model_iceriver(self, ip: str) -> str | None:
        return None  # likewise


_FACTORY = BoundedFactory()


async def within(coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """Run ``coro`` as a task and return its result within ``timeout_s``; past it, stop the
    task (cancelling it for as long as it keeps running) and raise TimeoutError."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait({task}, timeout=timeout_s)
    finally:
        if not task.done():
            await stop(task)
    if task.cancelled():
        raise TimeoutError
    return task.result()


async def stop(task: asyncio.Future[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Cancel ``task`` until it ends (at most ``grace_s``): a task that swallows one
    cancellation meets the next at its next await."""
    loop = asyncio.get_running_loop()
    end = loop.time() + grace_s
    while not task.done() and loop.time() < end:
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a late failure is not "never retrieved"


async def detect(address: str, timeout_s: float) -> Any:
    """pyasic's miner object for ``address`` (None when pyasic recognises nothing), found by
    pyasic's factory over bounded transports; TimeoutError past ``timeout_s``."""
    return await within(_FACTORY.get_miner(address), timeout_s)
