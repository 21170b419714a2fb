"""Time-of-use tariffs: prices by local wall-clock windows, correct across DST changes.

A schedule is a set of windows in one IANA time zone ("Mon-Fri 14:00-19:00 at 0.12"), plus an
optional default price for the time no window covers. Windows are wall-clock times: on a
spring-forward day a 01:00-03:00 window lasts one real hour, on a fall-back day a 01:00-01:30
window happens twice. ``price_at`` answers for any instant with the price and the window (in
UTC) around it, and the windows of consecutive instants tile the time line without gaps.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from market.source import Source
from policies.values import Quote, QuoteKind

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WEEKDAYS = frozenset(range(5))
WEEKEND = frozenset({5, 6})
ALL_DAYS = frozenset(range(7))
_DAY_ALIASES = {"weekdays": WEEKDAYS, "weekend": WEEKEND, "weekends": WEEKEND, "daily": ALL_DAYS}
_DAY_INDEX = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
MINUTES_PER_DAY = 24 * 60
# DST transitions are found by sampling the UTC offset this often around the instant asked for.
_SCAN_STEP_S = 1800
_HORIZON = timedelta(hours=40)


def parse_days(spec: str) -> frozenset[int]:
    """Weekday numbers (Mon=0) for ``"mon-fri"``, ``"sat,sun"``, ``"weekdays"``, ``"weekend"``
    or ``"daily"``; ValueError naming the part it could not read."""
    text = spec.strip().lower()
    if text in _DAY_ALIASES:
        return _DAY_ALIASES[text]
    days: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        first, _, last = part.partition("-")
        if first not in _DAY_INDEX or (last and last not in _DAY_INDEX):
            raise ValueError(f"unknown day {part!r} in {spec!r} (use mon..sun, weekdays, daily)")
        lo, hi = _DAY_INDEX[first], _DAY_INDEX[last or first]
        span = (hi - lo) % 7  # "fri-mon" wraps over the weekend
        days.update((lo + k) % 7 for k in range(span + 1))
    return frozenset(days)


def _minutes(text: str) -> int:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match:
        raise ValueError(f"time {text!r} is not HH:MM")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"time {text!r} is not between 00:00 and 24:00")
    return hours * 60 + minutes


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_label(days: Iterable[int]) -> str:
    return ",".join(DAY_NAMES[d] for d in sorted(days))


@dataclass(frozen=True, slots=True)
class TouWindow:
    """One priced window: on ``days`` (Mon=0) from ``start`` to ``end`` local wall time.

    ``end`` is exclusive; ``"24:00"`` (or ``"00:00"``) is midnight at the end of the day. A
    window whose end is not after its start crosses midnight into the next day
    (``"22:00"``-``"06:00"`` on Fri covers Fri 22:00 to Sat 06:00).
    """

    days: frozenset[int]
    start: str
    end: str
    price_per_kwh: float
    name: str = ""

    def __post_init__(self) -> None:
        try:
            if not self.days or not self.days <= ALL_DAYS:
                raise ValueError("days must be a non-empty set of weekday numbers 0..6")
            start, end = _minutes(self.start), _minutes(self.end)
            if start == MINUTES_PER_DAY:
                raise ValueError("a window cannot start at 24:00")
            if start == end:
                raise ValueError("start equals end: the window is empty")
            if not math.isfinite(self.price_per_kwh):
                raise ValueError(f"price {self.price_per_kwh!r} is not a finite number")
        except ValueError as exc:
            raise ValueError(f"TOU window {self.label}: {exc}") from None

    @classmethod
    def parse(
        cls, days: str, start: str, end: str, price_per_kwh: float, name: str = ""
    ) -> TouWindow:
        """A window from config text: ``TouWindow.parse("mon-fri", "14:00", "19:00", 0.12)``."""
        try:
            day_set = parse_days(days)
        except ValueError as exc:
            raise ValueError(f"TOU window {name or days}: {exc}") from None
        return cls(day_set, start, end, price_per_kwh, name)

    @property
    def label(self) -> str:
        """How error messages name this window: its name, or its days and times."""
        where = f"{_days_label(self.days & ALL_DAYS)} {self.start}-{self.end}"
        return f"{self.name!r} ({where})" if self.name else f"({where})"

    def pieces(self) -> Iterator[tuple[int, int, int]]:
        """(weekday, start minute, end minute) parts, split at midnight."""
        start, end = _minutes(self.start), _minutes(self.end)
        for day in sorted(self.days):
            if end > start:
                yield day, start, end
            else:
                yield day, start, MINUTES_PER_DAY
                if end > 0:
                    yield (day + 1) % 7, 0, end


@dataclass(frozen=True, slots=True)
class _Segment:
    start: int  # minutes after local midnight
    end: int
    price: float
    label: str


@dataclass(frozen=True, slots=True)
class TouSlot:
    """The answer for one instant: the price and the window around it (aware UTC datetimes)."""

    price_per_kwh: float
    start: datetime
    end: datetime
    label: str


def _day_segments(
    day: int, pieces: list[tuple[int, int, float, str]], default: float | None
) -> tuple[_Segment, ...]:
    pieces.sort()
    out: list[_Segment] = []
    cursor = 0
    for i, (start, end, price, label) in enumerate(pieces):
        if i and start < pieces[i - 1][1]:
            raise ValueError(
                f"TOU window {label} overlaps {pieces[i - 1][3]} on {DAY_NAMES[day]} "
                f"at {_hhmm(start)}-{_hhmm(min(end, pieces[i - 1][1]))}"
            )
        out.extend(_gap(day, cursor, start, default))
        out.append(_Segment(start, end, price, label))
        cursor = end
    out.extend(_gap(day, cursor, MINUTES_PER_DAY, default))
    return tuple(out)


def _gap(day: int, start: int, end: int, default: float | None) -> list[_Segment]:
    if start >= end:
        return []
    if default is None:
        raise ValueError(
            f"TOU schedule has no price for {DAY_NAMES[day]} {_hhmm(start)}-{_hhmm(end)}: "
            "no window covers it and no default price is set"
        )
    return [_Segment(start, end, default, "default")]


@dataclass(frozen=True)
class TouSchedule:
    """Validated windows in time zone ``tz``; ValueError naming the bad window otherwise.

    Windows may not overlap on any weekday. Time no window covers is priced at
    ``default_per_kwh``; if that is None, every minute of the week must be covered.
    """

    windows: tuple[TouWindow, ...]
    tz: str
    default_per_kwh: float | None = None
    zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _days: tuple[tuple[_Segment, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"TOU schedule: unknown time zone {self.tz!r}") from None
        if self.default_per_kwh is not None and not math.isfinite(self.default_per_kwh):
            raise ValueError(f"TOU schedule: default price {self.default_per_kwh!r} is not finite")
        per_day: list[list[tuple[int, int, float, str]]] = [[] for _ in range(7)]
        for window in self.windows:
            for day, start, end in window.pieces():
                per_day[day].append((start, end, window.price_per_kwh, window.label))
        days = tuple(_day_segments(d, per_day[d], self.default_per_kwh) for d in range(7))
        object.__setattr__(self, "windows", tuple(self.windows))
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "_days", days)

    def segment(self, local: datetime) -> tuple[int, _Segment]:
        """The segment covering a local wall-clock time, and its index in that weekday."""
        segments = self._days[local.weekday()]
        starts = [s.start for s in segments]
        index = bisect.bisect_right(starts, local.hour * 60 + local.minute) - 1
        return index, segments[index]

    def key(self, instant: datetime) -> tuple[date, int]:
        local = instant.astimezone(self.zone)
        return local.date(), self.segment(local)[0]

    def breakpoints(self, day: date) -> Iterator[int]:
        return (s.start for s in self._days[day.weekday()])


def _offset_s(zone: ZoneInfo, ts: int) -> float:
    offset = datetime.fromtimestamp(ts, zone).utcoffset()
    assert offset is not None
    return offset.total_seconds()


def _transitions(zone: ZoneInfo, lo: datetime, hi: datetime) -> Iterator[datetime]:
    """UTC instants in [lo, hi] where the zone's UTC offset changes (to the second)."""
    ts, end = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    offset = _offset_s(zone, ts)
    while ts < end:
        nxt = ts + _SCAN_STEP_S
        if _offset_s(zone, nxt) != offset:
            a, b = ts, nxt  # offset(a) == offset, offset(b) differs
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if _offset_s(zone, mid) == offset else (a, mid)
            yield datetime.fromtimestamp(b, UTC)
            offset = _offset_s(zone, nxt)
        ts = nxt


