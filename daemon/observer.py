"""The fleet observer: one complete, bounded reading of every rig per cycle.

- Bounded concurrency: a fixed pool of workers, never a task per rig.
- A deadline per rig per cycle: pyasic's 100 s socket timeout is never inherited; a slow or
  hung rig costs its own deadline and delays nobody else.
- Retries only where safe: a read whose connection was refused or reset is retried once with
  tenacity while its deadline allows (reads are idempotent); a timeout or a garbage reply is
  not retried within the cycle.
- A circuit breaker per rig: after ``open_after`` consecutive failures a rig is skipped, then
  tried again after a backoff that doubles up to ``max_backoff_s``, so dead rigs cost almost
  nothing per cycle.
- A rig whose replies say it changed (firmware update, another rig at its address) is
  re-identified and its new identity cached.
- Failures and recoveries are logged once per transition, not every cycle.
- A configured rig that was never identified (dead or hung since the start) is still read
  every cycle, as a failure (the identification's reason, and since when), so it is counted,
  shown, exported and alerted on like any unreadable rig. It has no driver, so it is never
  commanded; ``rigpilot run`` keeps trying to identify it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random,
)

from drivers.base import RigDriver
from drivers.identify import driver_for, identify
from drivers.inventory import Inventory
from drivers.pool import bounded_map
from drivers.transport import DriverError, RigChanged
from policies.values import FailureKind, Observation, ObservationFailure, Reading, rig_text

log = structlog.get_logger("observer")


@dataclass(slots=True)
class _Health:
    consecutive: int = 0
    retry_at: float = 0.0
    backoff_s: float = 0.0
    last_kind: FailureKind | None = None
    crashed: bool = False  # the last failure was a driver crash (its traceback already logged)


@dataclass(frozen=True, slots=True)
class Cycle:
    """One observation cycle's outcome."""

    readings: dict[str, Reading]
    started_at: float
    duration_s: float

    @property
    def ok(self) -> int:
        return sum(isinstance(r, Observation) for r in self.readings.values())

    @property
    def failed(self) -> int:
        return len(self.readings) - self.ok


@dataclass
class ObserverSettings:
    concurrency: int = 256
    timeout_s: float = 5.0
    open_after: int = 3
    base_backoff_s: float = 30.0
    max_backoff_s: float = 600.0
    reidentify_timeout_s: float = 10.0


class FleetObserver(Protocol):
    """What the control loop needs of an observer: :class:`Observer` in one process, or
    :class:`daemon.workers.ObserverPool` (``rigpilot run``) across worker processes."""

    inventory: Inventory
    settings: ObserverSettings

    @property
    def drivers(self) -> dict[str, RigDriver]: ...

    def sync_drivers(self) -> None: ...

    async def cycle(self, addresses: Iterable[str] | None = None) -> Cycle: ...

    async def close(self) -> None: ...


def unidentified_reading(inventory: Inventory, address: str, now: float) -> ObservationFailure:
    """The reading of a rig without a driver: why it could not be identified, since when."""
    unknown = inventory.unidentified.get(address)
    if unknown is None:
        return ObservationFailure(address, FailureKind.UNKNOWN_MINER, "not in the inventory", now)
    since = datetime.fromtimestamp(unknown.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ObservationFailure(
        address,
        unknown.failure.kind,
        f"never identified (since {since}, {unknown.attempts} tries): {unknown.failure.detail}",
        now,
        None,
        unknown.attempts,
    )


def _retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, DriverError)
        and exc.kind is FailureKind.UNREACHABLE
        and not isinstance(exc, RigChanged)
    )


