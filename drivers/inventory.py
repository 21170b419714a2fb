"""Which rigs exist: configured addresses and CIDR scans, with identities cached on disk.

The cache is a JSON file written atomically (temporary file, fsync, rename), so a restart does
not re-identify the fleet and a crash mid-write leaves the previous cache intact. A rig is
re-identified when its replies say it changed (``RigChanged``) or when it is not in the cache.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from drivers.identify import identify, probe
from drivers.pool import bounded_map
from drivers.stock import RPC_PORT
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, rig_text

log = structlog.get_logger("inventory")

CACHE_VERSION = 1
_CRASHED: set[str] = set()  # addresses whose last identification crashed (traceback logged)
MAX_SCAN_ADDRESSES = 1 << 18  # a /14; a larger range is almost certainly a typo


@dataclass(frozen=True, slots=True)
class IdentifyFailure:
    address: str
    kind: FailureKind
    detail: str


@dataclass(frozen=True, slots=True)
class Unidentified:
    """A configured rig that has never been identified: no driver, so never commanded, but
    still one of the fleet (observed as failing, counted, shown and alerted on)."""

    failure: IdentifyFailure  # the last attempt's
    since: float  # the first failed attempt (clock time)
    attempts: int


class InventoryError(ValueError):
    """A scan range or cache file that cannot be used; the message names it."""


def expand(ranges: Iterable[str]) -> list[str]:
    """Addresses in ``ranges`` (CIDR blocks or single addresses), in order, without duplicates.

    Network and broadcast addresses of blocks larger than /31 are left out. All the ranges
    together may hold at most MAX_SCAN_ADDRESSES addresses (a /14): more is refused before any
    address is listed, let alone probed, however the space is split.
    """
    nets = []
    for text in ranges:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise InventoryError(f"{text!r} is not an address or CIDR block: {exc}") from None
    total = sum(net.num_addresses for net in nets)
    if total > MAX_SCAN_ADDRESSES:
        what = f"{nets[0]}" if len(nets) == 1 else f"{len(nets)} ranges"
        raise InventoryError(
            f"{what}: {total} addresses is more than the {MAX_SCAN_ADDRESSES} one scan takes "
            "(all ranges together); scan a smaller space"
        )
    seen: dict[str, None] = {}
    for net in nets:
        hosts: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]
        hosts = net.hosts() if net.num_addresses > 2 else iter(net)
        for addr in hosts:
            seen.setdefault(str(addr), None)
    return list(seen)


class Inventory:
    """Known rigs by address, backed by an optional cache file."""

    def __init__(
        self, cache_path: Path | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.cache_path = cache_path
        self.clock = clock
        self.rigs: dict[str, Identity] = {}
        self.unidentified: dict[str, Unidentified] = {}
        """Addresses :meth:`ensure` was asked for and could not identify (yet)."""

    def load(self) -> int:
        """Read the cache; returns how many identities it held. A missing file is empty; a
        corrupt one is logged with its path and ignored (the rigs are re-identified)."""
        if self.cache_path is None or not self.cache_path.exists():
            return 0
        try:
            data = json.loads(self.cache_path.read_text())
            if data.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {data.get('version')!r}, expected {CACHE_VERSION}")
            rigs = {r["address"]: Identity.from_dict(r) for r in data["rigs"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("inventory.cache_unusable", path=str(self.cache_path), error=str(exc))
            return 0
        self.rigs.update(rigs)
        return len(rigs)

    def save(self) -> None:
        """Write the cache atomically; no-op without a cache path."""
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {"version": CACHE_VERSION, "rigs": [r.as_dict() for r in self.rigs.values()]}
        )
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cache_path)

    def put(self, identity: Identity) -> None:
        self.rigs[identity.address] = identity
        self.unidentified.pop(identity.address, None)

    def forget(self, address: str) -> None:
        self.rigs.pop(address, None)
        self.unidentified.pop(address, None)

    def addresses(self) -> list[str]:
        """Every address this inventory holds: identified rigs, then unidentified ones."""
        return [*self.rigs, *(a for a in self.unidentified if a not in self.rigs)]

    async def ensure(
        self, addresses: Iterable[str], concurrency: int = 64, timeout_s: float = 10.0
    ) -> list[IdentifyFailure]:
        """Identify every address not yet known; returns the ones that could not be."""
        missing = [a for a in addresses if a not in self.rigs]
        results = await identify_many(missing, concurrency, timeout_s)
        failures = []
        now = self.clock()
        for result in results:
            if isinstance(result, Identity):
                self.put(result)
            else:
                failures.append(result)
                prior = self.unidentified.get(result.address)
                self.unidentified[result.address] = Unidentified(
                    result,
                    prior.since if prior is not None else now,
                    (prior.attempts if prior is not None else 0) + 1,
                )
        if missing:
            self.save()
        return failures


async def identify_many(
    addresses: list[str],
    concurrency: int,
    timeout_s: float,
) -> list[Identity | IdentifyFailure]:
    """Identify ``addresses`` with at most ``concurrency`` in flight, each within ``timeout_s``.

    A bounded worker pool, not a task per address: pyasic's own helpers create every task up
    front, and given 1,000 addresses at once all of them time out.
    """

    async def one(address: str) -> Identity | IdentifyFailure:
        try:
            identity = await identify(address, timeout_s)
        except DriverError as exc:
            _CRASHED.discard(address)
            return IdentifyFailure(address, exc.kind, exc.detail)
        except Exception as exc:  # whatever a rig answers must not end the scan
            if address not in _CRASHED:  # the traceback once per transition, not every retry
                log.exception("rig.identify_crashed", address=address)
            _CRASHED.add(address)
            detail = rig_text(f"{type(exc).__name__}: {exc}")
            return IdentifyFailure(address, FailureKind.BAD_REPLY, detail)
        _CRASHED.discard(address)
        return identity

    return await bounded_map(addresses, one, concurrency)


async def scan(
    ranges: Iterable[str],
    concurrency: int = 256,
    probe_timeout_s: float = 1.0,
    identify_timeout_s: float = 10.0,
) -> list[Identity | IdentifyFailure]:
    """Find rigs in ``ranges``: a TCP probe of port 4028 on every address (cheap, bounded),
    then pyasic identification of the addresses that answered."""
    addresses = expand(ranges)

    async def alive(address: str) -> bool:
        return await probe(address, RPC_PORT, probe_timeout_s)

    up = await bounded_map(addresses, alive, concurrency)
    responders = [a for a, ok in zip(addresses, up, strict=True) if ok]
    return await identify_many(responders, min(concurrency, 64), identify_timeout_s)
