"""The ``schedule`` policy: time windows that force a mode (e.g. sleep through 4CP peak hours).

Settings are ``site.params["schedule"]``, as TOML gives them: either a list of windows or a table
with a default ``timezone`` and ``windows``; as the TOML table ``schedule`` that reads::

    [schedule]
    timezone = "America/Chicago"

    [[schedule.windows]]
    name = "4cp"
    start = "16:00"            # local wall-clock time, HH:MM ("24:00" allowed as an end)
    end = "17:30"              # an end at or before the start crosses midnight
    months = [6, 7, 8, 9]      # or ["jun", "jul", ...]; omitted = every month
    weekdays = ["mon", "tue", "wed", "thu", "fri"]   # omitted = every day
    mode = "sleep"             # sleep, low, normal, high, off, or limit (+ power_limit_w)
    groups = ["container-2"]   # omitted = every rig

Windows are wall-clock times in their zone (zoneinfo), so they follow DST: on the day clocks go
forward a window over the skipped hour is shorter, on the day they go back one over the repeated
hour is active both times. Day and month filters apply to the day a window starts (a Friday
22:00-06:00 window runs into Saturday morning). Where windows overlap for a rig, the one of
least expected power wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.api import Intent, MarketView, RigView, Site
from policies.builtin import mode_label, power_order_key
from policies.values import Mode, RigId

NAME = "schedule"
PARAMS_KEY = "schedule"
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_WINDOW_KEYS = frozenset(
    {"name", "mode", "start", "end", "timezone", "months", "weekdays", "groups", "power_limit_w"}
)
_FORCEABLE = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT, Mode.OFF})
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")


class ScheduleError(ValueError):
    """A schedule setting that cannot be used; the message names the window and the field."""


@dataclass(frozen=True, slots=True)
class Window:
    """One recurring window: local ``start``..``end`` seconds after midnight in ``zone``."""

    name: str
    mode: Mode
    start_s: int
    end_s: int  # <= start_s: the window crosses midnight
    zone: ZoneInfo
    months: frozenset[int] = frozenset()  # 1..12; empty: every month
    weekdays: frozenset[int] = frozenset()  # 0 = Monday; empty: every day
    groups: frozenset[str] = frozenset()  # empty: every rig
    power_limit_w: int | None = None

    def active(self, now: float) -> bool:
        """Whether the window is on at POSIX time ``now``."""
        local = datetime.fromtimestamp(now, self.zone)
        t = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        today = local.date()
        if self.start_s < self.end_s:
            return self.start_s <= t < self.end_s and self._day_ok(today)
        return (t >= self.start_s and self._day_ok(today)) or (
            t < self.end_s and self._day_ok(today - timedelta(days=1))
        )

    def applies_to(self, rig: RigView) -> bool:
        """Whether the window covers ``rig`` (by its group)."""
        return not self.groups or rig.group in self.groups

    def describe(self) -> str:
        """``"'4cp' 16:00-17:30 America/Chicago mon-fri, jun-sep"``-like text for reasons."""
        text = f"{self.name!r} {_hhmm(self.start_s)}-{_hhmm(self.end_s)} {self.zone.key}"
        if self.weekdays:
            text += " " + _ranges(sorted(self.weekdays), _WEEKDAYS, 0)
        if self.months:
            text += ", " + _ranges(sorted(self.months), _MONTHS, 1)
        return text

    def _day_ok(self, day: date) -> bool:
        return (not self.months or day.month in self.months) and (
            not self.weekdays or day.weekday() in self.weekdays
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """Parsed ``schedule`` settings."""

    windows: tuple[Window, ...] = ()

    def active(self, now: float) -> tuple[Window, ...]:
        """The windows on at ``now``, in configuration order."""
        return tuple(w for w in self.windows if w.active(now))


def parse_schedule(raw: object) -> Schedule:
    """Parse ``site.params["schedule"]`` (None, a list of window tables, or a table with an
    optional ``timezone`` and ``windows``). Raises :class:`ScheduleError` naming the bad window
    and field; checking it at startup means ``decide`` never raises on configuration."""
    if raw is None:
        return Schedule()
    default_tz: str | None = None
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"timezone", "windows"}
        if unknown:
            raise ScheduleError(f"schedule: unknown setting(s) {sorted(map(str, unknown))}")
        tz = raw.get("timezone")
        if tz is not None and not isinstance(tz, str):
            raise ScheduleError(f"schedule: timezone must be a string, got {tz!r}")
        default_tz = tz
        raw = raw.get("windows", [])
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise ScheduleError(f"schedule: windows must be a list of tables, got {raw!r}")
    return Schedule(tuple(_parse_window(i, w, default_tz) for i, w in enumerate(raw)))


class SchedulePolicy:
    """Forces the mode of every active window on the rigs it covers; silent outside windows."""

    name = NAME

    def check(self, site: Site) -> None:
        """Raise ScheduleError (a ValueError) naming the window and field that cannot be
        used; run before the daemon starts, so that ``decide`` never raises on settings."""
        parse_schedule(site.params.get(PARAMS_KEY))

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        """An intent per rig covered by a window on at ``now``; prices are not used.

        Raises ScheduleError on bad settings (see :func:`parse_schedule`).
        """
        active = parse_schedule(site.params.get(PARAMS_KEY)).active(now)
        intents: dict[RigId, Intent] = {}
        if not active:
            return intents
        for rig in fleet:
            covering = [w for w in active if w.applies_to(rig)]
            if not covering:
                continue
            win = min(covering, key=lambda w: power_order_key(rig, w.mode, w.power_limit_w))
            local = datetime.fromtimestamp(now, win.zone)
            reason = (
                f"schedule {win.describe()}: {mode_label(win.mode, win.power_limit_w)} "
                f"(now {local:%a %H:%M %Z})"
            )
            others = [w.name for w in covering if w is not win]
            if others:
                reason += f"; also on: {', '.join(others)}"
            intents[rig.rig_id] = Intent(rig.rig_id, win.mode, reason, NAME, win.power_limit_w)
        return intents


def _parse_window(index: int, raw: object, default_tz: str | None) -> Window:
    label = f"schedule window {index + 1}"
    if not isinstance(raw, Mapping):
        raise ScheduleError(f"{label}: must be a table, got {raw!r}")
    name = raw.get("name", f"window {index + 1}")
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"{label}: name must be a non-empty string, got {name!r}")
    label = f"{label} ({name!r})"
    unknown = set(raw) - _WINDOW_KEYS
    if unknown:
        raise ScheduleError(f"{label}: unknown setting(s) {sorted(map(str, unknown))}")

    mode_raw = raw.get("mode", "sleep")
    try:
        mode = Mode(mode_raw)
    except ValueError:
        mode = Mode.UNKNOWN
    if mode not in _FORCEABLE:
        wanted = ", ".join(sorted(m.value for m in _FORCEABLE))
        raise ScheduleError(f"{label}: mode must be one of {wanted}, got {mode_raw!r}")
    limit = raw.get("power_limit_w")
    if mode is Mode.LIMIT:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ScheduleError(f"{label}: mode limit needs power_limit_w > 0, got {limit!r}")
    elif limit is not None:
        raise ScheduleError(f"{label}: power_limit_w is only for mode limit, not {mode.value}")

    start = _parse_time(label, "start", raw.get("start"), allow_24=False)
    end = _parse_time(label, "end", raw.get("end"), allow_24=True)
    if start == end:
        raise ScheduleError(f"{label}: start and end are equal; use 00:00-24:00 for all day")

    tz_name = raw.get("timezone", default_tz)
    if not isinstance(tz_name, str) or not tz_name:
        raise ScheduleError(f"{label}: timezone must be an IANA name, got {tz_name!r}")
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"{label}: unknown timezone {tz_name!r}") from exc

    return Window(
        name=name,
        mode=mode,
        start_s=start,
        end_s=end,
        zone=zone,
        months=_parse_names(label, "months", raw.get("months"), _MONTHS, 1),
        weekdays=_parse_names(label, "weekdays", raw.get("weekdays"), _WEEKDAYS, 0),
        groups=_parse_groups(label, raw.get("groups")),
        power_limit_w=limit if mode is Mode.LIMIT else None,
    )


def _parse_time(label: str, field: str, value: object, *, allow_24: bool) -> int:
    if isinstance(value, time):  # TOML local time: start = 16:00:00
        return value.hour * 3600 + value.minute * 60 + value.second
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is not None:
        hours, minutes = int(match[1]), int(match[2])
        if (hours < 24 and minutes < 60) or (allow_24 and hours == 24 and minutes == 0):
            return hours * 3600 + minutes * 60
    hint = "HH:MM, 00:00-24:00" if allow_24 else "HH:MM, 00:00-23:59"
    raise ScheduleError(f"{label}: bad {field} {value!r} (want {hint})")


def _parse_names(
    label: str, field: str, value: object, names: tuple[str, ...], first: int
) -> frozenset[int]:
    """Day or month names (first three letters or in full, any case) or numbers, to numbers."""
    if value is None:
        return frozenset()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ScheduleError(f"{label}: {field} must be a non-empty list, got {value!r}")
    out = set()
    for item in value:
        number: int | None = None
        if isinstance(item, int) and not isinstance(item, bool):
            number = item if first <= item < first + len(names) else None
        elif isinstance(item, str):
            key = item.lower()
            hits = [i for i, n in enumerate(names) if key in (n, n[:3])]
            number = hits[0] + first if hits else None
        if number is None:
            raise ScheduleError(f"{label}: bad {field} entry {item!r}")
        out.add(number)
    return frozenset(out)


def _parse_groups(label: str, value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ScheduleError(f"{label}: groups must be a non-empty list of names, got {value!r}")
    if not all(isinstance(g, str) and g for g in value):
        raise ScheduleError(f"{label}: groups must be names, got {value!r}")
    return frozenset(str(g) for g in value)


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _ranges(numbers: list[int], names: tuple[str, ...], first: int) -> str:
    """``[0, 1, 2, 3, 4]`` -> ``"mon-fri"``; runs of three or more are joined by a dash."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    parts = []
    for run in runs:
        short = [names[n - first][:3] for n in run]
        parts.append(f"{short[0]}-{short[-1]}" if len(run) >= 3 else ",".join(short))
    return ",".join(parts)
