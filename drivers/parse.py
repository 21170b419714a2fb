"""Pure parsers from one decoded status reply to the fields an observation needs.

Each parser reads exactly the fields pyasic reads for the same figure (tests compare them field
by field with pyasic's parse of the same reply), and raises DriverError(BAD_REPLY) naming the
missing or malformed field rather than returning a partial picture as if it were whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from drivers.catalogue import ModelEntry
from drivers.transport import DriverError
from policies.values import Board, FailureKind, Mode, rig_text

# Plausible ranges (docs/drivers.md, "Plausibility"). A value outside them is a broken sensor or a
# lying firmware, never a reading to act on.
MIN_TEMP_C = -40.0  # no site runs colder; a diode's rated range starts about here
MAX_TEMP_C = 150.0  # silicon stops long before; chip sensors saturate around 125-150 degC
MAX_FAN_RPM = 30_000
TOP_MODE_MULTIPLE = 2.0  # hashrate / watts above twice the model's top catalogue mode: a lie
MAX_HASHRATE_THS = 5_000.0  # without a catalogue entry: above any rig made
MAX_POWER_W = 30_000.0  # likewise
DISAGREE_C = 25.0  # a summary chip sensor this far below the hottest board's is flagged


@dataclass(frozen=True, slots=True)
class Bounds:
    """The largest plausible hashrate and wall power of one rig."""

    hashrate_ths: float = MAX_HASHRATE_THS
    power_w: float = MAX_POWER_W


@dataclass(frozen=True, slots=True)
class Status:
    """What one cycle's read tells about a rig, before identity and power estimation."""

    hashrate_ths: float
    boards: tuple[Board, ...]
    max_chip_temp_c: float | None
    fan_rpm: tuple[int, ...]
    uptime_s: int | None
    power_w: float | None = None  # reported by the rig
    power_limit_w: int | None = None
    mode: Mode | None = None  # None: the reply does not say
    mining: bool | None = None
    ambient_c: float | None = None
    inlet_c: float | None = None
    outlet_c: float | None = None
    errors: tuple[str, ...] = ()
    fingerprint: str = ""  # model/firmware as this reply states them: a change means re-identify


def _bad(field: str, detail: str = "missing") -> DriverError:
    return DriverError(FailureKind.BAD_REPLY, f"{field}: {detail}")


def bad_reply(where: str, detail: str = "missing") -> DriverError:
    """The error for a reply field ``where`` that is missing or wrong (``detail``)."""
    return DriverError(FailureKind.BAD_REPLY, f"{where}: {detail}")


