"""The backtest's inputs: a market history (CSV or JSON) and a fleet file (TOML or JSON).

Every problem is a :class:`BacktestInputError` whose message names the file, the line (CSV,
TOML arrays by index) or field, and what is wrong, so an operator can fix the file.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies.values import Mode
from simulator.models import MODELS, ModelSpec

TIME = "time"
HASHPRICE = "hashprice_usd_per_ph_day"
POWER_PRICE = "power_price_usd_per_kwh"
POWER_PRICE_MWH = "power_price_usd_per_mwh"  # accepted instead, divided by 1,000 on reading
COLUMNS = (TIME, HASHPRICE, POWER_PRICE)
ACCEPTED = (*COLUMNS, POWER_PRICE_MWH)
MIN_INTERVAL_S = 300
MAX_INTERVAL_S = 3600

MAKE_MODES: Mapping[str, frozenset[Mode]] = {
    # What the stock drivers offer (drivers/stock.py): Antminer sleep/low/normal; Whatsminer
    # API v2 sleep/low/normal/high and a power limit.
    "antminer": frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL}),
    "whatsminer": frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT}),
}
# Keys of `rigpilot sim` fleet files that mean nothing offline: accepted, ignored.
SIM_ONLY_KEYS = frozenset({"firmware", "faults"})
SIM_ONLY_TOP = frozenset({"time_scale"})


class BacktestInputError(ValueError):
    """A bad input file; the message says where and what."""


@dataclass(frozen=True, slots=True)
class MarketRow:
    """Prices from ``t`` (POSIX seconds) until the next row; None where the cell was empty
    (no fresh quote: the stale-input guard applies, as live)."""

    t: float
    hashprice_usd_per_ph_day: float | None
    power_price_usd_per_kwh: float | None


@dataclass(frozen=True, slots=True)
class Market:
    """A validated history: rows at one fixed interval, oldest first."""

    path: str
    interval_s: int
    rows: tuple[MarketRow, ...]

    @property
    def start(self) -> float:
        return self.rows[0].t

    @property
    def end(self) -> float:
        return self.rows[-1].t + self.interval_s


@dataclass(frozen=True, slots=True)
class RigGroup:
    """``count`` rigs of one model; health spread over ``health_buckets`` evenly spaced values
    between ``health - health_spread`` and ``health + health_spread``."""

    spec: ModelSpec
    count: int
    health: float = 1.0
    health_spread: float = 0.0
    health_buckets: int = 1
    ambient_c: float = 25.0
    group: str = ""
    modes: frozenset[Mode] = frozenset()

    def healths(self) -> list[tuple[float, int]]:
        """(health, rigs) per bucket, counts as even as they go, summing to ``count``."""
        n = min(self.health_buckets, self.count) if self.health_spread > 0 else 1
        if n <= 1:
            return [(self.health, self.count)]
        out = []
        for i in range(n):
            h = self.health - self.health_spread + 2 * self.health_spread * i / (n - 1)
            rigs = self.count * (i + 1) // n - self.count * i // n
            out.append((round(h, 6), rigs))
        return out


@dataclass(frozen=True, slots=True)
class Fleet:
    path: str
    groups: tuple[RigGroup, ...]
    ignored: tuple[str, ...] = ()  # simulator-only keys found, for a note on the terminal

    @property
    def rigs(self) -> int:
        return sum(g.count for g in self.groups)


# ---------------------------------------------------------------------------------------------
# market


def load_market(path: Path) -> Market:
    """Read a market history: CSV with a header, or JSON (a list of row objects, or an object
    with ``rows``). Columns: ``time`` (ISO 8601 with a zone, or POSIX seconds),
    ``hashprice_usd_per_ph_day``, ``power_price_usd_per_kwh`` or ``power_price_usd_per_mwh``
    (converted to USD/kWh; an empty cell or null: no quote). UTF-8, with or without a
    byte-order mark (Excel's "CSV UTF-8"), any line ends. Rows must be strictly increasing, one
    interval apart, the interval 5 minutes to an hour."""
    name = str(path)
    text = _read_text(name, path, "market")
    is_json = path.suffix.lower() == ".json"
    raw = _json_rows(name, text) if is_json else _csv_rows(name, text)
    rows = [_row(name, where, cells) for where, cells in raw]
    if len(raw) < 2:
        raise BacktestInputError(f"{name}: need at least 2 rows, found {len(raw)}")
    interval = rows[1].t - rows[0].t
    for (where, _), prev, row in zip(raw[1:], rows, rows[1:], strict=False):
        step = row.t - prev.t
        if step <= 0:
            raise BacktestInputError(
                f"{name}: {where}: time {iso_utc(row.t)} is not after {iso_utc(prev.t)} "
                "(timestamps must increase)"
            )
        if step != interval:
            raise BacktestInputError(
                f"{name}: {where}: gap or irregular step: {iso_utc(row.t)} follows "
                f"{iso_utc(prev.t)} ({step:g} s), expected one row every {interval:g} s"
            )
    if not (MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S) or interval != int(interval):
        raise BacktestInputError(
            f"{name}: rows are {interval:g} s apart; the backtest takes 300 s (5 minutes) to "
            "3600 s (1 hour), whole seconds"
        )
    for col, value in (
        (HASHPRICE, rows[0].hashprice_usd_per_ph_day),
        (
            POWER_PRICE_MWH if POWER_PRICE_MWH in raw[0][1] else POWER_PRICE,
            rows[0].power_price_usd_per_kwh,
        ),
    ):
        if value is None:
            raise BacktestInputError(f"{name}: {raw[0][0]}: {col}: the first row needs a value")
    return Market(name, int(interval), tuple(rows))


def _read_text(name: str, path: Path, what: str) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped (Excel writes one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BacktestInputError(f"{name}: cannot read the {what} file: {exc}") from exc
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise BacktestInputError(
            f"{name}: the {what} file is UTF-16 (Excel's 'Unicode Text'); save it as UTF-8 "
            "(Excel: 'CSV UTF-8')"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BacktestInputError(
            f"{name}: the {what} file is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from exc
    # Universal line ends, as reading in text mode: CRLF (Windows) and CR become LF.
    return text.replace("\r\n", "\n").replace("\r", "\n")


_COLUMNS_ARE = f"columns are {', '.join(COLUMNS)} (or {POWER_PRICE_MWH} instead of the last)"


def _columns_problem(names: Sequence[str]) -> str | None:
    """What is wrong with a header (or a JSON row's fields), or None."""
    unknown = [c for c in names if c not in ACCEPTED]
    if unknown:
        return f"unknown column {unknown[0]!r}; {_COLUMNS_ARE}"
    if POWER_PRICE in names and POWER_PRICE_MWH in names:
        return f"both {POWER_PRICE!r} and {POWER_PRICE_MWH!r}; give the power price once"
    missing = [
        c for c in COLUMNS if c not in names and not (c == POWER_PRICE and POWER_PRICE_MWH in names)
    ]
    if missing:
        return f"missing column {missing[0]!r}; {_COLUMNS_ARE}"
    return None


def _csv_rows(name: str, text: str) -> list[tuple[str, dict[str, str]]]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise BacktestInputError(f"{name}: empty market file")
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    out: list[tuple[str, dict[str, str]]] = []
    for lineno, raw_cells in enumerate(reader, start=1):
        if not raw_cells or not "".join(raw_cells).strip() or raw_cells[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in raw_cells]
        if header is None:
            header = cells
            problem = _columns_problem(header)
            if problem:
                raise BacktestInputError(f"{name}: line {lineno}: {problem}")
            continue
        if len(cells) != len(header):
            raise BacktestInputError(
                f"{name}: line {lineno}: {len(cells)} fields, the header has {len(header)}"
            )
        out.append((f"line {lineno}", dict(zip(header, cells, strict=True))))
    return out


def _json_rows(name: str, text: str) -> list[tuple[str, dict[str, str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BacktestInputError(f"{name}: line {exc.lineno}: not valid JSON: {exc.msg}") from exc
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise BacktestInputError(f"{name}: want a list of rows, or an object with 'rows'")
    out = []
    for i, item in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(item, dict):
            raise BacktestInputError(f"{name}: {where}: want an object, got {item!r}")
        problem = _columns_problem(list(item))
        if problem:
            raise BacktestInputError(f"{name}: {where}: {problem.replace('column', 'field')}")
        out.append((where, {k: "" if v is None else str(v) for k, v in item.items()}))
    return out


def _row(name: str, where: str, cells: Mapping[str, str]) -> MarketRow:
    t = _time(name, where, cells[TIME])
    if POWER_PRICE_MWH in cells:
        per_mwh = _price(name, where, POWER_PRICE_MWH, cells[POWER_PRICE_MWH], negative=True)
        power = None if per_mwh is None else round(per_mwh / 1000.0, 9)  # 12.34 -> 0.01234
    else:
        power = _price(name, where, POWER_PRICE, cells[POWER_PRICE], negative=True)
    return MarketRow(t, _price(name, where, HASHPRICE, cells[HASHPRICE], negative=False), power)


def _time(name: str, where: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BacktestInputError(
            f"{name}: {where}: {TIME}: {text!r} is not an ISO 8601 time or POSIX seconds"
        ) from None
    if stamp.tzinfo is None:
        raise BacktestInputError(
            f"{name}: {where}: {TIME}: {text!r} has no time zone (add Z or +00:00)"
        )
    return stamp.timestamp()


def _price(name: str, where: str, col: str, text: str, *, negative: bool) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BacktestInputError(f"{name}: {where}: {col}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BacktestInputError(f"{name}: {where}: {col}: {text!r} is not a finite number")
    if value < 0 and not negative:
        raise BacktestInputError(f"{name}: {where}: {col}: {value:g} is negative")
    limit, unit = _PLAUSIBLE[col]
    if abs(value) > limit:
        raise BacktestInputError(
            f"{name}: {where}: {col}: {value:g} is implausible (wrong unit? {unit})"
        )
    return value


_PLAUSIBLE = {  # ERCOT caps at 5 USD/kWh: beyond twice that, the unit is almost surely wrong
    HASHPRICE: (10_000.0, "USD per PH/s per day"),
    POWER_PRICE: (10.0, "USD per kWh; a price in USD/MWh goes in a column power_price_usd_per_mwh"),
    POWER_PRICE_MWH: (10_000.0, "USD per MWh"),
}


def iso_utc(t: float) -> str:
    """``t`` (Unix seconds) as the ISO 8601 UTC time the inputs and reports use."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# fleet


_GROUP_KEYS = frozenset(
    {"model", "count", "health", "health_spread", "health_buckets", "ambient_c", "group", "modes"}
)


def load_fleet(path: Path) -> Fleet:
    """Read a fleet file: TOML (the ``rigpilot sim --fleet`` format, docs/fleet.example.toml)
    or JSON, ``[[rigs]]`` groups of ``model`` and ``count`` with optional ``health``,
    ``health_spread``, ``health_buckets``, ``ambient_c``, ``group`` and ``modes``."""
    name = str(path)
    text = _read_text(name, path, "fleet")
    data: Any
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BacktestInputError(
                f"{name}: line {exc.lineno}: not valid JSON: {exc.msg}"
            ) from exc
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BacktestInputError(f"{name}: not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise BacktestInputError(f"{name}: want a table with [[rigs]] groups")
    ignored = sorted(set(data) & SIM_ONLY_TOP)
    extra = set(data) - {"rigs"} - SIM_ONLY_TOP
    if extra:
        raise BacktestInputError(f"{name}: unknown key {sorted(extra)[0]!r}; want [[rigs]] groups")
    raw_groups = data.get("rigs")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise BacktestInputError(f"{name}: no [[rigs]] groups")
    groups = []
    for i, raw in enumerate(raw_groups):
        where = f"{name}: rigs[{i}]"
        if not isinstance(raw, dict):
            raise BacktestInputError(f"{where}: want a table, got {raw!r}")
        unknown = set(raw) - _GROUP_KEYS - SIM_ONLY_KEYS
        if unknown:
            known = ", ".join(sorted(_GROUP_KEYS))
            raise BacktestInputError(f"{where}: unknown key {sorted(unknown)[0]!r}; keys: {known}")
        ignored += sorted(f"rigs[{i}].{k}" for k in set(raw) & SIM_ONLY_KEYS)
        groups.append(_group(where, raw))
    return Fleet(name, tuple(groups), tuple(ignored))


def _group(where: str, raw: Mapping[str, Any]) -> RigGroup:
    model = raw.get("model")
    if not isinstance(model, str):
        raise BacktestInputError(f"{where}: model: want a model name, got {model!r}")
    spec = MODELS.get(model.lower())
    if spec is None:
        raise BacktestInputError(
            f"{where}: model: unknown model {model!r}; known models: {', '.join(sorted(MODELS))}"
        )
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
        raise BacktestInputError(f"{where}: count: want a whole number 1..1000000, got {count!r}")
    health = _number(where, raw, "health", 1.0, 0.3, 1.2)
    spread = _number(where, raw, "health_spread", 0.0, 0.0, 0.5)
    if health - spread < 0.1:
        raise BacktestInputError(f"{where}: health_spread: {spread} takes health below 0.1")
    buckets = raw.get("health_buckets", 5)
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 50:
        raise BacktestInputError(f"{where}: health_buckets: want 1..50, got {buckets!r}")
    ambient = _number(where, raw, "ambient_c", 25.0, -40.0, 60.0)
    group = raw.get("group", "")
    if not isinstance(group, str):
        raise BacktestInputError(f"{where}: group: want a name, got {group!r}")
    modes = MAKE_MODES[spec.make]
    if "modes" in raw:
        modes = _modes(where, raw["modes"])
    return RigGroup(spec, count, health, spread, buckets, ambient, group, modes)


def _number(
    where: str, raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise BacktestInputError(f"{where}: {key}: want a number {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def _modes(where: str, value: object) -> frozenset[Mode]:
    allowed = {Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT}
    if not isinstance(value, list) or not value:
        raise BacktestInputError(f'{where}: modes: want a list such as ["sleep", "normal"]')
    out = set()
    for item in value:
        try:
            mode = Mode(str(item))
        except ValueError:
            mode = Mode.UNKNOWN
        if mode not in allowed:
            names = ", ".join(sorted(m.value for m in allowed))
            raise BacktestInputError(f"{where}: modes: unknown mode {item!r}; modes: {names}")
        out.add(mode)
    if Mode.SLEEP not in out or Mode.NORMAL not in out:
        raise BacktestInputError(f"{where}: modes: every rig sleeps and runs normal; list both")
    return frozenset(out)


def parse_policies(text: str, known: Sequence[str]) -> tuple[str, ...]:
    """``breakeven`` or ``breakeven+power-cap`` (several policies combined, as live)."""
    names = tuple(n.strip() for n in text.split("+") if n.strip())
    if not names:
        raise BacktestInputError("--policy: no policy named")
    for n in names:
        if n not in known:
            raise BacktestInputError(
                f"--policy: unknown policy {n!r}; installed policies: {', '.join(known)}"
            )
    return names
