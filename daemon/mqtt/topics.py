"""The topic tree under ``<base_topic>/<site>/`` (docs/mqtt.md).

::

    <root>/bridge/state            retained  "online" / "offline" (last will: "offline")
    <root>/bridge/info             retained  version, site, rigs, dry-run, policies, commands
    <root>/fleet/state             retained  fleet summary
    <root>/rig/<rig>/state         retained  one rig: observation, mode, desired, reason, margin
    <root>/event/<kind>            events: decision, command, fault, instance, power (not retained)
    <root>/request/<command>       commands in (JSON)
    <root>/response/<command>      answers, for clients without MQTT 5 response topics

``<rig>`` is the rig id (its address) with every character outside ``[A-Za-z0-9_.-]`` replaced
by ``_`` (``10.0.4.17:4028`` -> ``10.0.4.17_4028``), so a rig id never adds a topic level or a
wildcard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policies.values import RigId

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def rig_key(rig_id: RigId) -> str:
    """``rig_id`` as one safe topic level (and Home Assistant object id part)."""
    return _UNSAFE.sub("_", rig_id) or "_"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the daemon publishes or subscribes to, for one site."""

    base: str
    site: str

    @property
    def root(self) -> str:
        return f"{self.base}/{self.site}"

    @property
    def availability(self) -> str:
        return f"{self.root}/bridge/state"

    @property
    def info(self) -> str:
        return f"{self.root}/bridge/info"

    @property
    def fleet(self) -> str:
        return f"{self.root}/fleet/state"

    def rig_state(self, rig_id: RigId) -> str:
        return f"{self.root}/rig/{rig_key(rig_id)}/state"

    def event(self, kind: str) -> str:
        return f"{self.root}/event/{kind}"

    @property
    def requests(self) -> str:
        """The one subscription for commands: ``<root>/request/+``."""
        return f"{self.root}/request/+"

    def request(self, command: str) -> str:
        return f"{self.root}/request/{command}"

    def response(self, command: str) -> str:
        return f"{self.root}/response/{command}"

    @property
    def response_prefix(self) -> str:
        """MQTT 5 response topics must lie under this prefix (so a commander cannot make the
        daemon publish over its own state or availability topics)."""
        return f"{self.root}/response/"
