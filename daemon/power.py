"""The site's power switches in the daemon: reading every outlet once per tick, and the one
rule by which a metered outlet's power becomes its rig's power.

:class:`PowerSwitches` is shell (sockets, deadlines, logging); :func:`with_meters` is the pure
rule: a rig whose every outlet is metered and was read this tick has, as its power, the sum of
what those outlets draw, with ``power_source = meter``. A wall meter is preferred over the
catalogue's estimate and over the rig's own PSU figure (which leaves out the PSU's losses); a rig
with an outlet unread or unmetered keeps what its driver reported. See docs/power-switches.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from daemon.config import Settings
from daemon.switch_config import SwitchConfig, parse_outlet
from drivers.switches.base import OutletReading, PowerSwitch
from drivers.switches.plugs import ShellyGen2, Tasmota
from drivers.switches.snmp import ApcPdu, ApcPduUnmetered, RaritanPdu, SnmpPdu
from drivers.transport import DriverError
from policies.values import Observation, PowerSource, Reading, RigId

log = structlog.get_logger("power")

OutletId = tuple[str, int]
"""(switch name, outlet number as the device numbers it)."""


@dataclass(frozen=True, slots=True)
class OutletSweep:
    """Every configured outlet as read in one tick: a reading, or why there is none."""

    readings: Mapping[OutletId, OutletReading]
    failures: Mapping[str, DriverError]  # by switch name
    at: float


def with_meters(
    readings: Mapping[RigId, Reading],
    outlets: Mapping[OutletId, OutletReading],
    wiring: Mapping[RigId, Sequence[OutletId]],
) -> dict[RigId, Reading]:
    """``readings`` with each fully metered rig's power replaced by its outlets' sum."""
    out = dict(readings)
    for rig_id, feeds in wiring.items():
        obs = out.get(rig_id)
        if not isinstance(obs, Observation) or not feeds:
            continue
        metered = [outlets.get(o) for o in feeds]
        watts = [m.power_w for m in metered if m is not None and m.power_w is not None]
        if len(watts) != len(feeds):
            continue
        out[rig_id] = replace(obs, power_w=sum(watts), power_source=PowerSource.METER)
    return out


def build_switch(cfg: SwitchConfig, outlets: tuple[int, ...]) -> PowerSwitch:
    """The driver for one ``[[switches]]`` entry, for the outlets rigs are wired to."""
    if cfg.kind in ("apc", "apc-switched", "raritan"):
        pdus: dict[str, type[SnmpPdu]] = {
            "apc": ApcPdu,
            "apc-switched": ApcPduUnmetered,
            "raritan": RaritanPdu,
        }
        return pdus[cfg.kind](
            cfg.name,
            cfg.address,
            outlets,
            read_community=cfg.read_community.get_secret_value(),
            write_community=cfg.write_community.get_secret_value(),
            port=cfg.default_port,
        )
    plug = ShellyGen2 if cfg.kind == "shelly" else Tasmota
    password = cfg.password.get_secret_value() if cfg.password else None
    return plug(cfg.name, cfg.address, outlets, password=password, port=cfg.default_port)


class PowerSwitches:
    """The switches rigs are wired to, read together once per tick."""

    def __init__(
        self,
        switches: Mapping[str, PowerSwitch],
        wiring: Mapping[RigId, Sequence[OutletId]],
        timeouts: Mapping[str, float],
        concurrency: int = 64,
    ) -> None:
        self.switches = dict(switches)
        self.wiring = {rig: tuple(feeds) for rig, feeds in wiring.items() if feeds}
        self.timeouts = dict(timeouts)
        self.concurrency = concurrency
        self.last: OutletSweep | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PowerSwitches | None:
        """None when no rig is wired to a switch."""
        wiring = {r.address: tuple(parse_outlet(o) for o in r.outlets) for r in settings.rigs}
        used: dict[str, set[int]] = {}
        for feeds in wiring.values():
            for name, number in feeds:
                used.setdefault(name, set()).add(number)
        if not used:
            return None
        configs = {sw.name: sw for sw in settings.switches}
        switches = {n: build_switch(configs[n], tuple(sorted(o))) for n, o in used.items()}
        timeouts = {n: configs[n].timeout_s for n in used}
        return cls(switches, wiring, timeouts)

    async def read(self, now: float) -> OutletSweep:
        """Read every switch (bounded concurrency, each within its own deadline); a switch
        that fails is logged and its outlets are left out of this sweep."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(name: str, sw: PowerSwitch) -> Mapping[int, OutletReading] | DriverError:
            async with gate:
                try:
                    return await sw.read_outlets(timeout_s=self.timeouts[name])
                except DriverError as exc:
                    return exc

        names = list(self.switches)
        results = await asyncio.gather(*(one(n, self.switches[n]) for n in names))
        readings: dict[OutletId, OutletReading] = {}
        failures: dict[str, DriverError] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, DriverError):
                failures[name] = result
                log.warning(
                    "switch.read_failed", switch=name, kind=result.kind.value, detail=result.detail
                )
                continue
            for number, reading in result.items():
                readings[(name, number)] = reading
        self.last = OutletSweep(readings, failures, now)
        return self.last

    async def aclose(self) -> None:
        for sw in self.switches.values():
            await sw.aclose()
