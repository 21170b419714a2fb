"""quiet-hours: sleep the rigs of named groups during local quiet hours.

A worked example of a rigpilot policy plugin. It imports only rigpilot's plugin API
(``policies.api``) and value types (``policies.values``), keeps no state, and reads no clock:
``now`` is given. Settings come from ``site.params["quiet-hours"]``::

    {"groups": ["container-3"], "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.api import Intent, MarketView, RigView, Site
from policies.values import Mode, RigId

__all__ = ["QuietHours", "QuietHoursError"]


class QuietHoursError(ValueError):
    """Bad ``quiet-hours`` settings; the message names the setting."""


class QuietHours:
    """Sleep every rig whose group is listed while local time is in [start, end).

    An end at or before the start runs past midnight (equal: all day).
    """

    name = "quiet-hours"

    def check(self, site: Site) -> None:
        """Raise QuietHoursError naming a setting that cannot be used. Optional for a plugin:
        rigpilot calls it at start-up, on reload and in ``rigpilot config check``, so that a
        typo stops the daemon there instead of failing every tick."""
        _settings(site.params.get(self.name))

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        """Sleep intents for the listed groups' rigs during quiet hours; nothing otherwise.

        Raises QuietHoursError when the settings are missing or malformed.
        """
        groups, start, end, zone = _settings(site.params.get(self.name))
        local = datetime.fromtimestamp(now, zone)
        minute = local.hour * 60 + local.minute
        quiet = start <= minute < end if start < end else minute >= start or minute < end
        if not quiet:
            return {}
        reason = f"quiet hours {_hhmm(start)}-{_hhmm(end)} {zone.key} (now {local:%H:%M})"
        return {
            rig.rig_id: Intent(rig.rig_id, Mode.SLEEP, reason, self.name)
            for rig in fleet
            if rig.group in groups
        }


def _settings(raw: object) -> tuple[frozenset[str], int, int, ZoneInfo]:
    if not isinstance(raw, Mapping):
        raise QuietHoursError(f"quiet-hours: settings must be a table, got {raw!r}")
    groups = raw.get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise QuietHoursError(f"quiet-hours: groups must be a list of names, got {groups!r}")
    try:
        zone = ZoneInfo(str(raw.get("timezone")))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise QuietHoursError(f"quiet-hours: unknown timezone {raw.get('timezone')!r}") from exc
    return frozenset(groups), _minute(raw, "start"), _minute(raw, "end"), zone


def _minute(raw: Mapping[object, object], key: str) -> int:
    value = raw.get(key)
    try:
        hours, minutes = (int(part) for part in str(value).split(":"))
    except ValueError:
        hours = minutes = -1
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise QuietHoursError(f"quiet-hours: bad {key} {value!r} (want HH:MM)")
    return hours * 60 + minutes


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
