"""Switch kinds by name, as ``[[switches]] kind`` names them in the configuration."""

from __future__ import annotations

from drivers.switches.base import PowerSwitch
from drivers.switches.plugs import ShellyGen2, Tasmota
from drivers.switches.snmp import ApcPdu, ApcPduUnmetered, RaritanPdu

KINDS: dict[str, type[PowerSwitch]] = {
    "apc": ApcPdu,
    "apc-switched": ApcPduUnmetered,
    "raritan": RaritanPdu,
    "shelly": ShellyGen2,
    "tasmota": Tasmota,
}
SNMP_KINDS = frozenset({"apc", "apc-switched", "raritan"})
HTTP_KINDS = frozenset({"shelly", "tasmota"})
FIRST_OUTLET = {"apc": 1, "apc-switched": 1, "raritan": 1, "shelly": 0, "tasmota": 1}
"""How each kind numbers its outlets."""
