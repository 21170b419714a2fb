"""Readings in a fixed binary layout: what an observer worker hands back to the controller.

A worker (daemon/workers.py) reads thousands of rigs per cycle; sending each reading as a
pickled object would cost the controller more to unpickle than the worker spent reading. Each
reading is instead one struct-packed record, and a cycle's readings are one buffer:

    record      = address_len:u8  tag:u8  address:bytes  body
    observation = OBS (observed_at, hashrate, power, power_source, mode, mining, max chip,
                  inlet, outlet, ambient, power limit, uptime, model_unknown, #boards, #fans,
                  #errors), then #boards × BOARD, #fans × FAN, #errors × (len:u16 utf-8)
    failure     = FAIL (kind, observed_at, consecutive, has_identity, detail_len), detail

Little-endian, floats as IEEE doubles (so a decoded reading equals the one encoded: the
differential test compares readings through workers with readings in-process). ``None`` is a
NaN for a float and a sentinel for an integer; enums travel as their index in a fixed table.

The identity is not sent: the controller holds every rig's identity and gives it to
:func:`decode` (a worker that re-identified a rig sends the new identity beside the buffer,
daemon/workers.py). Pure functions; no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable

from policies.values import (
    Board,
    FailureKind,
    Identity,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
    Reading,
)

_HEAD = struct.Struct("<BB")
_OBS = struct.Struct("<dddBBBddddqqBBBB")
_BOARD = struct.Struct("<qdddqB")
_FAN = struct.Struct("<q")
_TEXT = struct.Struct("<H")
_FAIL = struct.Struct("<BdIBH")

_TAG_OBS = 0
_TAG_FAIL = 1
_NONE_INT = -(2**63)
_NO_SOURCE = 255
MAX_TEXT = 65535  # bytes of one error or detail (rig texts are already cut much shorter)

_MODES = tuple(Mode)
_MODE_INDEX = {m: i for i, m in enumerate(_MODES)}
_SOURCES = tuple(PowerSource)
_SOURCE_INDEX = {s: i for i, s in enumerate(_SOURCES)}
_KINDS = tuple(FailureKind)
_KIND_INDEX = {k: i for i, k in enumerate(_KINDS)}


class LayoutError(ValueError):
    """A readings buffer that does not follow the layout (truncated, unknown tag or enum)."""


def _f(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _fo(value: float) -> float | None:
    return None if math.isnan(value) else value


def _i(value: int | None) -> int:
    return _NONE_INT if value is None else int(value)


def _io(value: int) -> int | None:
    return None if value == _NONE_INT else value


def _text(value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    if len(raw) > MAX_TEXT:
        raw = raw[: MAX_TEXT - 3].decode("utf-8", "ignore").encode() + "…".encode()
    return _TEXT.pack(len(raw)) + raw


def encode(readings: Iterable[tuple[str, Reading]]) -> bytes:
    """One buffer holding every ``(address, reading)`` in order."""
    out: list[bytes] = []
    for address, reading in readings:
        addr = address.encode()
        if len(addr) > 255:
            raise LayoutError(f"address longer than 255 bytes: {address[:40]!r}…")
        if isinstance(reading, Observation):
            out.append(_HEAD.pack(len(addr), _TAG_OBS) + addr)
            out.append(
                _OBS.pack(
                    reading.observed_at,
                    reading.hashrate_ths,
                    _f(reading.power_w),
                    _NO_SOURCE
                    if reading.power_source is None
                    else _SOURCE_INDEX[reading.power_source],
                    _MODE_INDEX[reading.mode],
                    reading.mining,
                    _f(reading.max_chip_temp_c),
                    _f(reading.inlet_c),
                    _f(reading.outlet_c),
                    _f(reading.ambient_c),
                    _i(reading.power_limit_w),
                    _i(reading.uptime_s),
                    reading.model_unknown,
                    len(reading.boards),
                    len(reading.fan_rpm),
                    len(reading.errors),
                )
            )
            for b in reading.boards:
                out.append(
                    _BOARD.pack(
                        b.index,
                        b.hashrate_ths,
                        _f(b.board_temp_c),
                        _f(b.chip_temp_c),
                        _i(b.chips),
                        b.alive,
                    )
                )
            for rpm in reading.fan_rpm:
                out.append(_FAN.pack(rpm))
            for error in reading.errors:
                out.append(_text(error))
        else:
            detail = _text(reading.detail)
            out.append(_HEAD.pack(len(addr), _TAG_FAIL) + addr)
            out.append(
                _FAIL.pack(
                    _KIND_INDEX[reading.kind],
                    reading.observed_at,
                    reading.consecutive,
                    reading.identity is not None,
                    len(detail) - _TEXT.size,
                )
            )
            out.append(detail[_TEXT.size :])
    return b"".join(out)


def decode(
    buffer: bytes, identity_of: Callable[[str], Identity | None]
) -> list[tuple[str, Reading]]:
    """The ``(address, reading)`` pairs of ``buffer``, each reading given the identity
    ``identity_of(address)`` returns. LayoutError naming the offset if the buffer is broken;
    an observation for a rig without an identity is a LayoutError too."""
    view = memoryview(buffer)
    out: list[tuple[str, Reading]] = []
    pos, end = 0, len(buffer)
    try:
        while pos < end:
            start = pos
            n, tag = _HEAD.unpack_from(view, pos)
            pos += _HEAD.size
            address = bytes(view[pos : pos + n]).decode()
            pos += n
            if tag == _TAG_OBS:
                (
                    at,
                    hashrate,
                    power,
                    source,
                    mode,
                    mining,
                    chip,
                    inlet,
                    outlet,
                    ambient,
                    limit,
                    uptime,
                    unknown,
                    nboards,
                    nfans,
                    nerrors,
                ) = _OBS.unpack_from(view, pos)
                pos += _OBS.size
                boards = []
                for _ in range(nboards):
                    index, bhash, btemp, ctemp, chips, alive = _BOARD.unpack_from(view, pos)
                    pos += _BOARD.size
                    boards.append(
                        Board(index, bhash, _fo(btemp), _fo(ctemp), _io(chips), bool(alive))
                    )
                fans = []
                for _ in range(nfans):
                    fans.append(_FAN.unpack_from(view, pos)[0])
                    pos += _FAN.size
                errors = []
                for _ in range(nerrors):
                    (length,) = _TEXT.unpack_from(view, pos)
                    pos += _TEXT.size
                    errors.append(bytes(view[pos : pos + length]).decode())
                    pos += length
                identity = identity_of(address)
                if identity is None:
                    raise LayoutError(
                        f"offset {start}: an observation of {address}, a rig without an identity"
                    )
                out.append(
                    (
                        address,
                        Observation(
                            identity,
                            at,
                            hashrate,
                            _fo(power),
                            None if source == _NO_SOURCE else _SOURCES[source],
                            _MODES[mode],
                            bool(mining),
                            tuple(boards),
                            _fo(chip),
                            _fo(inlet),
                            _fo(outlet),
                            _fo(ambient),
                            tuple(fans),
                            _io(limit),
                            tuple(errors),
                            _io(uptime),
                            bool(unknown),
                        ),
                    )
                )
            elif tag == _TAG_FAIL:
                kind, at, consecutive, has_identity, length = _FAIL.unpack_from(view, pos)
                pos += _FAIL.size
                detail = bytes(view[pos : pos + length]).decode()
                pos += length
                out.append(
                    (
                        address,
                        ObservationFailure(
                            address,
                            _KINDS[kind],
                            detail,
                            at,
                            identity_of(address) if has_identity else None,
                            consecutive,
                        ),
                    )
                )
            else:
                raise LayoutError(f"offset {start}: unknown record tag {tag}")
            if pos > end:
                raise LayoutError(f"offset {start}: record runs past the end of the buffer")
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise LayoutError(f"offset {pos}: {type(exc).__name__}: {exc}") from None
    return out
