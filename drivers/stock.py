"""Adapters for stock Antminer and stock Whatsminer (API v2 and v3) firmware.

Reads take one raw request per cycle (``drivers.transport``), decoded and checked by the
parsers in ``drivers.parse``; what a cycle does not need (serials, pools, configuration) is read
rarely or after a change. Commands are pyasic's (its configuration format for stock Antminers,
its encrypted btminer API for Whatsminer v2, re-implemented byte for byte in ``drivers.btminer``
with the token kept per rig), but an OK from a rig is never taken as done: the driver re-reads
the authoritative setting on the next observation, and the caller confirms by observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from typing import Any, ClassVar

from pyasic import settings as pyasic_settings
from pyasic.config import MinerConfig, MiningModeConfig
from pyasic.errors import APIError

from drivers import btminer, catalogue, webdigest
from drivers.base import ApplyResult, RigDriver
from drivers.parse import (
    Status,
    antminer_stats,
    plausible,
    whatsminer_summary,
    whatsminer_v3_status,
)
from drivers.pyasic_miner import miner_for
from drivers.transport import (
    BTMINER_STOPPED,
    DriverError,
    decode,
    decode_framed,
    request,
)
from policies.values import (
    Capabilities,
    FailureKind,
    Identity,
    Mode,
    Observation,
    PowerSource,
    rig_text,
)

RPC_PORT = 4028
V3_PORT = 4433
CONF_REFRESH_S = 600.0  # re-read a stock Antminer's configured mode at least this often
CONF_RECHECK_S = 60.0  # ... and at most this often when its hashrate disagrees with the mode


def _power(
    entry: catalogue.ModelEntry | None,
    status: Status,
    mode: Mode,
) -> tuple[float | None, PowerSource | None]:
    if status.power_w is not None:
        return status.power_w, PowerSource.REPORTED
    if entry is None:
        return None, None
    estimate = catalogue.estimate_power_w(entry, mode, status.hashrate_ths, status.power_limit_w)
    return estimate.power_w, estimate.source


def status_observation(driver: RigDriver, status: Status, mode: Mode, now: float) -> Observation:
    status = plausible(status, driver.bounds)  # raises IMPLAUSIBLE for an impossible hashrate
    identity = driver.identity
    power, source = _power(driver.entry, status, mode)
    return Observation(
        identity=identity,
        observed_at=now,
        hashrate_ths=status.hashrate_ths,
        power_w=power,
        power_source=source,
        mode=mode,
        mining=bool(status.mining),
        boards=status.boards,
        max_chip_temp_c=status.max_chip_temp_c,
        inlet_c=status.inlet_c,
        outlet_c=status.outlet_c,
        ambient_c=status.ambient_c,
        fan_rpm=status.fan_rpm,
        power_limit_w=status.power_limit_w,
        errors=status.errors,
        uptime_s=status.uptime_s,
        model_unknown=driver.entry is None,
    )


async def pyasic_call(what: str, call: Any, timeout_s: float) -> Any:
    """Run a pyasic coroutine under our deadline; its own socket timeout is 100 s."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError:
        raise DriverError(
            FailureKind.TIMEOUT, f"{what}: no answer within {timeout_s:.1f} s"
        ) from None
    except APIError as exc:
        raise DriverError(FailureKind.BAD_REPLY, f"{what}: {exc}") from None
    except OSError as exc:
        raise DriverError(FailureKind.UNREACHABLE, f"{what}: {exc}") from None
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # pyasic trips over replies that are not what the firmware sends (garbage, broken
        # JSON, the wrong shape): that is the rig's bad reply, not a bug of ours.
        raise DriverError(
            FailureKind.BAD_REPLY, f"{what}: the rig's reply is malformed ({type(exc).__name__})"
        ) from None


def _web_errors(summary: dict[str, Any]) -> tuple[str, ...]:
    """Error messages of a stock Antminer web summary, as pyasic reads them (status != "s")."""
    try:
        items = summary["SUMMARY"][0]["status"]
    except (LookupError, TypeError):
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(
        rig_text(i.get("msg") or i.get("code"))
        for i in items
        if isinstance(i, dict) and i.get("status") not in ("s", None)
    )


def _web_watts(stats: dict[str, Any]) -> float | None:
    """The wall power newer stock firmware (2023+) reports in its web ``stats``
    (``STATS[0].watt``); None when it does not."""
    try:
        watt = stats["STATS"][0]["watt"]
    except (LookupError, TypeError):
        return None
    if isinstance(watt, bool) or not isinstance(watt, int | float) or not 0 < watt < 100_000:
        return None
    return float(watt)