def _wall_instants(schedule: TouSchedule, day: date) -> Iterator[datetime]:
    """UTC instants at which the local clock reads one of ``day``'s breakpoints (both
    occurrences of a repeated time; none for a time skipped by a spring-forward)."""
    for minute in schedule.breakpoints(day):
        wall = datetime.combine(day, time(minute // 60, minute % 60))
        for fold in (0, 1):
            instant = wall.replace(tzinfo=schedule.zone, fold=fold).astimezone(UTC)
            if instant.astimezone(schedule.zone).replace(tzinfo=None) == wall:
                yield instant


def window_at(schedule: TouSchedule, instant_utc: datetime) -> TouSlot:
    """The price at ``instant_utc`` (an aware datetime) and the window containing it.

    The window is the longest span around the instant over which the schedule's answer does
    not change within one local day: it contains the instant (start <= instant < end), and
    asking for any other instant inside it gives the same window.
    """
    if instant_utc.tzinfo is None:
        raise ValueError("instant_utc must be timezone-aware")
    u = instant_utc.astimezone(UTC)
    lo, hi = u - _HORIZON, u + _HORIZON
    bounds: set[datetime] = set(_transitions(schedule.zone, lo, hi))
    today = u.astimezone(schedule.zone).date()
    for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
        bounds.update(b for b in _wall_instants(schedule, day) if lo <= b <= hi)
    ordered = sorted(bounds)
    i = bisect.bisect_right(ordered, u) - 1
    key = schedule.key(u)
    while i > 0 and schedule.key(ordered[i - 1]) == key:
        i -= 1
    j = bisect.bisect_right(ordered, u)
    while j + 1 < len(ordered) and schedule.key(ordered[j]) == key:
        j += 1
    _, seg = schedule.segment(u.astimezone(schedule.zone))
    return TouSlot(seg.price, ordered[i], ordered[j], seg.label)


def price_at(schedule: TouSchedule, instant_utc: datetime) -> tuple[float, datetime, datetime]:
    """``(price per kWh, window start, window end)`` for an aware instant; start and end are
    aware UTC datetimes with ``start <= instant_utc < end``. Pure: no clock, no I/O."""
    slot = window_at(schedule, instant_utc)
    return slot.price_per_kwh, slot.start, slot.end


def windows_between(schedule: TouSchedule, start: datetime, end: datetime) -> Iterator[TouSlot]:
    """The consecutive windows covering [start, end), in order (the first may begin before
    ``start``, the last may end after ``end``)."""
    cursor = start
    while cursor < end:
        slot = window_at(schedule, cursor)
        yield slot
        cursor = slot.end


class TimeOfUse(Source):
    """A time-of-use tariff as a power price source: never fails, never needs the network.

    Each quote's ``observed_at`` is its window's start and its ``ttl_s`` the window's length,
    so it goes stale exactly when the window ends. Prices are all-in (site currency per kWh).
    """

    kind = QuoteKind.POWER_PRICE

    def __init__(
        self,
        schedule: Sequence[TouWindow],
        tz: str,
        *,
        default_per_kwh: float | None = None,
        currency: str = "USD",
        name: str = "tou",
    ) -> None:
        self.schedule = TouSchedule(tuple(schedule), tz, default_per_kwh)
        self.currency = currency
        self.name = name
        self.ttl_s = 900.0  # nominal: each quote carries its own window's length

    async def fetch(self, now: float) -> Quote:
        """The price in force at ``now`` (POSIX seconds)."""
        slot = window_at(self.schedule, datetime.fromtimestamp(now, UTC))
        zone = self.schedule.zone
        local_start, local_end = slot.start.astimezone(zone), slot.end.astimezone(zone)
        return Quote(
            kind=QuoteKind.POWER_PRICE,
            value=slot.price_per_kwh,
            unit=f"{self.currency}/kWh",
            source=self.name,
            observed_at=slot.start.timestamp(),
            ttl_s=(slot.end - slot.start).total_seconds(),
            detail=(
                f"{slot.label} {local_start:%a %Y-%m-%d %H:%M %Z}-{local_end:%H:%M %Z} "
                f"{slot.price_per_kwh:g} {self.currency}/kWh"
            ),
        )
