"""Braiins OS 25.x (BOS+, ``BOSer``) on an Antminer: its public REST API on port 80, read and
driven directly.

pyasic's ``BOSer`` reads through Braiins' gRPC API on 50051 (a new HTTP/2 channel per call) plus
the cgminer-compatible API on 4028: about a dozen exchanges per ``get_data``. BOS 25.x also
serves the same public API as JSON over HTTP (``/api/v1/...``, the API asic-rs reads, and the
one the captures in ``tests/fixtures/captures/braiins/v25_07`` come from); this driver speaks
that:

- Read: ``GET miner/details`` (``status``: 2 mining, 3 paused; model and firmware for the
  fingerprint), ``miner/stats`` (hashrate, ``power_stats.approximated_consumption`` watts) and
  ``miner/hw/hashboards`` (boards, chip and board temperatures) every cycle; the power target
  in force (``performance/tuner-state``) changes only when someone sets it, so it is read as
  the stock Antminer's configuration is: at the first read, after a command, every
  TUNER_REFRESH_S, and at most every TUNER_RECHECK_S while the reported watts stray from the
  known target by more than TUNER_STRAY (a target set elsewhere). The API has no joined read,
  so a cycle's requests are pipelined (written at once, the replies read in order) on one
  connection, which is kept for the next cycle; fans are not read each cycle.
- Modes: ``sleep`` is ``PUT actions/pause``; ``limit W`` is ``PUT performance/power-target``
  ``{"watt": W}`` then ``PUT actions/resume``; ``normal`` is the same with the rig's default
  power target. Observed: paused is sleep; otherwise the target in force is ``power_limit_w``,
  and the mode is normal at the default target and limit at any other. The default and the
  allowed range are the rig's own (``GET configuration/constraints``, read at identification);
  a rig that does not tell them offers only sleep and limit. BOS has no preset profiles, so low
  and high are not offered: a power target is the honest control.
- Auth: ``POST auth/login`` (user ``root``, pyasic's ``default_bosminer_password``) gives a
  token sent as the ``Authorization`` header; a 401 logs in once more and retries.

HTTP is ``drivers.http1``'s (h11 framing: Content-Length, chunked, close-delimited, HTTP/1.0;
bodies capped, a deadline on every call, pipelining, the kept connection reopened when dropped),
and every failure is a DriverError with a kind and a detail.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from pyasic import settings as pyasic_settings

from drivers.base import ApplyResult, RigDriver
from drivers.http1 import MAX_BODY, Http1, Reply, Request
from drivers.parse import Status, pad_boards
from drivers.parse import bad_reply as _bad
from drivers.parse import field_number as _number
from drivers.parse import field_object as _obj
from drivers.stock import status_observation
from drivers.transport import DriverError
from policies.values import (
    Board,
    Capabilities,
    FailureKind,
    Identity,
    Make,
    Mode,
    Observation,
    rig_text,
)

WEB_PORT = 80
MAX_DETAIL = 64
USER = "root"

STATUS_NOT_STARTED, STATUS_NORMAL, STATUS_PAUSED, STATUS_SUSPENDED, STATUS_RESTRICTED = (
    1,
    2,
    3,
    4,
    5,
)
TUNER_ERROR = 4

# identity.extra keys: the rig's power target constraints, read at identification
EXTRA_DEFAULT, EXTRA_MIN, EXTRA_MAX = "bos_target_default_w", "bos_target_min_w", "bos_target_max_w"

READS = ("miner/details", "miner/stats", "miner/hw/hashboards")
TUNER = "performance/tuner-state"
TUNER_REFRESH_S = 600.0  # re-read the power target in force at least this often
TUNER_RECHECK_S = 60.0  # ... and at most this often while the watts stray from it
TUNER_STRAY = 0.10  # reported watts this far (a share) from the known target, while mining


def _password() -> str:
    return str(pyasic_settings.get("default_bosminer_password", "root"))


class BosSession:
    """One rig's REST API: the token, on the one connection of ``drivers.http1``."""

    def __init__(
        self, host: str, password: str, port: int = WEB_PORT, max_body: int = MAX_BODY
    ) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.http = Http1(host, port, "Braiins OS API", max_body)
        self.token: str | None = None

    def release(self) -> None:
        """Close the connection (the token stays); the next call opens one."""
        self.http.release()

    async def call(self, method: str, path: str, payload: Any, timeout_s: float) -> Any:
        """``method`` ``/api/v1/<path>`` (with ``payload`` as JSON, if not None); the reply's
        JSON value. Logs in first when there is no token, and once more on a 401.

        Raises DriverError: TIMEOUT, UNREACHABLE, or BAD_REPLY (refused credentials, an error
        status with the rig's message, a broken or oversized reply, not JSON).
        """
        body = None if payload is None else json.dumps(payload).encode()
        return (await self._guarded([(method, path, body)], timeout_s))[0]

    async def get_all(self, paths: tuple[str, ...], timeout_s: float) -> list[Any]:
        """GET every one of ``paths``, pipelined (written at once, the replies read in order:
        ``drivers.http1``), so a read costs one send however many paths it takes. Errors as
        :meth:`call`."""
        return await self._guarded([("GET", path, None) for path in paths], timeout_s)

    async def _guarded(
        self, batch: list[tuple[str, str, bytes | None]], timeout_s: float
    ) -> list[Any]:
        return await self.http.guarded(self._authorised(batch), timeout_s, batch[0][1])

    async def _authorised(self, batch: list[tuple[str, str, bytes | None]]) -> list[Any]:
        if self.token is None:
            await self._login()
        replies = await self._exchange(batch)
        if any(reply.status == 401 for reply in replies):
            await self._login()
            replies = await self._exchange(batch)
            for (_, path, _), reply in zip(batch, replies, strict=True):
                if reply.status == 401:
                    raise DriverError(
                        FailureKind.BAD_REPLY, f"Braiins OS API {path}: token refused after login"
                    )
        return [
            _decoded(path, reply.status, reply.body)
            for (_, path, _), reply in zip(batch, replies, strict=True)
        ]

    async def _login(self) -> None:
        self.token = None
        credentials = json.dumps({"username": USER, "password": self.password}).encode()
        [reply] = await self._exchange([("POST", "auth/login", credentials)])
        if reply.status == 401:
            raise DriverError(
                FailureKind.BAD_REPLY, f"Braiins OS API refused the credentials for user {USER!r}"
            )
        decoded = _decoded("auth/login", reply.status, reply.body)
        token = decoded.get("token") if isinstance(decoded, dict) else None
        if not isinstance(token, str) or not token:
            raise DriverError(FailureKind.BAD_REPLY, "Braiins OS API auth/login: no token")
        if not token.isprintable() or not token.isascii() or len(token) > 4096:
            raise DriverError(
                FailureKind.BAD_REPLY, "Braiins OS API auth/login: token not a header value"
            )
        self.token = token

    async def _exchange(self, batch: list[tuple[str, str, bytes | None]]) -> list[Reply]:
        auth = ((b"Authorization", self.token.encode()),) if self.token is not None else ()
        return await self.http.exchange(
            [
                Request(method, f"/api/v1/{path}", body, () if path == "auth/login" else auth)
                for method, path, body in batch
            ]
        )