class AntminerStock(RigDriver):
    """Stock Bitmain firmware: cgminer RPC for status, the web UI for configuration.

    The RPC says nothing about the configured mode, and the web UI costs HTTP requests with
    digest auth, so the mode is read from ``get_miner_conf`` only at first, after a command,
    every CONF_REFRESH_S, and when the hashrate contradicts the known mode. Older stock
    firmware reports no watts: power is estimated from the model, mode and measured hashrate.
    Newer firmware reports them in its web ``stats`` (seen with the configuration): on those
    rigs each observation also reads ``stats.cgi`` (one request) and the reported watts win.
    """

    name = "antminer-stock"
    _CAPS = Capabilities(
        modes=frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL}),
        reports_power=False,
        notes=(
            "stock firmware reports no power: estimated from model, mode and hashrate",
            "some stock firmwares accept a mode change and ignore it: confirm by observation",
        ),
    )
    _FROM_PYASIC: ClassVar[dict[str, Mode]] = {
        "normal": Mode.NORMAL,
        "sleep": Mode.SLEEP,
        "low": Mode.LOW,
    }

    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.known_mode: Mode | None = None
        self.web_errors: tuple[str, ...] = ()
        self.alive_at_conf: tuple[bool, ...] = ()
        self.conf_read_at = float("-inf")
        self.conf_due = True
        self.web: webdigest.WebSession | None = None
        self.reports_watts = False  # the firmware's web stats carry "watt" (seen at a conf read)
        self.watts: float | None = None
        self.web_port = webdigest.WEB_PORT
        self.rpc_port = RPC_PORT

    def _web(self) -> webdigest.WebSession:
        """The rig's web session (one connection per burst, the digest challenge kept)."""
        password = str(pyasic_settings.get("default_antminer_web_password", "root"))
        if self.web is None or self.web.password != password:
            self.web = webdigest.WebSession(self.identity.address, "root", password, self.web_port)
        return self.web

    _CAPS_WATTS = replace(
        _CAPS,
        reports_power=True,
        notes=(
            "this firmware reports its power in the web stats",
            *_CAPS.notes[1:],
        ),
    )

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS_WATTS if self.reports_watts else self._CAPS

    async def observe(self, timeout_s: float, now: float) -> Observation:
        deadline = time.monotonic() + timeout_s
        # A web read known to be due before the status arrives (the configured mode: first
        # read, after a command, every CONF_REFRESH_S; or this firmware's reported watts) runs
        # beside the RPC read, each within the deadline: on a slow link (or a slow control
        # board) the two one after the other would not fit, and the mode would never be read.
        early = self._conf_due_now(now)
        web: asyncio.Task[tuple[str, ...]] | None = None
        if early or self.reports_watts:
            read = self._try_conf(deadline, now) if early else self._read_watts(deadline)
            web = asyncio.ensure_future(read)
        try:
            reply = await request(
                self.identity.address, self.rpc_port, b'{"command":"stats"}', timeout_s
            )
            status = antminer_stats(decode(reply), self.expected_boards)
            self.check_fingerprint(status.fingerprint)
            note = await web if web is not None else ()
        finally:
            if web is not None and not web.done():
                web.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await web
        if early and not note:
            self.alive_at_conf = self._alive_boards(status)
        elif not early and self._status_needs_conf(status, now):
            note = await self._try_conf(deadline, now)
            if not note:
                self.alive_at_conf = self._alive_boards(status)
        if self.reports_watts and self.watts is not None:
            status = replace(status, power_w=self.watts)
        obs = status_observation(self, status, self.known_mode or Mode.UNKNOWN, now)
        errors = self.web_errors + note
        return replace(obs, errors=obs.errors + errors) if errors else obs

    async def _try_conf(self, deadline: float, now: float) -> tuple[str, ...]:
        """Read the configured mode within ``deadline``; a note saying why it was not, or ()."""
        try:
            left = deadline - time.monotonic()
            if left <= 0.05:
                raise DriverError(FailureKind.TIMEOUT, "no time left in the deadline")
            await self._read_conf(left, now)
        except DriverError as exc:
            # The status read succeeds without it: the mode stays as last known (or unknown).
            return (f"mode not confirmed: get_miner_conf {exc.kind.value}: {exc.detail}",)
        return ()

    def _conf_due_now(self, now: float) -> bool:
        """The configured mode must be read whatever the status says."""
        return self.conf_due or self.known_mode is None or now - self.conf_read_at >= CONF_REFRESH_S

    def _status_needs_conf(self, status: Status, now: float) -> bool:
        """The status disagrees with the mode last read (hashing in sleep, or the reverse, or
        boards that changed): read it again, at most every CONF_RECHECK_S."""
        contradicts = (status.hashrate_ths > 0) == (self.known_mode is Mode.SLEEP)
        boards_changed = self._alive_boards(status) != self.alive_at_conf
        return (contradicts or boards_changed) and now - self.conf_read_at >= CONF_RECHECK_S

    @staticmethod
    def _alive_boards(status: Status) -> tuple[bool, ...]:
        return tuple(b.alive for b in status.boards)

    async def _read_conf(self, timeout_s: float, now: float) -> None:
        web = self._web()
        try:
            await self._read_conf_on(web, timeout_s, now)
        finally:
            await web.release()

    async def _read_conf_on(self, web: webdigest.WebSession, timeout_s: float, now: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            conf = await web.get_json("/cgi-bin/get_miner_conf.cgi", timeout_s)
        except DriverError as exc:
            raise DriverError(exc.kind, f"get_miner_conf: {exc.detail}") from None
        if "bitmain-work-mode" not in conf:
            raise DriverError(FailureKind.BAD_REPLY, "get_miner_conf: no bitmain-work-mode")
        mode = MiningModeConfig.from_am_modern(conf).mode
        self.known_mode = self._FROM_PYASIC.get(str(mode), Mode.UNKNOWN)
        self.conf_read_at, self.conf_due = now, False
        # Stock firmware reports its error codes only in the web summary: read them with the
        # configuration (first read, after a command, when the hashrate or boards change).
        try:
            summary = await web.get_json(
                "/cgi-bin/summary.cgi", max(0.05, deadline - time.monotonic())
            )
        except DriverError:
            return  # the mode is what matters; errors are refreshed on the next read
        self.web_errors = _web_errors(summary)
        left = deadline - time.monotonic()
        if left > 0.05:
            try:
                stats = await web.get_json("/cgi-bin/stats.cgi", left)
            except DriverError:
                self.watts = None
                return
            self.watts = _web_watts(stats)
            self.reports_watts = self.watts is not None

    async def _read_watts(self, deadline: float) -> tuple[str, ...]:
        """This cycle's reported watts (web ``stats``); a note when they cannot be read."""
        web = self._web()
        try:
            left = deadline - time.monotonic()
            if left <= 0.05:
                raise DriverError(FailureKind.TIMEOUT, "no time left in the deadline")
            self.watts = _web_watts(await web.get_json("/cgi-bin/stats.cgi", left))
        except DriverError as exc:
            self.watts = None
            return (f"power not read: stats {exc.kind.value}: {exc.detail}",)
        finally:
            await web.release()
        return () if self.watts is not None else ("power not read: stats without watt",)

    async def apply(
        self,
        mode: Mode,
        power_limit_w: int | None,
        timeout_s: float,
    ) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        wanted = {
            Mode.SLEEP: MiningModeConfig.sleep,
            Mode.LOW: MiningModeConfig.low,
            Mode.NORMAL: MiningModeConfig.normal,
        }[mode]()
        # What pyasic's get_config + send_config do, over the rig's web session (one
        # connection, the digest challenge remembered): pyasic still knows the format both ways.
        web = self._web()
        deadline = time.monotonic() + timeout_s
        try:
            conf = await web.get_json("/cgi-bin/get_miner_conf.cgi", timeout_s)
            config = MinerConfig.from_am_modern(conf)
            config.mining_mode = wanted
            reply = await web.post_json(
                "/cgi-bin/set_miner_conf.cgi",
                config.as_am_modern(),
                max(0.1, deadline - time.monotonic()),
            )
        except DriverError as exc:
            raise DriverError(exc.kind, f"set mode {mode.value}: {exc.detail}") from None
        finally:
            await web.release()
        self.conf_due = True  # an OK from stock firmware is no proof: look, don't trust
        return ApplyResult(
            True,
            mode,
            None,
            f"set_miner_conf answered {rig_text(repr(reply.get('msg')))}; confirm by observation",
        )


KEPT_LIMIT = (
    "a power limit sits on top of the power mode and stays when a power mode is set after it "
    "(the firmware's; no documented way to lift it is known): normal is confirmed by the power "
    "mode, limit by the reported power limit"
)


class WhatsminerV2(RigDriver):
    """Stock MicroBT firmware, btminer API v2: ``summary+devs`` every cycle.

    While mining is off btminer itself is stopped and its cgminer sections are refused;
    ``status`` then says whether the rig was told to stop (``mineroff``).
    """

    name = "whatsminer-v2"
    _CAPS = Capabilities(
        modes=frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT}),
        power_limit=True,
        power_limit_range_w=(500, 6000),
        reports_power=True,
        notes=(
            'writes need the API unlocked on the rig ("can\'t access write cmd" otherwise)',
            KEPT_LIMIT,
        ),
    )

    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.api = btminer.BtminerSession(identity.address, RPC_PORT)

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS

    async def observe(self, timeout_s: float, now: float) -> Observation:
        deadline = time.monotonic() + timeout_s
        raw = await request(
            self.identity.address, RPC_PORT, b'{"command":"summary+devs"}', timeout_s
        )
        if raw.startswith(BTMINER_STOPPED):
            return await self._stopped(deadline, now)
        status = whatsminer_summary(decode(raw), self.expected_boards)
        self.check_fingerprint(status.fingerprint)
        mode = status.mode or Mode.NORMAL
        return status_observation(self, status, mode, now)

    async def _stopped(self, deadline: float, now: float) -> Observation:
        left = max(0.05, deadline - time.monotonic())
        reply = decode(
            await request(self.identity.address, RPC_PORT, b'{"command":"status"}', left)
        )
        msg = reply.get("Msg")
        if not isinstance(msg, dict) or "mineroff" not in msg:
            raise DriverError(FailureKind.BAD_REPLY, "status: no Msg.mineroff")
        off = str(msg["mineroff"]).lower() == "true"
        status = Status(
            hashrate_ths=0.0,
            boards=(),
            max_chip_temp_c=None,
            fan_rpm=(),
            uptime_s=None,
            mining=False,
            errors=() if off else ("btminer not running",),
        )
        return status_observation(self, status, Mode.SLEEP if off else Mode.UNKNOWN, now)

    async def apply(
        self,
        mode: Mode,
        power_limit_w: int | None,
        timeout_s: float,
    ) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        # pyasic's commands, over drivers.btminer: the same encrypted frames, the token kept
        # for its validity and fetched again when the rig has forgotten it.
        password = str(pyasic_settings.get("default_whatsminer_rpc_password", "admin"))
        deadline = time.monotonic() + timeout_s
        steps: list[tuple[str, dict[str, str]]]
        if mode is Mode.SLEEP:
            steps = [("power_off", {"respbefore": "true"})]
        elif mode is Mode.LIMIT:
            assert power_limit_w is not None
            steps = [("adjust_power_limit", {"power_limit": str(power_limit_w)}), ("power_on", {})]
        else:
            setter = {
                Mode.LOW: "set_low_power",
                Mode.NORMAL: "set_normal_power",
                Mode.HIGH: "set_high_power",
            }[mode]
            steps = [(setter, {}), ("power_on", {})]
        for cmd, params in steps:
            try:
                await self.api.command(cmd, params, password, deadline - time.monotonic())
            except DriverError as exc:
                raise DriverError(exc.kind, f"set mode {mode.value}: {exc.detail}") from None
        return ApplyResult(True, mode, power_limit_w, "sent; confirm by observation")