def field_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` when it is a JSON object; else the error naming ``where``."""
    if not isinstance(value, dict):
        raise bad_reply(where, "not an object" if value is not None else "missing")
    return value


def field_number(value: Any, where: str) -> float:
    """``value`` as a float when it is a finite JSON number (``true`` is not one; Python's JSON
    reader accepts ``NaN`` and ``Infinity``, which no rig means); else the error naming
    ``where`` and the value (shortened and made printable)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_reply(where, f"not a number: {rig_text(value, 40)!r}")
    return float(value)


def field_opt_number(value: Any, where: str) -> float | None:
    """:func:`field_number`, with None (absent) allowed."""
    return None if value is None else field_number(value, where)


def refused(reply: dict[str, Any]) -> str | None:
    """A cgminer-style reply's refusal (``"E: Invalid command"``): its first STATUS is neither
    S (success) nor I (information). None when the reply did not refuse, or has no STATUS."""
    status = reply.get("STATUS")
    if (
        isinstance(status, list)
        and status
        and isinstance(status[0], dict)
        and status[0].get("STATUS") not in ("S", "I")
    ):
        return f"{status[0].get('STATUS')}: {status[0].get('Msg')}"
    return None


def _section(reply: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A cgminer reply section, from a single (``STATS``) or joined (``stats`` -> [..]) reply."""
    if name.lower() in reply:  # joined command: {"stats": [{... "STATS": [...]}]}
        inner = reply[name.lower()]
        if not isinstance(inner, list) or not inner or not isinstance(inner[0], dict):
            raise _bad(name.lower(), "not a list with one reply")
        reply = inner[0]
    refusal = refused(reply)
    if refusal is not None:
        raise _bad(name, f"rig answered {rig_text(refusal)}")
    section = reply.get(name)
    if not isinstance(section, list) or not all(isinstance(x, dict) for x in section):
        raise _bad(name)
    return section


def cgminer_section(reply: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Section ``name`` of a cgminer-style reply; DriverError(BAD_REPLY) naming what is wrong
    (an error status with the rig's message, a missing section)."""
    return _section(reply, name)


def _num(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or value is None:
        raise _bad(f"{where}.{key}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(f"{where}.{key}", f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise _bad(f"{where}.{key}", f"not a finite number: {value!r}")
    return number


def _opt_num(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    """A whole count (chips) or None; a non-finite number is no count."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _fans(values: Iterable[Any]) -> tuple[int, ...]:
    """Fan speeds that are numbers in 1..MAX_FAN_RPM (zero: no fan on that header)."""
    return tuple(
        int(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_FAN_RPM
    )


def _dashed(value: Any) -> list[float]:
    """Antminer's per-sensor strings, ``"78-50-69-70"``; zeros are absent sensors."""
    if not isinstance(value, str) or not value:
        return []
    out = []
    for part in value.split("-"):
        try:
            number = float(part)
        except ValueError:
            continue
        if number > 0:
            out.append(number)
    return out


def pad_boards(boards: list[Board], expected: int | None) -> list[Board]:
    """Boards sorted by index, with the ones the firmware no longer lists added as dead."""
    present = {b.index for b in boards}
    boards = boards + [
        Board(i, 0.0, None, None, 0, alive=False) for i in range(expected or 0) if i not in present
    ]
    return sorted(boards, key=lambda b: b.index)


_RATE_UNITS = {"GH": 1000.0, "TH": 1.0, "MH": 1e6}  # divisors to TH/s

# The stats keys of slot i (1..19), spelled once: the parse runs for every rig every cycle.
_SLOTS = range(20)
_ACN = tuple(f"chain_acn{i}" for i in _SLOTS)
_ACS = tuple(f"chain_acs{i}" for i in _SLOTS)
_RATE = tuple(f"chain_rate{i}" for i in _SLOTS)
_TEMP_CHIP = tuple(f"temp_chip{i}" for i in _SLOTS)
_TEMP_PCB = tuple(f"temp_pcb{i}" for i in _SLOTS)
_FANS = tuple(f"fan{n}" for n in range(1, 9))


def _slot_offset(dev: dict[str, Any]) -> int:
    """The first slot of the boards, as pyasic finds it: the first of 1, 6, 11 with chips in
    any of its five ``chain_acn`` slots (1 when none has)."""
    for base in (1, 6, 11):
        if any(dev.get(_ACN[base + n]) for n in range(5)):
            return base
    return 1


def antminer_stats(reply: dict[str, Any], expected_boards: int | None = None) -> Status:
    """Stock Antminer RPC ``stats``: boards, temperatures, fans, uptime, model and firmware.

    Slots are found as pyasic finds them (``chain_acn``/``chain_acs`` offsets); hashrate is
    ``GHS 5s`` (what pyasic's summary reads, repeated in stats), per board ``chain_rateN``.
    A board the firmware no longer lists (dead) is reported as dead when ``expected_boards``
    says it should be there.
    """
    stats = _section(reply, "STATS")
    if len(stats) < 2:
        raise _bad("STATS", "expected the version block and the device block")
    head, dev = stats[0], stats[1]
    # "GHS 5s" and chain_rateN are in rate_unit (GH on every firmware seen; TH/MH accepted)
    per_ths = _RATE_UNITS.get(str(dev.get("rate_unit", "GH")).upper().removesuffix("/S"))
    if per_ths is None:
        raise _bad("STATS[1].rate_unit", f"unknown unit {dev.get('rate_unit')!r}")
    hashrate = _num(dev, "GHS 5s", "STATS[1]") / per_ths
    offset = _slot_offset(dev)
    slots = [i for i in range(offset, offset + 4) if dev.get(_ACS[i], "") != ""]
    boards: list[Board] = []
    for i in slots:
        chips = _count(dev.get(_ACN[i]))
        rate = _opt_num(dev, _RATE[i])
        chip_temps = _dashed(dev.get(_TEMP_CHIP[i]))
        pcb_temps = _dashed(dev.get(_TEMP_PCB[i]))
        boards.append(
            Board(
                index=i - offset,
                hashrate_ths=(rate or 0.0) / per_ths,
                board_temp_c=max(pcb_temps) if pcb_temps else None,
                chip_temp_c=max(chip_temps) if chip_temps else None,
                chips=chips,
                alive=bool(chips),
            )
        )
    present = {b.index for b in boards}
    boards.extend(
        Board(i, 0.0, None, None, 0, alive=False)
        for i in range(expected_boards or 0)
        if i not in present
    )
    boards.sort(key=lambda b: b.index)
    fans = _fans(dev.get(key) for key in _FANS)
    chip_max = [b.chip_temp_c for b in boards if b.chip_temp_c is not None]
    elapsed = _opt_num(dev, "Elapsed")
    return Status(
        hashrate_ths=hashrate,
        boards=tuple(boards),
        max_chip_temp_c=max(chip_max) if chip_max else None,
        fan_rpm=fans,
        uptime_s=None if elapsed is None else int(elapsed),
        mining=hashrate > 0,
        fingerprint=rig_text(f"{head.get('Type', '')}|{head.get('CompileTime', '')}"),
    )


_WM_MODES = {"low": Mode.LOW, "normal": Mode.NORMAL, "high": Mode.HIGH}


def whatsminer_summary(reply: dict[str, Any], expected_boards: int | None = None) -> Status:
    """Stock Whatsminer API v2 ``summary`` (alone or joined with ``devs``).

    Hashrate ``MHS 1m`` (as pyasic), power ``Power`` (-1 = unknown), ``Power Limit``,
    ``Power Mode``, ``Env Temp``, ``Fan Speed In/Out``; boards from ``DEVS`` when present.
    """
    summary = _section(reply, "SUMMARY")
    if not summary:
        raise _bad("SUMMARY", "empty")
    s = summary[0]
    hashrate = _num(s, "MHS 1m", "SUMMARY[0]") / 1e6
    power = _opt_num(s, "Power")
    limit = _opt_num(s, "Power Limit")
    mode = _WM_MODES.get(str(s.get("Power Mode", "")).lower())
    boards: list[Board] = []
    if "devs" in reply or "DEVS" in reply:
        for dev in _section(reply, "DEVS"):
            slot = dev.get("ASC", dev.get("Slot"))
            if not isinstance(slot, int):
                raise _bad("DEVS[].ASC")
            chips = dev.get("Effective Chips")
            boards.append(
                Board(
                    index=slot,
                    hashrate_ths=_num(dev, "MHS 1m", f"DEVS[{slot}]") / 1e6,
                    board_temp_c=_opt_num(dev, "Temperature"),
                    chip_temp_c=_opt_num(dev, "Chip Temp Max") or _opt_num(dev, "Chip Temp Avg"),
                    chips=_count(chips),
                    alive=bool(chips),
                )
            )
    chip_max = _opt_num(s, "Chip Temp Max")
    if chip_max is None:
        temps = [b.chip_temp_c for b in boards if b.chip_temp_c is not None]
        chip_max = max(temps) if temps else None
    fans = _fans(s.get(key) for key in ("Fan Speed In", "Fan Speed Out"))
    count = s.get("Error Code Count")
    errors = tuple(
        rig_text(s[key])
        for i in range(count if isinstance(count, int) and 0 < count < 100 else 0)
        if (key := f"Error Code {i}") in s
    )
    elapsed = _opt_num(s, "Elapsed")
    return Status(
        hashrate_ths=hashrate,
        boards=tuple(pad_boards(boards, expected_boards) if boards else ()),
        max_chip_temp_c=chip_max,
        fan_rpm=fans,
        uptime_s=None if elapsed is None else int(elapsed),
        power_w=None if power is None or power < 0 else power,
        power_limit_w=None if limit is None else int(limit),
        mode=mode,
        mining=hashrate > 0,
        ambient_c=_opt_num(s, "Env Temp"),
        errors=errors,
        fingerprint=rig_text(
            f"{s.get('MAC', '')}|{str(s.get('Firmware Version', '')).strip(chr(39))}"
        ),
    )


def whatsminer_v3_status(reply: dict[str, Any], expected_boards: int | None = None) -> Status:
    """Whatsminer API v3 ``get.miner.status`` with ``summary`` (and ``edevs``).

    pyasic's v3 ``is_mining`` is always True; here mining is what the hashrate says.
    """
    code = reply.get("code")
    if code != 0:
        raise _bad("code", f"rig answered {rig_text(code)}: {rig_text(reply.get('msg'))}")
    msg = reply.get("msg")
    if not isinstance(msg, dict) or not isinstance(msg.get("summary"), dict):
        raise _bad("msg.summary")
    s = msg["summary"]
    hashrate = _num(s, "hash-realtime", "summary")
    power = _opt_num(s, "power-realtime")
    limit = _opt_num(s, "power-limit")
    boards: list[Board] = []
    for dev in msg.get("edevs") or []:
        if not isinstance(dev, dict) or not isinstance(dev.get("id"), int):
            raise _bad("edevs[].id")
        chips = dev.get("effective-chips")
        boards.append(
            Board(
                index=dev["id"],
                hashrate_ths=_num(dev, "hash-realtime", f"edevs[{dev['id']}]"),
                board_temp_c=None,
                chip_temp_c=_opt_num(dev, "chip-temp-max"),
                chips=_count(chips),
                alive=bool(chips) and dev.get("status", "alive") == "alive",
            )
        )
    board_temps = s.get("board-temperature")
    if isinstance(board_temps, list) and len(board_temps) == len(boards):
        boards = [
            Board(b.index, b.hashrate_ths, _opt_num({"t": t}, "t"), b.chip_temp_c, b.chips, b.alive)
            for b, t in zip(boards, board_temps, strict=True)
        ]
    fans = _fans(s.get(key) for key in ("fan-speed-in", "fan-speed-out"))
    elapsed = _opt_num(s, "elapsed")
    return Status(
        hashrate_ths=hashrate,
        boards=tuple(pad_boards(boards, expected_boards) if boards else ()),
        max_chip_temp_c=_opt_num(s, "chip-temp-max"),
        fan_rpm=fans,
        uptime_s=None if elapsed is None else int(elapsed),
        power_w=power,
        power_limit_w=None if limit is None else int(limit),
        mining=hashrate > 0,
        ambient_c=_opt_num(s, "environment-temperature"),
    )


def _plausible_temp(value: float | None) -> bool:
    return value is not None and MIN_TEMP_C <= value <= MAX_TEMP_C


def _plausible_board(b: Board, bounds: Bounds, errors: list[str]) -> Board:
    """``b`` with its implausible fields made unknown (a hashrate: zero), each named in
    ``errors`` as :func:`plausible` says."""
    rate, board_t, chip_t = b.hashrate_ths, b.board_temp_c, b.chip_temp_c
    temp_range = f"{MIN_TEMP_C:g}..{MAX_TEMP_C:g} °C"
    if not 0.0 <= rate <= bounds.hashrate_ths:
        errors.append(
            f"implausible boards[{b.index}].hashrate_ths: {rate:g} "
            f"(plausible 0..{bounds.hashrate_ths:g} TH/s)"
        )
        rate = 0.0
    if board_t is not None and not _plausible_temp(board_t):
        errors.append(
            f"implausible boards[{b.index}].board_temp_c: {board_t:g} (plausible {temp_range})"
        )
        board_t = None
    if chip_t is not None and not _plausible_temp(chip_t):
        errors.append(
            f"implausible boards[{b.index}].chip_temp_c: {chip_t:g} (plausible {temp_range})"
        )
        chip_t = None
    return Board(b.index, rate, board_t, chip_t, b.chips, b.alive)


def plausible(status: Status, bounds: Bounds) -> Status:
    """``status`` with every implausible field made unknown and named in ``errors``.

    Each such field adds ``implausible <field>: <value as read> (plausible <range>)`` to the
    errors and the rest of the reading is kept; an implausible total hashrate refuses the whole
    reading (DriverError IMPLAUSIBLE): every decision and the power estimate rest on it. The
    maximum chip temperature is the maximum over every plausible chip sensor (the summary's and
    each board's), so a lying sensor cannot hide a hot board; a summary chip sensor more than
    DISAGREE_C below the hottest board's is flagged ``sensor disagrees``.
    """
    if not 0.0 <= status.hashrate_ths <= bounds.hashrate_ths:
        raise DriverError(
            FailureKind.IMPLAUSIBLE,
            f"implausible hashrate_ths: {status.hashrate_ths:g} "
            f"(plausible 0..{bounds.hashrate_ths:g} TH/s)",
        )
    errors = list(status.errors)

    def flag(field: str, value: float, plausible_range: str) -> None:
        errors.append(f"implausible {field}: {value:g} (plausible {plausible_range})")

    temp_range = f"{MIN_TEMP_C:g}..{MAX_TEMP_C:g} °C"
    boards = [_plausible_board(b, bounds, errors) for b in status.boards]
    summary_t = status.max_chip_temp_c
    if summary_t is not None and not _plausible_temp(summary_t):
        flag("max_chip_temp_c", summary_t, temp_range)
        summary_t = None
    hottest = max((b.chip_temp_c for b in boards if b.chip_temp_c is not None), default=None)
    if summary_t is not None and hottest is not None and summary_t < hottest - DISAGREE_C:
        errors.append(
            f"sensor disagrees: summary chip {summary_t:g} °C, boards up to {hottest:g} °C"
        )
    chip_max = max((t for t in (summary_t, hottest) if t is not None), default=None)
    power = status.power_w
    if power is not None and not 0.0 <= power <= bounds.power_w:
        flag("power_w", power, f"0..{bounds.power_w:g} W")
        power = None
    limit = status.power_limit_w
    if limit is not None and not 0 <= limit <= bounds.power_w:
        flag("power_limit_w", limit, f"0..{bounds.power_w:g} W")
        limit = None

    def air(field: str, value: float | None) -> float | None:
        if value is None or _plausible_temp(value):
            return value
        flag(field, value, temp_range)
        return None

    ambient = air("ambient_c", status.ambient_c)
    inlet = air("inlet_c", status.inlet_c)
    outlet = air("outlet_c", status.outlet_c)
    if len(errors) == len(status.errors) and chip_max == status.max_chip_temp_c:
        return status
    return replace(
        status,
        boards=tuple(boards),
        max_chip_temp_c=chip_max,
        power_w=power,
        power_limit_w=limit,
        errors=tuple(errors),
        ambient_c=ambient,
        inlet_c=inlet,
        outlet_c=outlet,
    )


def bounds_for(entry: ModelEntry | None) -> Bounds:
    """A model's plausible bounds: TOP_MODE_MULTIPLE times its top catalogue mode (hashrate and
    watts); without an entry, the absolute MAX_HASHRATE_THS and MAX_POWER_W."""
    if entry is None:
        return Bounds()
    return Bounds(
        TOP_MODE_MULTIPLE * max(m.hashrate_ths for m in entry.modes),
        TOP_MODE_MULTIPLE * max(m.power_w for m in entry.modes),
    )
