"""A fleet of simulated rigs: building it from specs or a TOML file, and finding rigs by address."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.models import Make, ModelSpec, lookup, on_braiins, on_epic, on_luxos, on_vnish
from simulator.rig import Fault, SimClock, SimRig
from simulator.switches import SwitchBank

DEFAULT_BASE = "127.1.0.1"
OSES = ("stock", "luxos", "braiins", "epic", "vnish")
_ON_OS: dict[str, Callable[[ModelSpec], ModelSpec]] = {
    "luxos": on_luxos,
    "braiins": on_braiins,
    "epic": on_epic,
    "vnish": on_vnish,
}
"""The custom firmwares: each one's spec for an Antminer running it."""


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """``count`` rigs of one model, optionally with a firmware, ambient and faults."""

    model: str
    count: int
    firmware: str | None = None
    ambient_c: float = 25.0
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    os: str = "stock"
    """The firmware family: ``stock``, or ``luxos`` / ``braiins`` / ``epic`` / ``vnish``
    (Antminers only)."""


def parse_group(text: str, make: Make | None = None) -> GroupSpec:
    """Parse ``MODEL[@FIRMWARE]:COUNT`` (e.g. ``s19jpro:100``, ``m60s@20251209.16.Rel2:5``)."""
    name, sep, count_text = text.rpartition(":")
    if not sep:
        name, count_text = text, "1"
    model, _, firmware = name.partition("@")
    if not count_text.isdigit() or int(count_text) < 1:
        raise ValueError(f"{text!r}: count must be a positive whole number (MODEL:COUNT)")
    spec = lookup(model)
    if make is not None and spec.make != make:
        raise ValueError(f"{text!r}: {spec.key} is a {spec.make}, not a {make}")
    return GroupSpec(model=spec.key, count=int(count_text), firmware=firmware or None)


def load_fleet_file(path: Path) -> tuple[list[GroupSpec], dict[str, Any]]:
    """Read a fleet TOML file: top-level options plus ``[[rigs]]`` groups.

    Raises ValueError naming the file and the offending group or key.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    known_top = {"rigs", "time_scale", "base_address"}
    unknown = set(data) - known_top
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(known_top)}")
    groups: list[GroupSpec] = []
    for i, raw in enumerate(data.get("rigs", [])):
        where = f"{path}: rigs[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a table")
        extra = set(raw) - {"model", "count", "firmware", "ambient_c", "faults", "os"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
        try:
            spec = lookup(str(raw["model"]))
            count = int(raw.get("count", 1))
            faults = {str(k): dict(v) for k, v in dict(raw.get("faults", {})).items()}
            for name in faults:
                Fault(name)
            os_name = str(raw.get("os", "stock"))
            if os_name not in OSES:
                raise ValueError(f"os must be one of {', '.join(OSES)}, got {os_name!r}")
            if os_name in _ON_OS:
                _ON_OS[os_name](spec)
        except KeyError:
            raise ValueError(f"{where}: 'model' is required") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if count < 1:
            raise ValueError(f"{where}: count must be >= 1")
        groups.append(
            GroupSpec(
                spec.key,
                count,
                raw.get("firmware"),
                float(raw.get("ambient_c", 25.0)),
                faults,
                os_name,
            )
        )
    options = {k: v for k, v in data.items() if k != "rigs"}
    return groups, options


def addresses(base: str, count: int) -> Iterator[str]:
    """``count`` loopback addresses from ``base`` on, skipping .0 and .255 host bytes."""
    addr = ipaddress.IPv4Address(base)
    net = ipaddress.IPv4Network("127.0.0.0/8")
    produced = 0
    while produced < count:
        if addr not in net or addr == ipaddress.IPv4Address("127.255.255.255"):
            raise ValueError(f"not enough loopback addresses from {base} for {count} rigs")
        if addr.packed[3] not in (0, 255):
            yield str(addr)
            produced += 1
        addr += 1


class Fleet:
    """The rigs of one simulator process, indexed by address."""

    def __init__(
        self, groups: Iterable[GroupSpec], clock: SimClock, base_address: str = DEFAULT_BASE
    ) -> None:
        self.clock = clock
        self.rigs: list[SimRig] = []
        groups = list(groups)
        total = sum(g.count for g in groups)
        addr_iter = addresses(base_address, total)
        for group in groups:
            spec = lookup(group.model)
            if group.os in _ON_OS:
                spec = _ON_OS[group.os](spec)
            for _ in range(group.count):
                rig = SimRig(
                    next(addr_iter),
                    spec,
                    clock,
                    index=len(self.rigs),
                    firmware=group.firmware,
                    ambient_c=group.ambient_c,
                )
                for name, params in group.faults.items():
                    rig.set_fault(Fault(name), params)
                self.rigs.append(rig)
        self.by_address: dict[str, SimRig] = {r.address: r for r in self.rigs}
        self.switches = SwitchBank([])
        """The PDUs and plugs feeding these rigs (simulator/switches.py), none by default."""

    def __len__(self) -> int:
        return len(self.rigs)

    def get(self, address: str) -> SimRig:
        """The rig at ``address``; KeyError naming the address if there is none."""
        rig = self.by_address.get(address)
        if rig is None:
            raise KeyError(f"no simulated rig at {address}")
        return rig
