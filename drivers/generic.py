"""Every other firmware pyasic drives (Braiins OS+, LuxOS, VNish, ePIC, ...), through pyasic.

Slower than the stock adapters' one-request reads (pyasic's ``get_data`` with only the fields a
decision needs), but always bounded by the caller's deadline, and each firmware declares what it
supports according to pyasic 0.79 (docs/drivers.md).
"""

from __future__ import annotations

from typing import Any

from pyasic.data import MinerData

from drivers.base import ApplyResult, RigDriver
from drivers.parse import Status, plausible
from drivers.pyasic_miner import miner_for
from drivers.stock import pyasic_call
from drivers.transport import DriverError
from policies.values import (
    Board,
    Capabilities,
    FailureKind,
    Mode,
    Observation,
    PowerSource,
    rig_text,
)

_INCLUDE = [
    "hashrate",
    "hashboards",
    "wattage",
    "wattage_limit",
    "fans",
    "is_mining",
    "errors",
    "env_temp",
    "uptime",
]

# What pyasic 0.79 can do per firmware (docs/reference/protocols.md).
FIRMWARE_CAPS: dict[str, Capabilities] = {
    "BOS+": Capabilities(
        frozenset({Mode.SLEEP, Mode.NORMAL, Mode.LIMIT}),
        power_limit=True,
        reports_power=True,
        notes=("autotuning to a power target",),
    ),
    # pyasic's LuxOS set_power_limit picks the highest profile at or under the watts and then
    # reports that profile's watts: W is observed only when it is exactly a profile's, so no
    # limit is declared (as the LuxOS driver, drivers/luxos.py, declares none).
    "LuxOS": Capabilities(
        frozenset({Mode.SLEEP, Mode.NORMAL}),
        reports_power=True,
        notes=("no power limit through pyasic: it would set a profile's watts, not W",),
    ),
    # pyasic's VNish set_power_limit never takes effect: no limit through pyasic (the VNish
    # driver, drivers/vnish.py, selects the rig's presets itself).
    "VNish": Capabilities(
        frozenset({Mode.SLEEP, Mode.NORMAL}),
        reports_power=True,
        notes=("no power limit through pyasic: its VNish set_power_limit has no effect",),
    ),
}
_DEFAULT_CAPS = Capabilities(
    frozenset({Mode.SLEEP, Mode.NORMAL}),
    notes=("sleep/resume through pyasic; no power control known",),
)


class PyasicGeneric(RigDriver):
    """Any rig pyasic recognises, read with ``get_data`` under our deadline."""

    name = "pyasic"

    @property
    def capabilities(self) -> Capabilities:
        return FIRMWARE_CAPS.get(self.identity.extra.get("pyasic_firmware", ""), _DEFAULT_CAPS)

    async def observe(self, timeout_s: float, now: float) -> Observation:
        miner = miner_for(self.identity)
        data: MinerData = await pyasic_call("get_data", miner.get_data(include=_INCLUDE), timeout_s)
        if data.hashrate is None and not data.hashboards:
            raise DriverError(FailureKind.BAD_REPLY, "get_data returned no hashrate")
        hashrate = float(data.hashrate) if data.hashrate is not None else 0.0
        boards = tuple(
            Board(
                index=b.slot,
                hashrate_ths=float(b.hashrate or 0),
                board_temp_c=b.temp,
                chip_temp_c=b.chip_temp,
                chips=b.chips,
                alive=not b.missing,
            )
            for b in data.hashboards
        )
        temps = [b.chip_temp_c for b in boards if b.chip_temp_c is not None]
        status = plausible(
            Status(
                hashrate_ths=hashrate,
                boards=boards,
                max_chip_temp_c=max(temps) if temps else None,
                fan_rpm=tuple(int(f.speed) for f in data.fans if f.speed),
                uptime_s=data.uptime,
                power_w=float(data.wattage) if data.wattage else None,
                power_limit_w=data.wattage_limit,
                ambient_c=data.env_temp,
                errors=tuple(
                    rig_text(e.error_message if hasattr(e, "error_message") else e)
                    for e in data.errors
                ),
            ),
            self.bounds,
        )
        mining = hashrate > 0
        return Observation(
            identity=self.identity,
            observed_at=now,
            hashrate_ths=hashrate,
            power_w=status.power_w,
            power_source=PowerSource.REPORTED if status.power_w else None,
            mode=Mode.NORMAL if mining else Mode.SLEEP if data.is_mining is False else Mode.UNKNOWN,
            mining=mining,
            boards=status.boards,
            max_chip_temp_c=status.max_chip_temp_c,
            ambient_c=status.ambient_c,
            fan_rpm=status.fan_rpm,
            power_limit_w=status.power_limit_w,
            errors=status.errors,
            uptime_s=data.uptime,
            model_unknown=self.entry is None,
        )

    async def apply(
        self,
        mode: Mode,
        power_limit_w: int | None,
        timeout_s: float,
    ) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        miner = miner_for(self.identity)

        async def send() -> Any:
            if mode is Mode.SLEEP:
                return await miner.stop_mining()
            if mode is Mode.LIMIT:
                assert power_limit_w is not None
                if not await miner.set_power_limit(power_limit_w):
                    return False
            return await miner.resume_mining()

        ok = await pyasic_call(f"set mode {mode.value}", send(), timeout_s)
        if ok is False:
            raise DriverError(FailureKind.BAD_REPLY, f"pyasic refused set mode {mode.value}")
        return ApplyResult(True, mode, power_limit_w, "sent; confirm by observation")