class WhatsminerV3(RigDriver):
    """MicroBT firmware after 2024-11, btminer API v3 on 4433.

    pyasic's v3 ``send_config`` raises and its ``is_mining`` is always True: this driver uses
    neither; mining is what the hashrate says, and low/high are not offered.
    """

    name = "whatsminer-v3"
    _CAPS = Capabilities(
        modes=frozenset({Mode.SLEEP, Mode.NORMAL, Mode.LIMIT}),
        power_limit=True,
        power_limit_range_w=(500, 6000),
        reports_power=True,
        notes=(
            "low/high modes are not offered: pyasic's API v3 send_config is broken",
            KEPT_LIMIT,
        ),
    )
    _REQUEST = json.dumps({"cmd": "get.miner.status", "param": "summary+edevs"}).encode()

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS

    async def observe(self, timeout_s: float, now: float) -> Observation:
        raw = await request(self.identity.address, V3_PORT, self._REQUEST, timeout_s, framed=True)
        status = whatsminer_v3_status(decode_framed(raw), self.expected_boards)
        if status.mining:
            mode = Mode.NORMAL
        elif status.power_w is not None and status.power_w < 200:
            mode = Mode.SLEEP
        else:
            mode = Mode.UNKNOWN  # drawing power but not hashing: booting or faulted
        return status_observation(self, status, mode, now)

    async def apply(
        self,
        mode: Mode,
        power_limit_w: int | None,
        timeout_s: float,
    ) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        rpc = miner_for(self.identity).rpc

        async def send() -> Any:
            if mode is Mode.SLEEP:
                return await rpc.set_miner_service("stop")
            if mode is Mode.LIMIT:
                assert power_limit_w is not None
                await rpc.set_miner_power_limit(power_limit_w)
            return await rpc.set_miner_service("start")

        reply = await pyasic_call(f"set mode {mode.value}", send(), timeout_s)
        if isinstance(reply, dict) and reply.get("code") not in (0, None):
            raise DriverError(FailureKind.BAD_REPLY, f"rig refused: {rig_text(reply.get('msg'))}")
        return ApplyResult(True, mode, power_limit_w, "sent; confirm by observation")
