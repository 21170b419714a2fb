"""HTTP for market feeds: timeouts, backoff with jitter, Retry-After, and errors that name the
problem (an HTML error page, a 429, a timeout) without ever returning a half-read value."""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

MAX_BODY = 8 * 1024 * 1024


class FeedError(Exception):
    """A feed could not give a usable value; the message names the source and the problem."""

    def __init__(
        self, source: str, problem: str, retry_after_s: float | None = None, transient: bool = True
    ) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
        self.retry_after_s = retry_after_s
        self.transient = transient


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass
class Fetcher:
    """Fetches one source's URLs, honouring its rate limit and the server's Retry-After."""

    source: str
    client: httpx.AsyncClient
    timeout_s: float = 10.0
    attempts: int = 3
    min_interval_s: float = 0.0
    clock: Callable[[], float] = time.time
    not_before: float = 0.0
    _last: float = field(default=float("-inf"), repr=False)

    def _check(self, resp: httpx.Response) -> None:
        ctype = resp.headers.get("content-type", "")
        if resp.status_code == 429:
            wait = _retry_after(resp.headers.get("retry-after"), self.clock())
            raise FeedError(
                self.source,
                "rate limited (HTTP 429)"
                + (f", retry after {wait:.0f} s" if wait is not None else ""),
                retry_after_s=wait,
            )
        if resp.status_code in (401, 403):
            raise FeedError(
                self.source,
                f"HTTP {resp.status_code}: credentials refused (check the API key or token)",
                transient=False,
            )
        if resp.status_code >= 400:
            wait = _retry_after(resp.headers.get("retry-after"), self.clock())
            kind = "an HTML error page" if "html" in ctype else f"{ctype or 'no content type'}"
            raise FeedError(self.source, f"HTTP {resp.status_code} with {kind}", retry_after_s=wait)
        if len(resp.content) > MAX_BODY:
            raise FeedError(self.source, "reply larger than 8 MiB")

    async def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """GET ``url``; retries transient failures with exponential backoff and jitter.

        Refuses to call before a Retry-After the server asked for, or faster than the
        source's minimum interval (raises FeedError instead of hammering it).
        """
        now = self.clock()
        if now < self.not_before:
            raise FeedError(
                self.source,
                f"holding off for {self.not_before - now:.0f} s as the server asked (Retry-After)",
            )
        if now - self._last < self.min_interval_s:
            raise FeedError(
                self.source, f"rate limit: at most one call per {self.min_interval_s:.0f} s"
            )
        self._last = now

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, FeedError) and exc.transient and exc.retry_after_s is None

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_random_exponential(multiplier=0.5, max=10),
                retry=retry_if_exception(transient),
                reraise=True,
            ):
                with attempt:
                    try:
                        resp = await self.client.get(
                            url, params=params, headers=headers, timeout=self.timeout_s
                        )
                    except httpx.TimeoutException:
                        raise FeedError(
                            self.source, f"no answer within {self.timeout_s:g} s"
                        ) from None
                    except httpx.HTTPError as exc:
                        raise FeedError(self.source, f"{type(exc).__name__}: {exc}") from None
                    self._check(resp)
                    return resp
        except FeedError as exc:
            if exc.retry_after_s is not None:
                self.not_before = self.clock() + exc.retry_after_s
            raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def get_json(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        resp = await self.get(url, params, headers)
        try:
            return resp.json()
        except (ValueError, UnicodeDecodeError):
            excerpt = resp.text[:60].replace("\n", " ")
            raise FeedError(self.source, f"not JSON: {excerpt!r}") from None


def need(obj: Any, *path: str | int, source: str) -> Any:
    """``obj[path...]``, or FeedError naming the missing field (e.g. ``data.hash_price``)."""
    cur = obj
    walked: list[str] = []
    for key in path:
        walked.append(str(key))
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            raise FeedError(source, f"field {'.'.join(walked)} missing", transient=False) from None
    return cur


def finite(value: Any, field_name: str, source: str) -> float:
    """``value`` as a finite float, or FeedError naming the field (NaN, inf, strings...)."""
    if isinstance(value, bool):
        raise FeedError(source, f"{field_name} is a boolean, not a number", transient=False)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeedError(
            source, f"{field_name} is not a number: {value!r}", transient=False
        ) from None
    if not math.isfinite(number):
        raise FeedError(source, f"{field_name} is not finite: {value!r}", transient=False)
    return number


def loads(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise FeedError(source, f"not JSON: {text[:60]!r}", transient=False) from None
