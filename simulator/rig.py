"""One simulated rig: identity, firmware settings, physics, faults and request counters.

Protocol handlers (``antminer.py``, ``whatsminer.py``) read the rig through :meth:`SimRig.snapshot`
and change it only through the setters here, so both makes share one physics and the control
API sees exactly what a client caused.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from simulator.models import ModelSpec
from simulator.physics import (
    CHIP_TARGET_C,
    COLD_BOOT_S,
    FAN_MAX_RPM,
    Mode,
    Phase,
    PhysState,
    advance,
    target_freq,
)

REBOOT_S = COLD_BOOT_S  # simulated seconds a rebooting (cold-booting) rig is unreachable
POWER_FACTOR_RANGE = (0.5, 2.0)  # what set_power_factor takes


HTTP_FRAMINGS = ("chunked", "length", "close", "http10")
"""How a web UI frames a CGI reply: ``chunked`` (lighttpd, the default: chunked on HTTP/1.1,
close-delimited on HTTP/1.0), ``length`` (Content-Length), ``close`` (HTTP/1.1 without a
length, then close), ``http10`` (an HTTP/1.0 status line, no length, then close)."""


class Fault(StrEnum):
    """Faults a rig can be given at start or at run time (see docs/simulator.md)."""

    OFFLINE = "offline"  # nothing answers: connections are accepted and never answered, and
    # new connections to the rig's ports hang like a host that is down
    REFUSE = "refuse"  # every connection is reset at once
    HANG = "hang"  # accepts, reads the request, never answers
    SLOW = "slow"  # answers after ``delay_s`` wall seconds
    MALFORMED = "malformed"  # answers with broken JSON
    RESET = "reset"  # reads the request, then resets the connection
    IGNORE_WRITES = "ignore_writes"  # accepts control commands, reports success, does nothing
    WRITES_LOCKED = (
        "writes_locked"  # Whatsminer: privileged API disabled ("can't access write cmd")
    )
    OVERHEAT = "overheat"  # blocked airflow: heat the fans cannot remove (``extra_c``)
    DEAD_BOARD = "dead_board"  # hashboard ``board`` (0-based) is dead
    HTTP_FRAMING = "http_framing"  # web UI: CGI replies framed as ``framing`` says, not as
    # lighttpd does (see simulator.httpwire.FRAMINGS)


class SimClock:
    """Simulated time: wall time since start multiplied by ``scale``."""

    def __init__(self, scale: float = 1.0, start: float | None = None) -> None:
        self.scale = scale
        self._wall0 = time.monotonic()
        self._sim0 = 0.0 if start is None else start

    def now(self) -> float:
        return self._sim0 + (time.monotonic() - self._wall0) * self.scale

    def set_scale(self, scale: float) -> None:
        now = self.now()
        self._wall0, self._sim0, self.scale = time.monotonic(), now, scale

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` of simulated time ahead at once (time never goes back)."""
        self._sim0 += seconds


@dataclass(slots=True)
class Counters:
    """Requests this rig has seen, reads and writes apart."""

    reads: int = 0
    writes: int = 0
    rejected: int = 0  # auth failures, locked writes, unknown commands
    connections: int = 0
    by_command: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "writes": self.writes,
            "rejected": self.rejected,
            "connections": self.connections,
            "by_command": dict(self.by_command),
        }


