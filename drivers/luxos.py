"""LuxOS (Luxor's firmware for Antminers): its cgminer-compatible API on 4028, read and driven
directly.

Read: one request per cycle, ``summary+stats+power+config`` joined with ``+`` (LuxOS answers
joined reads, as pyasic's own ``get_config`` relies on): hashrate and boards from ``stats`` (the
stock Antminer layout), reported watts from ``power``, and from ``config`` the active profile
(``Profile``, ``ProfileStep``) and whether the rig is curtailed (``CurtailMode``).

Modes: ``sleep`` is ``curtail sleep``, and waking is ``curtail wakeup``. ``normal`` is the
``default`` profile (step 0); ``low`` is the profile below it whose frequency is nearest to
``policies.timing.MODE_FREQ["low"]`` x the default's, ``high`` the one above nearest to
``MODE_FREQ["high"]`` x it (read from the rig's ``profiles`` list). Observed, step 0 is normal, a
negative step low and a positive one high. LuxOS has no power target (``power`` only reports
watts, ``atm`` moves profiles by temperature), so ``limit`` is not offered. ATM is switched off
before a profile change (LuxOS refuses ``profileset`` while it is on) and left off, since it
would move the rig away from the profile asked for. Writes take a session: the open one if
there is one (pyasic's, say), else one opened by ``logon`` and closed by ``logoff`` afterwards.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import Any

from drivers.base import ApplyResult, RigDriver
from drivers.parse import Status, antminer_stats, cgminer_section, refused
from drivers.stock import RPC_PORT, status_observation
from drivers.transport import DriverError, decode, request
from policies import timing
from policies.values import Capabilities, FailureKind, Mode, Observation, rig_text

READ = b'{"command":"summary+stats+power+config"}'


@dataclass(frozen=True, slots=True)
class LuxState:
    """What one LuxOS read says: the status, the active profile and its step, curtailment."""

    status: Status
    profile: str
    step: int
    curtailed: bool
    atm: bool

    @property
    def mode(self) -> Mode:
        if self.curtailed:
            return Mode.SLEEP
        return Mode.NORMAL if self.step == 0 else Mode.LOW if self.step < 0 else Mode.HIGH


def luxos_read(reply: dict[str, Any], expected_boards: int | None = None) -> LuxState:
    """Parse a ``summary+stats+power+config`` reply (or a reply holding those sections)."""
    status = antminer_stats(reply, expected_boards)
    power = cgminer_section(reply, "POWER")
    config = cgminer_section(reply, "CONFIG")
    if not power or not config:
        raise DriverError(FailureKind.BAD_REPLY, "POWER/CONFIG: empty")
    watts = power[0].get("Watts")
    power_w = (
        float(watts)
        if isinstance(watts, int | float) and not isinstance(watts, bool) and watts > 0
        else None
    )
    conf = config[0]
    try:
        step = int(str(conf.get("ProfileStep", "0")))
    except ValueError:
        raise DriverError(
            FailureKind.BAD_REPLY, f"CONFIG.ProfileStep: not a step: {conf.get('ProfileStep')!r}"
        ) from None
    curtailed = str(conf.get("CurtailMode", "None")) not in ("None", "")
    mode = Mode.SLEEP if curtailed else None
    status = replace(status, power_w=power_w, mode=mode, mining=status.hashrate_ths > 0)
    return LuxState(
        status,
        rig_text(conf.get("Profile", "")),
        step,
        curtailed,
        conf.get("IsAtmEnabled") is True,
    )


def profile_for(profiles: dict[str, Any], mode: Mode) -> str:
    """The profile name that is ``mode`` (low / normal / high) on a rig with these profiles."""
    table = cgminer_section(profiles, "PROFILES")
    default = next((p for p in table if str(p.get("Step")) == "0"), None)
    if default is None:
        raise DriverError(FailureKind.BAD_REPLY, "PROFILES: no default profile (step 0)")
    if mode is Mode.NORMAL:
        return str(default["Profile Name"])
    goal = float(default["Frequency"]) * timing.MODE_FREQ[mode.value]
    below = mode is Mode.LOW
    side = [p for p in table if (int(str(p.get("Step", 0))) < 0) == below and str(p["Step"]) != "0"]
    if not side:
        raise DriverError(FailureKind.BAD_REPLY, f"PROFILES: none for {mode.value}")
    return str(min(side, key=lambda p: abs(float(p["Frequency"]) - goal))["Profile Name"])


class LuxOS(RigDriver):
    """LuxOS on an Antminer: one raw read per cycle, commands through its session API."""

    name = "luxos"
    _CAPS = Capabilities(
        modes=frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH}),
        reports_power=True,
        notes=(
            "low/normal/high are LuxOS profiles (default step 0, and the nearest below/above)",
            "no power target: LuxOS has profiles, not a power limit",
        ),
    )

    def __init__(self, identity: Any) -> None:
        super().__init__(identity)
        self.profiles: dict[str, Any] | None = None
        self.last: LuxState | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS

    async def _rpc(self, command: str, timeout_s: float, *args: str) -> dict[str, Any]:
        body: dict[str, str] = {"command": command}
        if args:
            body["parameter"] = ",".join(args)
        reply = decode(
            await request(self.identity.address, RPC_PORT, json.dumps(body).encode(), timeout_s)
        )
        refusal = refused(reply)
        if refusal is not None:
            raise DriverError(FailureKind.BAD_REPLY, f"{command}: rig answered {rig_text(refusal)}")
        return reply

    async def observe(self, timeout_s: float, now: float) -> Observation:
        raw = await request(self.identity.address, RPC_PORT, READ, timeout_s)
        state = luxos_read(decode(raw), self.expected_boards)
        self.check_fingerprint(state.status.fingerprint)
        self.last = state
        return status_observation(self, state.status, state.mode, now)

    async def apply(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        session = await self._rpc("session", timeout_s)
        token = str(cgminer_section(session, "SESSION")[0].get("SessionID", ""))
        opened = not token
        if opened:
            logon = await self._rpc("logon", timeout_s)
            token = str(cgminer_section(logon, "SESSION")[0].get("SessionID", ""))
        try:
            if mode is Mode.SLEEP:
                await self._rpc("curtail", timeout_s, token, "sleep")
            else:
                if self.profiles is None:
                    self.profiles = await self._rpc("profiles", timeout_s)
                target = profile_for(self.profiles, mode)
                config = cgminer_section(await self._rpc("config", timeout_s), "CONFIG")[0]
                if config.get("IsAtmEnabled") is True:
                    await self._rpc("atmset", timeout_s, token, "enabled=false")
                if config.get("Profile") != target:
                    await self._rpc("profileset", timeout_s, token, target)
                if str(config.get("CurtailMode", "None")) not in ("None", ""):
                    await self._rpc("curtail", timeout_s, token, "wakeup")
        finally:
            if opened:
                with contextlib.suppress(DriverError):
                    await self._rpc("logoff", timeout_s, token)
        return ApplyResult(True, mode, None, "sent; confirm by observation")
