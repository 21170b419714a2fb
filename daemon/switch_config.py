"""``[[switches]]``: the PDUs and smart plugs feeding the rigs, and how rigs name their outlets.

A rig lists the outlets that feed it as ``outlets = ["pdu-a1:7"]`` (two for a dual-PSU rig);
:func:`check_outlets` refuses an unknown switch name, an outlet number the switch kind cannot
have, and an outlet feeding two rigs unless the switch declares it in ``shared_outlets``. See
docs/power-switches.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from daemon.settings_base import Section

SwitchKind = Literal["apc", "apc-switched", "raritan", "shelly", "tasmota"]
FIRST_OUTLET: Mapping[str, int] = {
    "apc": 1,
    "apc-switched": 1,
    "raritan": 1,
    "shelly": 0,
    "tasmota": 1,
}
"""How each kind numbers its outlets (the drivers in drivers/switches/ number them so)."""
SNMP_KINDS = frozenset({"apc", "apc-switched", "raritan"})


class SwitchConfig(Section):
    """One ``[[switches]]`` entry: a PDU or plug rigpilot may read and switch."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: SwitchKind
    address: str = Field(min_length=1, description="IPv4 or IPv6 address of the switch")
    port: int | None = Field(default=None, ge=1, le=65535)
    """None: 161 for SNMP PDUs, 80 for plugs."""
    read_community: SecretStr = SecretStr("public")
    write_community: SecretStr = SecretStr("private")
    password: SecretStr | None = None
    """Plugs only: the Shelly (digest, user admin) or Tasmota web password."""
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    shared_outlets: tuple[int, ...] = ()
    """Outlets allowed to feed more than one rig (a power strip behind one outlet)."""

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address: give the switch's IPv4 or IPv6 address"
            ) from None

    @property
    def default_port(self) -> int:
        return self.port or (161 if self.kind in SNMP_KINDS else 80)


def parse_outlet(ref: str) -> tuple[str, int]:
    """``"pdu-a1:7"`` → ("pdu-a1", 7); ValueError saying what is wrong."""
    name, sep, number = ref.strip().rpartition(":")
    if not sep or not name or not number.isdigit():
        raise ValueError(f'outlet {ref!r} is not SWITCH:NUMBER (e.g. "pdu-a1:7")')
    return name, int(number)


def check_switches(switches: Sequence[SwitchConfig]) -> None:
    names: set[str] = set()
    addresses: dict[tuple[str, int], str] = {}
    for sw in switches:
        if sw.name in names:
            raise ValueError(f"switch {sw.name!r} is listed more than once")
        names.add(sw.name)
        key = (sw.address.lower(), sw.default_port)
        if key in addresses:
            raise ValueError(
                f"switches {addresses[key]!r} and {sw.name!r} have the same address {sw.address}"
            )
        addresses[key] = sw.name
        if sw.kind in SNMP_KINDS and sw.password is not None:
            raise ValueError(
                f"switch {sw.name!r}: password is for plugs; SNMP PDUs use communities"
            )


def check_outlets(
    switches: Sequence[SwitchConfig], rigs: Iterable[tuple[str, Sequence[str]]]
) -> None:
    """Every rig's outlets exist and none feeds two rigs unless declared shared."""
    by_name = {sw.name: sw for sw in switches}
    fed: dict[tuple[str, int], str] = {}
    for address, outlets in rigs:
        seen: set[tuple[str, int]] = set()
        for ref in outlets:
            name, number = parse_outlet(ref)
            sw = by_name.get(name)
            if sw is None:
                known = ", ".join(sorted(by_name)) or "none configured"
                raise ValueError(
                    f"rig {address}: outlet {ref!r} names switch {name!r}, which is not in "
                    f"[[switches]] (known: {known})"
                )
            first = FIRST_OUTLET[sw.kind]
            if number < first:
                raise ValueError(
                    f"rig {address}: outlet {ref!r}: {sw.kind} outlets are numbered from {first}"
                )
            if (name, number) in seen:
                raise ValueError(f"rig {address}: outlet {ref!r} is listed twice")
            seen.add((name, number))
            other = fed.get((name, number))
            if other is not None and number not in sw.shared_outlets:
                raise ValueError(
                    f"outlet {ref!r} feeds both rig {other} and rig {address}; switching it "
                    f"would cut both. If that is the wiring, add {number} to switch "
                    f"{name!r}'s shared_outlets"
                )
            fed[(name, number)] = address


class PowerCycleSettings(Section):
    """``[power_cycle]``: hung rigs brought back by switching their outlets off and on."""

    enabled: bool = False
    """Off by default: an operator turns it on knowingly (docs/power-switches.md)."""
    after_s: float = Field(default=900.0, ge=120.0, le=86400.0)
    """How long a rig must stay silent (or marked not responding to commands) while its
    outlets are on before it is power-cycled; also the grace after each cycle."""
    max_per_rig_per_day: int = Field(default=2, ge=1, le=24)
    max_outlets_per_minute: int = Field(default=4, ge=1, le=1000)
    """For the whole site: outlets switched off by power cycles in any 60 s."""
    exclude_groups: tuple[str, ...] = ()
    """Rigs of these ``[[rigs]] group`` names are never power-cycled."""
