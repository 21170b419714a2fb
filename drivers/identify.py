"""Identify a rig (pyasic's detection over bounded transports, under our deadline) and choose
its driver.

Every byte read here goes through rigpilot's own transports (``drivers.transport.request``,
``drivers.webdigest`` and the capped httpx client of ``drivers.detect``): pyasic decides what the
rig is from what they read, but never reads from the rig itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

from pyasic import settings as pyasic_settings
from pyasic.miners.backends.antminer import AntminerModern
from pyasic.miners.backends.braiins_os import BOSer
from pyasic.miners.backends.btminer import BTMinerV2, BTMinerV3
from pyasic.miners.factory import MINER_CLASSES, MinerTypes

from drivers import webdigest
from drivers.base import RigDriver
from drivers.braiins import BraiinsOS, braiins_identity
from drivers.detect import detect, within
from drivers.epic import EPic, epic_details, epic_summary, tuning_of
from drivers.generic import PyasicGeneric
from drivers.luxos import LuxOS
from drivers.parse import antminer_stats, cgminer_section, whatsminer_summary
from drivers.pyasic_miner import classify, forget
from drivers.stock import RPC_PORT, V3_PORT, AntminerStock, WhatsminerV2, WhatsminerV3
from drivers.transport import BTMINER_STOPPED, DriverError, decode, decode_framed, request
from drivers.vnish import EXTRA_PRESETS, VNish, preset_names, preset_watts, vnish_read
from policies.values import FailureKind, Identity, Make, rig_text

DRIVERS: dict[str, type[RigDriver]] = {
    cls.name: cls
    for cls in (
        AntminerStock,
        WhatsminerV2,
        WhatsminerV3,
        PyasicGeneric,
        LuxOS,
        BraiinsOS,
        EPic,
        VNish,
    )
}
MAX_DETAIL = 64  # characters kept of a rig's serial, MAC or firmware text
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
        miner = await detect(address, timeout_s)
    except TimeoutError:
        raise DriverError(FailureKind.TIMEOUT, f"not identified within {timeout_s:.0f} s") from None
    if miner is None:
        raise await _why_not_found(address, min(2.0, max(0.2, deadline - time.monotonic())))
    left = max(0.5, deadline - time.monotonic())
    try:
        return await within(_describe(address, miner, left), left)
    except TimeoutError:
        raise DriverError(
            FailureKind.TIMEOUT,
            f"recognised as {miner.raw_model or type(miner).__name__}, "
            "but its details did not arrive in time",
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
        if exc.kind is FailureKind.BAD_REPLY:  # e.g. a reply past the size cap
            return DriverError(
                FailureKind.UNKNOWN_MINER, f"port 4028 answers, but not as a miner: {exc.detail}"
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
    model = rig_text(miner.raw_model or "unknown", MAX_DETAIL)
    # A model pyasic does not list gets its fallback class (BMMiner-based "AntminerUnknown"):
    # stock firmware all the same, read by the stock driver, not through pyasic's guesses.
    stock_antminer = (AntminerModern, MINER_CLASSES[MinerTypes.ANTMINER][None])
    if isinstance(miner, stock_antminer) and firmware_kind == "Stock":
        status = antminer_stats(
            decode(await request(address, RPC_PORT, b'{"command":"stats"}', timeout_s))
        )
        extra = _extra(miner, None, firmware_kind, status.fingerprint)
        firmware = rig_text(status.fingerprint.split("|", 1)[1], MAX_DETAIL) or firmware_kind
        if not miner.raw_model:  # pyasic's fallback class knows no model: the rig says it
            named = status.fingerprint.split("|", 1)[0].removeprefix("Antminer ")
            model = rig_text(named, MAX_DETAIL) or model
        # pyasic's serial and MAC: "serinum" and "macaddr" of the web UI's get_system_info.
        info = await _quiet(_antminer_system_info(address, timeout_s))
        return Identity(
            address,
            Make.ANTMINER,
            model,
            firmware,
            AntminerStock.name,
            _field(info, "serinum"),
            _field(info, "macaddr"),
            extra,
        )
    if isinstance(miner, BTMinerV2):
        raw = await request(address, RPC_PORT, b'{"command":"summary"}', timeout_s)
        # pyasic's MAC and serial: get_miner_info's Msg.mac / Msg.minersn; firmware:
        # get_version's Msg.fw_ver (read even when btminer is stopped).
        info = _msg(await _quiet(_rpc(address, "get_miner_info", timeout_s)))
        version = _field(_msg(await _quiet(_rpc(address, "get_version", timeout_s))), "fw_ver")
        if raw.startswith(BTMINER_STOPPED):
            # Asleep: btminer is stopped, but the API still tells the MAC and firmware.
            mac = _field(info, "mac")
            version = version or ""
            fingerprint = f"{mac or ''}|{version}"
        else:
            fingerprint = whatsminer_summary(decode(raw)).fingerprint
            mac = fingerprint.split("|")[0] or None
            version = version or fingerprint.split("|")[1]
        extra = _extra(miner, version, firmware_kind, fingerprint)
        return Identity(
            address,
            Make.WHATSMINER,
            model,
            version,
            WhatsminerV2.name,
            _field(info, "minersn"),
            mac,
            extra,
        )
    if isinstance(miner, BTMinerV3):
        # pyasic's v3 details: get.device.info's msg.system.fwversion, msg.miner.miner-sn,
        # msg.network.mac.
        device = _msg(await _quiet(_v3_device_info(address, timeout_s)), "msg")
        version = _field(_msg(device, "system"), "fwversion") or ""
        return Identity(
            address,
            Make.WHATSMINER,
            model,
            version,
            WhatsminerV3.name,
            _field(_msg(device, "miner"), "miner-sn"),
            _field(_msg(device, "network"), "mac"),
            _extra(miner, version, firmware_kind, ""),
        )
    if firmware_kind == "LuxOS":
        return await _luxos_identity(address, model, miner, timeout_s)
    if isinstance(miner, BOSer):  # Braiins OS with the BOSer daemon: its REST API from 25.07 on
        found = await braiins_identity(
            address, model, _extra(miner, None, firmware_kind, ""), timeout_s
        )
        if found is not None:
            return found
    if firmware_kind == "ePIC":
        return await _epic_identity(address, model, miner, timeout_s)
    if firmware_kind == "VNish":
        return await _vnish_identity(address, model, miner, timeout_s)
    # Other firmwares: pyasic's per-firmware detail readers have no size cap, so identification
    # does not call them; the firmware is pyasic's name for it, serial and MAC stay unknown.
    if miner.raw_model is None:
        # pyasic took a word in some reply for a firmware but could not name the model: a rig
        # must at least answer ``version`` properly (JSON, a success status) to be one.
        reply = decode(await request(address, RPC_PORT, b'{"command":"version"}', timeout_s))
        cgminer_section(reply, "VERSION")
    return Identity(
        address,
        _MAKES.get(firmware_kind, Make.OTHER),
        model,
        firmware_kind,
        PyasicGeneric.name,
        None,
        None,
        _extra(miner, None, firmware_kind, ""),
    )


async def _luxos_identity(address: str, model: str, miner: Any, timeout_s: float) -> Identity:
    """LuxOS: firmware from ``version`` (``LUXminer``), serial and MAC from ``config``, the
    fingerprint from ``stats`` (as the driver's every read checks it)."""
    reply = decode(
        await request(address, RPC_PORT, b'{"command":"version+config+stats"}', timeout_s)
    )
    version = _field(cgminer_section(reply, "VERSION")[0], "LUXminer") or "LuxOS"
    config = cgminer_section(reply, "CONFIG")[0]
    fingerprint = antminer_stats(reply).fingerprint
    return Identity(
        address,
        Make.LUXOS,
        model,
        version,
        LuxOS.name,
        _field(config, "SerialNumber"),
        _field(config, "MACAddr"),
        _extra(miner, version, "LuxOS", fingerprint),
    )


async def _epic_identity(address: str, model: str, miner: Any, timeout_s: float) -> Identity:
    """ePIC: its HTTP API on 4028 (as pyasic reads it): firmware from ``/summary``'s
    ``Software`` (also the fingerprint), serial from ``/capabilities``' control board
    ``cpuSerial`` (as asic-rs reads it), MAC from ``/network``; the tuning facts are checked
    here, so a rig whose capabilities the driver cannot use is not taken for an ePIC rig."""
    session = webdigest.WebSession(address, "root", "", port=RPC_PORT)
    try:
        capabilities = await session.get_json("/capabilities", timeout_s)
        tuning_of(capabilities)
        summary = epic_summary(await session.get_json("/summary", timeout_s))
        network = await _quiet(session.get_json("/network", timeout_s))
    finally:
        await session.release()
    version = summary.status.fingerprint or "ePIC"
    serial, mac = epic_details(capabilities, network)
    if not miner.raw_model:  # pyasic's fallback class knows no model: the rig says it
        model = own_model(capabilities.get("Model")) or model
    return Identity(
        address,
        Make.EPIC,
        model,
        version,
        EPic.name,
        serial,
        mac,
        _extra(miner, version, "ePIC", summary.status.fingerprint),
    )


async def _vnish_identity(address: str, model: str, miner: Any, timeout_s: float) -> Identity:
    """VNish: its REST API on 80, as the driver reads it (unlock, then ``summary`` for the
    fingerprint ``miner_type``); firmware, serial and MAC from ``info`` (``fw_version``,
    ``serial``, ``system.network_status.mac``, as asic-rs reads them)."""
    driver = VNish(Identity(address, Make.VNISH, model, "VNish", VNish.name))
    try:
        summary = vnish_read(
            webdigest.json_object(await driver.call("GET", "/summary", None, timeout_s), "summary")
        )
        info = await _quiet(driver.get_json("/info", timeout_s, auth=False))
        # The watt presets ``limit`` can take (they vary by rig): declared in its capabilities.
        presets = preset_watts(
            preset_names(await driver.call("GET", "/autotune/presets", None, timeout_s))
        )
    finally:
        driver.web.release()
    fw = _field(info, "fw_version")
    if not miner.raw_model:  # pyasic's fallback class knows no model: the rig says it
        model = own_model(info.get("miner") if info else None) or model
    version = f"Vnish {fw}" if fw else "VNish"
    serial = _field(info, "serial")
    network = _msg(_msg(info, "system"), "network_status")
    return Identity(
        address,
        Make.VNISH,
        model,
        version,
        VNish.name,
        None if serial == "N/A" else serial,
        _field(network, "mac"),
        {
            **_extra(miner, version, "VNish", summary.status.fingerprint),
            EXTRA_PRESETS: ",".join(str(w) for w in presets),
        },
    )


def own_model(value: Any) -> str | None:
    """A custom firmware's own model name (``AntMiner S19 XP``, ``Antminer S21 XP Hyd.``)
    as the catalogue names models (``S19 XP``), or None."""
    if not isinstance(value, str):
        return None
    named = value.strip()
    if named.lower().startswith("antminer "):
        named = named[len("antminer ") :]
    return rig_text(named, MAX_DETAIL) or None


async def _antminer_system_info(address: str, timeout_s: float) -> dict[str, Any]:
    password = str(pyasic_settings.get("default_antminer_web_password", "root"))
    return await webdigest.get_json(
        address, "/cgi-bin/get_system_info.cgi", "root", password, timeout_s
    )


async def _rpc(address: str, command: str, timeout_s: float) -> dict[str, Any]:
    payload = json.dumps({"command": command}).encode()
    return decode(await request(address, RPC_PORT, payload, timeout_s))


async def _v3_device_info(address: str, timeout_s: float) -> dict[str, Any]:
    payload = b'{"cmd":"get.device.info"}'
    return decode_framed(await request(address, V3_PORT, payload, timeout_s, framed=True))


def _msg(obj: Any, key: str = "Msg") -> dict[str, Any] | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else None


def _field(obj: dict[str, Any] | None, key: str) -> str | None:
    """A short text detail (serial, MAC, version) or None; rig text is data, kept short."""
    value = obj.get(key) if obj else None
    if value is None or isinstance(value, dict | list) or value == "":
        return None
    return rig_text(value, MAX_DETAIL)


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


async def _quiet(call: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any] | None:
    """Optional identity details: a failed read leaves the fields empty, not the rig unread."""
    try:
        return await call
    except DriverError:
        return None
