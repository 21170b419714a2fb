"""Identify a rig (pyasic's detection, under our deadline) and choose its driver."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyasic
from pyasic.miners.backends.antminer import AntminerModern
from pyasic.miners.backends.btminer import BTMinerV2, BTMinerV3
from pyasic.miners.factory import MINER_CLASSES, MinerTypes

from drivers.base import RigDriver
from drivers.generic import PyasicGeneric
from drivers.parse import antminer_stats, whatsminer_summary
from drivers.pyasic_miner import classify, forget
from drivers.stock import RPC_PORT, AntminerStock, WhatsminerV2, WhatsminerV3
from drivers.transport import BTMINER_STOPPED, DriverError, decode, request
from policies.values import FailureKind, Identity, Make

DRIVERS: dict[str, type[RigDriver]] = {
    cls.name: cls for cls in (AntminerStock, WhatsminerV2, WhatsminerV3, PyasicGeneric)
}
_MAKES = {"BOS+": Make.BRAIINS, "LuxOS": Make.LUXOS, "VNish": Make.VNISH}


def driver_for(identity: Identity) -> RigDriver:
    """A fresh driver instance for an identified rig."""
    try:
        return DRIVERS[identity.driver](identity)
    except KeyError:
        raise ValueError(f"{identity.address}: unknown driver {identity.driver!r}") from None


async def probe(address: str, port: int, timeout_s: float) -> bool:
    """True when something accepts a TCP connection on ``address:port`` within the deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


async def identify(address: str, timeout_s: float = 10.0) -> Identity:
    """Find out what is at ``address``: make, model, firmware, serial, and its driver.

    Raises DriverError: UNREACHABLE when nothing answers, UNKNOWN_MINER when something answers
    that pyasic does not recognise, TIMEOUT past the deadline.
    """
    deadline = time.monotonic() + timeout_s
    forget(address)
    try:
        async with asyncio.timeout(timeout_s):
            miner = await pyasic.get_miner(address)
    except TimeoutError:
        raise DriverError(FailureKind.TIMEOUT, f"not identified within {timeout_s:.0f} s") from None
    if miner is None:
        raise await _why_not_found(address, min(2.0, max(0.2, deadline - time.monotonic())))
    left = max(0.5, deadline - time.monotonic())
    try:
        async with asyncio.timeout(left):
            return await _describe(address, miner, left)
    except TimeoutError:
        raise DriverError(
            FailureKind.TIMEOUT,
            f"recognised as {miner.raw_model}, but its details did not arrive in time",
        ) from None


async def _why_not_found(address: str, timeout_s: float) -> DriverError:
    """pyasic says only "nothing"; ask port 4028 once more to tell the operator why."""
    try:
        reply = await request(address, RPC_PORT, b'{"command":"version"}', timeout_s)
    except DriverError as exc:
        if exc.kind is FailureKind.TIMEOUT:
            return DriverError(
                FailureKind.TIMEOUT, "port 4028 accepts connections but does not answer"
            )
        return DriverError(FailureKind.UNREACHABLE, f"no miner answers ({exc.detail})")
    if not reply:
        return DriverError(FailureKind.UNREACHABLE, "port 4028 closes without answering")
    excerpt = reply[:60].decode("utf-8", errors="replace")
    return DriverError(
        FailureKind.UNKNOWN_MINER, f"port 4028 answers, but pyasic recognises no miner: {excerpt!r}"
    )


async def _describe(address: str, miner: Any, timeout_s: float) -> Identity:
    firmware_kind = str(miner.firmware)
    model = str(miner.raw_model or "unknown")
    # A model pyasic does not list gets its fallback class (BMMiner-based "AntminerUnknown"):
    # stock firmware all the same, read by the stock driver, not through pyasic's guesses.
    stock_antminer = (AntminerModern, MINER_CLASSES[MinerTypes.ANTMINER][None])
    if isinstance(miner, stock_antminer) and firmware_kind == "Stock":
        status = antminer_stats(
            decode(await request(address, RPC_PORT, b'{"command":"stats"}', timeout_s))
        )
        extra = _extra(miner, None, firmware_kind, status.fingerprint)
        firmware = status.fingerprint.split("|", 1)[1] or firmware_kind
        if not miner.raw_model:  # pyasic's fallback class knows no model: the rig says it
            model = status.fingerprint.split("|", 1)[0].removeprefix("Antminer ") or model
        serial = await _quiet(miner.get_serial_number())
        mac = await _quiet(miner.get_mac())
        return Identity(
            address, Make.ANTMINER, model, firmware, AntminerStock.name, serial, mac, extra
        )
    if isinstance(miner, BTMinerV2):
        raw = await request(address, RPC_PORT, b'{"command":"summary"}', timeout_s)
        if raw.startswith(BTMINER_STOPPED):
            # Asleep: btminer is stopped, but the API still tells the MAC and firmware.
            info = await _quiet(miner.rpc.get_miner_info())
            mac = str(info["Msg"]["mac"]) if isinstance(info, dict) else None
            version = str(await _quiet(miner.get_fw_ver()) or "")
            fingerprint = f"{mac or ''}|{version}"
        else:
            fingerprint = whatsminer_summary(decode(raw)).fingerprint
            mac = fingerprint.split("|")[0] or None
            version = str(await _quiet(miner.get_fw_ver()) or fingerprint.split("|")[1])
        extra = _extra(miner, version, firmware_kind, fingerprint)
        return Identity(
            address,
            Make.WHATSMINER,
            model,
            version,
            WhatsminerV2.name,
            await _quiet(miner.get_serial_number()),
            mac,
            extra,
        )
    if isinstance(miner, BTMinerV3):
        version = str(await _quiet(miner._get_firmware_version()) or "")
        return Identity(
            address,
            Make.WHATSMINER,
            model,
            version,
            WhatsminerV3.name,
            await _quiet(miner.get_serial_number()),
            await _quiet(miner.get_mac()),
            _extra(miner, version, firmware_kind, ""),
        )
    make = _MAKES.get(firmware_kind, Make.OTHER)
    version = str(await _quiet(miner.get_fw_ver()) or firmware_kind)
    return Identity(
        address,
        make,
        model,
        version,
        PyasicGeneric.name,
        await _quiet(miner.get_serial_number()),
        await _quiet(miner.get_mac()),
        _extra(miner, None, firmware_kind, ""),
    )


def _extra(
    miner: Any,
    version: str | None,
    firmware_kind: str,
    fingerprint: str,
) -> dict[str, str]:
    extra = classify(miner, version) or {}
    extra["pyasic_firmware"] = firmware_kind
    if fingerprint:
        extra["fingerprint"] = fingerprint
    return extra


async def _quiet(call: Any) -> Any:
    """Optional identity details: a failure leaves the field empty, it does not fail the rig."""
    try:
        value = await call
    except Exception:  # pyasic raises many types here; the field is optional
        return None
    return value if value not in ("", None) else None