@dataclass
class Observer:
    """Reads every rig of an inventory once per :meth:`cycle`."""

    inventory: Inventory
    settings: ObserverSettings = field(default_factory=ObserverSettings)
    clock: Callable[[], float] = time.time
    drivers: dict[str, RigDriver] = field(default_factory=dict)
    health: dict[str, _Health] = field(default_factory=dict)

    def sync_drivers(self) -> None:
        """Create drivers for new inventory entries and drop those no longer listed."""
        for address, identity in self.inventory.rigs.items():
            driver = self.drivers.get(address)
            if driver is None or driver.identity != identity:
                self.drivers[address] = driver_for(identity)
        for address in [a for a in self.drivers if a not in self.inventory.rigs]:
            del self.drivers[address]
            self.health.pop(address, None)

    async def cycle(self, addresses: Iterable[str] | None = None) -> Cycle:
        """Observe every rig (or ``addresses``), each within the per-rig deadline."""
        self.sync_drivers()
        if addresses is None:
            unknown = self.inventory.unidentified
            targets = [*self.drivers, *(a for a in unknown if a not in self.drivers)]
        else:
            targets = list(addresses)
        started = self.clock()
        t0 = time.monotonic()
        readings = await bounded_map(targets, self._observe_one, self.settings.concurrency)
        return Cycle(dict(zip(targets, readings, strict=True)), started, time.monotonic() - t0)

    async def close(self) -> None:
        """Nothing to stop: the in-process observer holds no process (see ObserverPool)."""

    async def _observe_one(self, address: str) -> Reading:
        now = self.clock()
        health = self.health.setdefault(address, _Health())
        driver = self.drivers.get(address)
        if driver is None:
            return self._unidentified(address, now)
        if health.consecutive >= self.settings.open_after and now < health.retry_at:
            return ObservationFailure(
                address,
                FailureKind.CIRCUIT_OPEN,
                f"{health.consecutive} failures in a row (last: {health.last_kind}); "
                f"next try in {health.retry_at - now:.0f} s",
                now,
                driver.identity,
                health.consecutive,
            )
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            try:
                reading = await driver.observe(self.settings.timeout_s, now)
            except DriverError as first:
                if not _retryable(first):
                    raise
                reading = await self._retry(driver, deadline, now)
        except RigChanged as exc:
            return await self._reidentify(address, exc, now)
        except DriverError as exc:
            health.crashed = False
            return self._failed(address, health, exc.kind, exc.detail, now, driver)
        except Exception as exc:  # a driver bug must not take the cycle down
            if not health.crashed:  # the traceback once per transition, not every cycle
                log.exception("rig.observe_crashed", address=address)
            health.crashed = True
            detail = rig_text(f"{type(exc).__name__}: {exc}")
            return self._failed(address, health, FailureKind.BAD_REPLY, detail, now, driver)
        if health.consecutive:
            log.info("rig.recovered", address=address, after_failures=health.consecutive)
        health.consecutive, health.backoff_s, health.last_kind = 0, 0.0, None
        health.crashed = False
        return reading

    @staticmethod
    async def _retry(driver: RigDriver, deadline: float, now: float) -> Observation:
        """Retry a read whose connection was refused or reset (reads are safe to repeat), at
        most twice, with jitter, inside what is left of the rig's deadline. Only entered after
        a failure: tenacity's machinery costs more than a whole successful read."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(2) | stop_after_delay(max(0.0, deadline - time.monotonic())),
            wait=wait_random(0.02, 0.1),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                await asyncio.sleep(0.02)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DriverError(FailureKind.TIMEOUT, "deadline spent on retries")
                return await driver.observe(left, now)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _unidentified(self, address: str, now: float) -> ObservationFailure:
        return unidentified_reading(self.inventory, address, now)

    def _failed(
        self,
        address: str,
        health: _Health,
        kind: FailureKind,
        detail: str,
        now: float,
        driver: RigDriver,
    ) -> ObservationFailure:
        health.consecutive += 1
        if health.consecutive == 1 or kind is not health.last_kind:
            log.warning("rig.unreadable", address=address, reason=kind.value, detail=detail)
        health.last_kind = kind
        if health.consecutive >= self.settings.open_after:
            health.backoff_s = min(
                self.settings.max_backoff_s, max(self.settings.base_backoff_s, health.backoff_s * 2)
            )
            health.retry_at = now + health.backoff_s
            if health.consecutive == self.settings.open_after:
                log.warning("rig.circuit_opened", address=address, backoff_s=health.backoff_s)
        return ObservationFailure(address, kind, detail, now, driver.identity, health.consecutive)

    async def _reidentify(self, address: str, exc: RigChanged, now: float) -> Reading:
        log.info("rig.changed", address=address, detail=exc.detail)
        try:
            identity = await identify(address, self.settings.reidentify_timeout_s)
        except DriverError as err:
            health = self.health.setdefault(address, _Health())
            return self._failed(
                address, health, err.kind, f"changed, and {err.detail}", now, self.drivers[address]
            )
        self.inventory.put(identity)
        self.inventory.save()
        self.drivers[address] = driver_for(identity)
        try:
            return await self.drivers[address].observe(self.settings.timeout_s, now)
        except DriverError as err:
            health = self.health.setdefault(address, _Health())
            return self._failed(address, health, err.kind, err.detail, now, self.drivers[address])