@dataclass(frozen=True, slots=True)
class BoardReading:
    index: int
    hashrate_ths: float
    chip_temp_c: float
    board_temp_c: float
    chips: int
    freq_mhz: float
    alive: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a protocol handler may report, at one instant."""

    t: float
    mode: Mode
    phase: Phase
    hashrate_ths: float
    power_w: float
    power_limit_w: int
    chip_temp_c: float
    inlet_c: float
    outlet_c: float
    fan_rpm: int
    boards: tuple[BoardReading, ...]
    uptime_s: int
    errors: tuple[int, ...]

    @property
    def mining(self) -> bool:
        return self.phase in (Phase.RUNNING, Phase.BOOTING)


class SimRig:
    """A simulated rig reachable at ``address``."""

    def __init__(
        self,
        address: str,
        spec: ModelSpec,
        clock: SimClock,
        index: int,
        firmware: str | None = None,
        ambient_c: float = 25.0,
    ) -> None:
        self.address = address
        self.spec = spec
        self.clock = clock
        self.firmware = firmware or spec.firmware
        digest = hashlib.sha256(f"{spec.key}/{address}/{index}".encode()).digest()
        self._seed = int.from_bytes(digest[:4], "little")
        prefix = "HTM3" if spec.make == "whatsminer" else "JYZZ"
        self.serial = f"{prefix}{digest[4:10].hex().upper()}"
        self.mac = ":".join(f"{b:02X}" for b in (0x02, *digest[10:15]))
        self.hostname = "WhatsMiner" if spec.make == "whatsminer" else "Antminer"
        self.web_password = "root"  # stock Antminer web UI default
        self.api_password = "admin"  # stock Whatsminer API default
        self.mode = Mode.NORMAL
        self.power_limit_w: int | None = None
        self.freq_pct = 0
        self.faults: dict[Fault, dict[str, Any]] = {}
        self.counters = Counters()
        # What the make's firmware keeps that the physics does not (pools, tokens, LED...):
        # owned by that make's handler module, dropped by factory_reset.
        self.firmware_state: object | None = None
        now = clock.now()
        self.boot_t = now
        self.offline_until = -1.0
        self.powered = True
        """False while every outlet feeding the rig is off (simulator/switches.py)."""
        self.outlets: tuple[Any, ...] = ()
        """The switch outlets feeding the rig (``simulator.switches.SimOutlet``)."""
        self.phys = PhysState(t=now, ambient_c=ambient_c)
        # Start in steady state at normal mode so a fresh fleet looks like a running site.
        self.phys.chip_temp_c = CHIP_TARGET_C + (self._seed % 7) - 3.0

    # ---- faults -----------------------------------------------------------------------------
    def set_fault(self, fault: Fault, params: dict[str, Any] | None = None) -> None:
        """Give the rig ``fault`` (replacing its parameters if it had it already)."""
        params = dict(params or {})
        if fault is Fault.DEAD_BOARD:
            board = int(params.get("board", 0))
            if not 0 <= board < self.spec.boards:
                raise ValueError(f"board must be 0..{self.spec.boards - 1}, got {board}")
            params["board"] = board
        if fault is Fault.OVERHEAT:
            params["extra_c"] = float(params.get("extra_c", 45.0))
        if fault is Fault.SLOW:
            params["delay_s"] = float(params.get("delay_s", 5.0))
        if fault is Fault.HTTP_FRAMING:
            framing = str(params.get("framing", "length"))
            if framing not in HTTP_FRAMINGS:
                raise ValueError(
                    f"framing must be one of {', '.join(HTTP_FRAMINGS)}, got {framing!r}"
                )
            params["framing"] = framing
        self._sync()
        self.faults[fault] = params
        self._apply_fault_physics()

    def clear_fault(self, fault: Fault) -> None:
        self._sync()
        self.faults.pop(fault, None)
        self._apply_fault_physics()

    def clear_faults(self) -> None:
        self._sync()
        self.faults.clear()
        self._apply_fault_physics()

    def _apply_fault_physics(self) -> None:
        dead = self.faults.get(Fault.DEAD_BOARD)
        self.phys.dead_boards = {int(dead["board"])} if dead else set()
        hot = self.faults.get(Fault.OVERHEAT)
        self.phys.thermal_extra_c = float(hot["extra_c"]) if hot else 0.0

    def has(self, fault: Fault) -> bool:
        return fault in self.faults

    def reachable(self) -> bool:
        """False while the rig is offline or rebooting."""
        return (
            self.powered
            and Fault.OFFLINE not in self.faults
            and self.clock.now() >= self.offline_until
        )

    # ---- control (what protocol handlers call on a successful write) -------------------------
    def set_mode(self, mode: Mode) -> bool:
        """Apply ``mode``; returns False when the rig ignores writes (it still answers OK)."""
        if Fault.IGNORE_WRITES in self.faults:
            return False
        self._sync()
        self.mode = mode
        return True

    def set_power_limit(self, watts: int | None) -> bool:
        if Fault.IGNORE_WRITES in self.faults:
            return False
        self._sync()
        self.power_limit_w = watts
        return True

    def set_freq_pct(self, percent: int) -> bool:
        if Fault.IGNORE_WRITES in self.faults:
            return False
        self._sync()
        self.freq_pct = max(-100, min(100, percent))
        return True

    def reboot(self) -> None:
        """Go away for REBOOT_S simulated seconds, then come back in the default mode."""
        self._sync()
        now = self.clock.now()
        self.offline_until = now + REBOOT_S
        self.boot_t = self.offline_until
        self.mode, self.power_limit_w, self.freq_pct = Mode.NORMAL, None, 0
        self.phys.phase, self.phys.freq, self.phys.boot_left_s = Phase.BOOTING, 0.0, REBOOT_S

    def power_off(self) -> None:
        """The last outlet feeding the rig went off: it stops answering and draws nothing."""
        if not self.powered:
            return
        self._sync()
        self.powered = False

    def power_on(self) -> None:
        """An outlet came back on: a cold boot (control board first, then the hashboards), in
        the firmware's default mode, like :meth:`reboot`."""
        if self.powered:
            return
        self._sync()
        self.powered = True
        self.faults.pop(Fault.HANG, None)  # a hung firmware does not survive a cold boot
        self.reboot()

    def outlet_power_w(self) -> float:
        """What the rig draws at the wall now: nothing unpowered, 18 W asleep."""
        return self.snapshot().power_w if self.powered else 0.0

    def set_power_factor(self, factor: float) -> None:
        """Draw ``factor`` times the model's power while hashing, for the same hashrate: a rig
        less efficient than its model (``1.15``: 15 % more J/TH) or a better one. ValueError
        outside [0.5, 2]."""
        if not POWER_FACTOR_RANGE[0] <= factor <= POWER_FACTOR_RANGE[1]:
            low, high = POWER_FACTOR_RANGE
            raise ValueError(f"power_factor must be between {low} and {high}, got {factor}")
        self._sync()
        self.phys.power_factor = factor

    def set_ambient(self, ambient_c: float) -> None:
        """Change the air temperature at the rig's inlet."""
        self._sync()
        self.phys.ambient_c = ambient_c

    def factory_reset(self) -> None:
        """Back to a freshly started rig: normal mode, steady state, no faults, counters zeroed."""
        self.faults.clear()
        self.mode, self.power_limit_w, self.freq_pct = Mode.NORMAL, None, 0
        now = self.clock.now()
        self.boot_t, self.offline_until = now, -1.0
        self.powered = True
        self.phys = PhysState(t=now, ambient_c=self.phys.ambient_c)
        self.phys.chip_temp_c = CHIP_TARGET_C + (self._seed % 7) - 3.0
        self.counters = Counters()
        self.firmware_state = None

    # ---- observation --------------------------------------------------------------------------
    def _target(self) -> float:
        if not self.powered:
            return 0.0
        working = self.spec.boards - len(self.phys.dead_boards)
        return target_freq(self.mode, self.power_limit_w, self.freq_pct, self.spec, working)

    def _sync(self) -> PhysState:
        now = self.clock.now()
        if now > self.phys.t:
            advance(self.phys, self.spec, self._target(), now)
        return self.phys

    def default_power_limit(self) -> int:
        """What stock firmware reports as its power limit when none was set."""
        return int(round(self.spec.power_w * 1.1 / 100.0) * 100)

    def snapshot(self) -> Snapshot:
        """The rig's physical state now, as its sensors would report it."""
        p = self._sync()
        spec = self.spec
        jitter = 1.0 + ((self._seed ^ int(p.t // 5)) * 2654435761 % 2001 - 1000) / 100000.0
        hashrate = p.hashrate_ths * jitter if p.hashrate_ths > 0 else 0.0
        boards: list[BoardReading] = []
        working = spec.boards - len(p.dead_boards)
        for i in range(spec.boards):
            alive = i not in p.dead_boards
            skew = 1.0 + (((self._seed >> (i * 3)) & 7) - 3.5) / 200.0
            share = hashrate / working * skew if alive and working else 0.0
            chip = p.chip_temp_c + (((self._seed >> (i * 5)) & 3) - 1.5) if alive else p.ambient_c
            boards.append(
                BoardReading(
                    index=i,
                    hashrate_ths=share,
                    chip_temp_c=round(chip, 1),
                    board_temp_c=round(p.ambient_c + (chip - p.ambient_c) * 0.72, 1),
                    chips=spec.chips_per_board if alive else 0,
                    freq_mhz=round(spec.board_freq_mhz * p.freq, 1) if alive else 0.0,
                    alive=alive,
                )
            )
        errors: list[int] = []
        if p.phase is Phase.PROTECTED:
            errors.append(2010 if spec.make == "antminer" else 352)  # over-temperature
        if p.dead_boards:
            errors.append(2030 if spec.make == "antminer" else 541)  # board lost
        rise = p.chip_temp_c - p.ambient_c
        return Snapshot(
            t=p.t,
            mode=self.mode,
            phase=p.phase,
            hashrate_ths=sum(b.hashrate_ths for b in boards),
            power_w=round(p.power_w, 1),
            power_limit_w=self.power_limit_w or self.default_power_limit(),
            chip_temp_c=round(max((b.chip_temp_c for b in boards), default=p.chip_temp_c), 1),
            inlet_c=round(p.ambient_c, 1),
            outlet_c=round(p.ambient_c + rise * 0.45, 1),
            fan_rpm=int(FAN_MAX_RPM * p.fan_pct / 100.0),
            boards=tuple(boards),
            uptime_s=max(0, int(p.t - self.boot_t)),
            errors=tuple(errors),
        )

    def identity(self) -> dict[str, str]:
        """The rig as ``rigpilot sim --json`` lists it."""
        return {
            "address": self.address,
            "make": self.spec.make,
            "model": self.spec.model,
            "firmware": self.firmware,
        }

    def true_state(self) -> dict[str, Any]:
        """The control API's view: physics, settings, faults and counters."""
        s = self.snapshot()
        return {
            **self.identity(),
            "key": self.spec.key,
            "serial": self.serial,
            "mac": self.mac,
            "reachable": self.reachable(),
            "powered": self.powered,
            "mode": s.mode.value,
            "phase": s.phase.value,
            "mining": s.mining,
            "power_limit_w": self.power_limit_w,
            "freq_pct": self.freq_pct,
            "freq": round(self.phys.freq, 4),
            "hashrate_ths": round(s.hashrate_ths, 3),
            "power_w": s.power_w,
            "power_factor": self.phys.power_factor,
            "chip_temp_c": s.chip_temp_c,
            "inlet_c": s.inlet_c,
            "outlet_c": s.outlet_c,
            "fan_rpm": s.fan_rpm,
            "boards": [
                {
                    "index": b.index,
                    "hashrate_ths": round(b.hashrate_ths, 3),
                    "chip_temp_c": b.chip_temp_c,
                    "board_temp_c": b.board_temp_c,
                    "alive": b.alive,
                }
                for b in s.boards
            ],
            "errors": list(s.errors),
            "faults": {f.value: p for f, p in self.faults.items()},
            "counters": self.counters.as_dict(),
            "sim_time_s": round(s.t, 3),
        }