def _decoded(path: str, status: int, body: bytes) -> Any:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        if status != 200:
            raise DriverError(
                FailureKind.BAD_REPLY, f"Braiins OS API {path}: HTTP {status}"
            ) from None
        raise DriverError(FailureKind.BAD_REPLY, f"Braiins OS API {path}: not JSON") from None
    if status != 200:
        message = value.get("message") if isinstance(value, dict) else None
        said = f": {rig_text(message, 120)}" if message else ""
        raise DriverError(FailureKind.BAD_REPLY, f"Braiins OS API {path}: HTTP {status}{said}")
    return value


# ---- parsing (pure) -----------------------------------------------------------------------------


def _path(value: Any, where: str, *keys: str) -> Any:
    """``value[k1][k2]...``; DriverError naming the path when a step is missing."""
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise _bad(f"{where}.{'.'.join(keys[: i + 1])}")
        value = value[key]
    return value


def _opt_number(value: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class BosState:
    """What one read says: the status, paused or not, and the power target in force."""

    status: Status
    paused: bool
    target_w: int

    def mode(self, default_w: int | None) -> Mode:
        if self.paused:
            return Mode.SLEEP
        return Mode.NORMAL if self.target_w == default_w else Mode.LIMIT


@dataclass(frozen=True, slots=True)
class Tuner:
    """What ``performance/tuner-state`` says: the power target in force, and the tuner's
    error (as an observation error), if it is in error."""

    target_w: int
    errors: tuple[str, ...]


def fingerprint(details: dict[str, Any]) -> str:
    """Model and firmware as ``miner/details`` states them (``name|bos_version.current``)."""
    name = _path(details, "miner/details", "miner_identity", "name")
    version = _path(details, "miner/details", "bos_version", "current")
    return f"{rig_text(name, MAX_DETAIL)}|{rig_text(version, MAX_DETAIL)}"


def tuner_state(tuner: Any) -> Tuner:
    """Parse a ``performance/tuner-state`` reply."""
    target = _number(
        _path(
            tuner,
            "performance/tuner-state",
            "mode_state",
            "powertargetmodestate",
            "current_target",
            "watt",
        ),
        "performance/tuner-state...current_target.watt",
    )
    error = isinstance(tuner, dict) and tuner.get("overall_tuner_state") == TUNER_ERROR
    return Tuner(int(target), ("tuner: error",) if error else ())


def _board(raw: Any, i: int) -> tuple[Board, float | None, float | None]:
    """One ``miner/hw/hashboards`` entry: the board, its inlet and outlet temperatures."""
    board = _obj(raw, f"miner/hw/hashboards[{i}]")
    try:
        index = int(str(board.get("id", i + 1))) - 1
    except ValueError:
        raise _bad(f"miner/hw/hashboards[{i}].id", "not a number") from None
    ths = (
        _opt_number(board, "stats", "real_hashrate", "last_5s", "gigahash_per_second") or 0.0
    ) / 1000
    chips = _opt_number(board, "chips_count")
    enabled = board.get("enabled") is not False
    parsed = Board(
        index=index,
        hashrate_ths=ths,
        board_temp_c=_opt_number(board, "board_temp", "degree_c"),
        chip_temp_c=_opt_number(board, "highest_chip_temp", "temperature", "degree_c"),
        chips=int(chips) if chips is not None else None,
        alive=enabled and bool(chips),
    )
    inlet = _opt_number(board, "lowest_inlet_temp", "degree_c")
    return parsed, inlet, _opt_number(board, "highest_outlet_temp", "degree_c")


def bos_read(
    details: Any,
    stats: Any,
    hashboards: Any,
    tuner: Tuner,
    expected_boards: int | None = None,
) -> BosState:
    """Parse the three replies of one read (``miner/details``, ``miner/stats``,
    ``miner/hw/hashboards``) with the tuner's state as last read (:func:`tuner_state`)."""
    details = _obj(details, "miner/details")
    status_code = _path(details, "miner/details", "status")
    if status_code not in (
        STATUS_NOT_STARTED,
        STATUS_NORMAL,
        STATUS_PAUSED,
        STATUS_SUSPENDED,
        STATUS_RESTRICTED,
    ):
        raise _bad("miner/details.status", f"unknown status {rig_text(status_code, 20)!r}")
    hashrate = _number(
        _path(
            stats, "miner/stats", "miner_stats", "real_hashrate", "last_5s", "gigahash_per_second"
        ),
        "miner/stats.miner_stats.real_hashrate.last_5s",
    )
    watts = _opt_number(stats, "power_stats", "approximated_consumption", "watt")
    boards_raw = _path(hashboards, "miner/hw/hashboards", "hashboards")
    if not isinstance(boards_raw, list):
        raise _bad("miner/hw/hashboards.hashboards", "not a list")
    parsed = [_board(raw, i) for i, raw in enumerate(boards_raw)]
    boards = sorted((b for b, _, _ in parsed), key=lambda b: b.index)
    inlet = [t for _, t, _ in parsed if t is not None]
    outlet = [t for _, _, t in parsed if t is not None]
    chip_temps = [b.chip_temp_c for b in boards if b.chip_temp_c is not None and b.alive]
    uptime = _opt_number(details, "bosminer_uptime_s")
    paused = status_code == STATUS_PAUSED
    status = Status(
        hashrate_ths=hashrate / 1000,
        boards=tuple(pad_boards(boards, expected_boards)),
        max_chip_temp_c=max(chip_temps) if chip_temps else None,
        fan_rpm=(),
        uptime_s=int(uptime) if uptime is not None else None,
        power_w=watts if watts is not None and watts > 0 else None,
        power_limit_w=tuner.target_w,
        mode=Mode.SLEEP if paused else None,
        mining=status_code == STATUS_NORMAL and hashrate > 0,
        inlet_c=min(inlet) if inlet else None,
        outlet_c=max(outlet) if outlet else None,
        errors=tuner.errors,
        fingerprint=fingerprint(details),
    )
    return BosState(status, paused, tuner.target_w)


def target_constraints(reply: Any) -> tuple[int, int, int]:
    """(min, default, max) W from a ``configuration/constraints`` reply."""
    where = "configuration/constraints.tuner_constraints.power_target"
    values = [
        _number(
            _path(
                reply, "configuration/constraints", "tuner_constraints", "power_target", k, "watt"
            ),
            f"{where}.{k}",
        )
        for k in ("min", "default", "max")
    ]
    lo, default, hi = (int(v) for v in values)
    if not 0 < lo <= default <= hi:
        raise _bad(where, f"not min <= default <= max: {lo}, {default}, {hi}")
    return lo, default, hi


# ---- the driver ---------------------------------------------------------------------------------


class BraiinsOS(RigDriver):
    """Braiins OS 25.x on an Antminer: its REST API on one kept-alive connection."""

    name = "braiins-os"

    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.session = BosSession(identity.address, _password())
        extra = identity.extra
        try:
            self.default_w: int | None = int(extra[EXTRA_DEFAULT])
            self.range_w: tuple[int, int] | None = (int(extra[EXTRA_MIN]), int(extra[EXTRA_MAX]))
        except (KeyError, ValueError):
            self.default_w, self.range_w = None, None
        modes = {Mode.SLEEP, Mode.LIMIT} | ({Mode.NORMAL} if self.default_w else set())
        self._caps = Capabilities(
            modes=frozenset(modes),
            power_limit=True,
            power_limit_range_w=self.range_w,
            reports_power=True,
            notes=(
                "limit is Braiins OS's power target (the autotuner holds it); normal is the "
                "rig's default target"
                if self.default_w
                else "limit is Braiins OS's power target; the rig told no default target, so "
                "normal is not offered",
                "sleep is pause mining; no low/high: Braiins OS has no preset profiles",
                "transition timing: the stock figures (no Braiins OS measurements in hand)",
            ),
        )
        self.last: BosState | None = None
        self.tuner: Tuner | None = None  # the tuner's state as last read
        self.tuner_read_at = float("-inf")
        self.tuner_due = True  # read it with the next observation (first, after a command)
        # One connection, one exchange at a time: a command sent while a read is under way
        # (the MQTT bridge, say) waits for it rather than interleaving on the connection.
        self._busy = asyncio.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def observe(self, timeout_s: float, now: float) -> Observation:
        # The connection stays open for the next cycle (a failed call closes it; a server that
        # dropped it while idle gets the read again on a new one).
        async with self._busy:
            tuner_read = self.tuner is None or self._need_tuner(now)
            replies = await self.session.get_all(
                (*READS, TUNER) if tuner_read else READS, timeout_s
            )
        if tuner_read:
            self.tuner = tuner_state(replies[3])
            self.tuner_read_at, self.tuner_due = now, False
        assert self.tuner is not None
        details, stats, boards = replies[0], replies[1], replies[2]
        state = bos_read(details, stats, boards, self.tuner, self.expected_boards)
        self.check_fingerprint(state.status.fingerprint)
        self.last = state
        return status_observation(self, state.status, state.mode(self.default_w), now)

    def _need_tuner(self, now: float) -> bool:
        """Whether this read asks for the power target in force (module docstring)."""
        since = now - self.tuner_read_at
        if self.tuner_due or since >= TUNER_REFRESH_S:
            return True
        last, tuner = self.last, self.tuner
        if last is None or tuner is None:
            return True
        if since < TUNER_RECHECK_S or not last.status.mining:
            return False
        watts = last.status.power_w
        return watts is not None and abs(watts - tuner.target_w) > TUNER_STRAY * tuner.target_w

    async def apply(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        try:
            async with asyncio.timeout(timeout_s), self._busy:
                try:
                    return await self._send(mode, power_limit_w, timeout_s)
                finally:
                    self.tuner_due = True  # whatever was answered: look, don't trust
                    self.session.release()  # commands are rare: no connection kept for them
        except TimeoutError:
            raise DriverError(
                FailureKind.TIMEOUT, f"Braiins OS API: command not done within {timeout_s:.1f} s"
            ) from None

    async def _send(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        session = self.session
        if mode is Mode.SLEEP:
            await session.call("PUT", "actions/pause", None, timeout_s)
            return ApplyResult(True, mode, None, "paused; confirm by observation")
        watts = self.default_w if mode is Mode.NORMAL else power_limit_w
        assert watts is not None  # check_supported: limit has watts, normal a default
        reply = await session.call("PUT", "performance/power-target", {"watt": watts}, timeout_s)
        set_w = _opt_number(reply, "power_target", "watt")
        if set_w is not None and int(set_w) != watts:
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"Braiins OS set the power target to {int(set_w)} W, not {watts} W",
            )
        await session.call("PUT", "actions/resume", None, timeout_s)
        limit = watts if mode is Mode.LIMIT else None
        return ApplyResult(True, mode, limit, f"power target {watts} W; confirm by observation")


async def braiins_identity(
    address: str, model: str, extra: dict[str, str], timeout_s: float, port: int = WEB_PORT
) -> Identity | None:
    """A Braiins OS 25.x rig's identity: serial, MAC, firmware and fingerprint from
    ``miner/details``, the power target constraints (when the rig tells them) in ``extra``.

    None when the rig has no such REST API (Braiins OS before 25.07 runs ``BOSer`` too, with
    only gRPC and GraphQL: its ``/api/v1`` answers 404 or the web UI's page, a BAD_REPLY here);
    such a rig is left to pyasic. An unreachable or silent rig is an error, as anywhere.
    """
    session = BosSession(address, _password(), port)
    try:
        try:
            reply = await session.call("GET", "miner/details", None, timeout_s)
        except DriverError as exc:
            if exc.kind is FailureKind.BAD_REPLY:
                return None  # no /api/v1 here (an error status, a web page): not 25.07+
            raise
        details = _obj(reply, "miner/details")  # the API is there: its garbage is an error
        stamp = fingerprint(details)
        try:
            lo, default, hi = target_constraints(
                await session.call("GET", "configuration/constraints", None, timeout_s)
            )
        except DriverError:
            pass  # older firmware: no constraints; the driver then offers sleep and limit only
        else:
            extra = {**extra, EXTRA_MIN: str(lo), EXTRA_DEFAULT: str(default), EXTRA_MAX: str(hi)}
    finally:
        session.release()
    version = stamp.split("|", 1)[1]
    serial, mac = details.get("serial_number"), details.get("mac_address")
    return Identity(
        address,
        Make.BRAIINS,
        model,
        version,
        BraiinsOS.name,
        rig_text(serial, MAX_DETAIL) if isinstance(serial, str) and serial else None,
        rig_text(mac, MAX_DETAIL).upper() if isinstance(mac, str) and mac else None,
        {**extra, "fingerprint": stamp},
    )
