"""drivers.btminer: pyasic's encrypted btminer API v2, the token kept for its validity.

Proven two ways: byte-identical frames to pyasic's own ``create_privileged_cmd`` (and the
reference test vector), and commands that the simulated firmware decrypts and obeys over real
sockets; every refusal path against the simulator.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from hypothesis import given, settings
from hypothesis import strategies as st
from passlib.hash import md5_crypt
from pyasic import settings as pyasic_settings
from pyasic.rpc.btminer import (
    BTMinerRPCAPI,
    TokenData,
    create_privileged_cmd,
    parse_btminer_priviledge_data,
)

from drivers import btminer
from drivers.identify import driver_for, identify
from drivers.stock import WhatsminerV2
from drivers.transport import DriverError, decode, request
from policies.values import FailureKind, Mode

REPO = Path(__file__).resolve().parents[1]

PARAMS = [
    ("power_off", {"respbefore": "true"}),
    ("power_on", {}),
    ("adjust_power_limit", {"power_limit": "3100"}),
    ("set_low_power", {}),
    ("update_pools", {"pool1": "stratum+tcp://pool:3333", "worker1": "w.1", "passwd1": "x"}),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def counters(sim: SimFleet, address: str) -> dict[str, Any]:
    state = await asyncio.to_thread(sim.control.rig, address)
    return dict(state["counters"])


def test_reference_vector() -> None:
    pwd_md5 = btminer.password_key("admin", "BQ5hoXV9").pwd_md5
    assert pwd_md5 == "RxmaDUO33TS7O26yeMHZ81"
    assert btminer.md5_crypt_body(pwd_md5 + "1234", "4hWWYqEf") == "sXsExc.OmHI5XaSxpolTh0"


@pytest.mark.parametrize("salt", ["BQ5hoXV9", "4hWWYqEf", "a./Z", "x"])
@pytest.mark.parametrize("secret", ["admin", "RxmaDUO33TS7O26yeMHZ811234", "pässwörd", ""])
def test_md5_crypt_is_passlibs(secret: str, salt: str) -> None:
    """Our md5-crypt gives what pyasic's passlib md5_crypt gives."""
    expected = md5_crypt.using(salt=salt).hash(secret).split("$")[3]
    assert btminer.md5_crypt_body(secret, salt) == expected


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=70),
    salt=st.text(alphabet=sorted(btminer.CRYPT_SALT), min_size=1, max_size=8),
)
def test_md5_crypt_is_passlibs_on_drawn_inputs(secret: str, salt: str) -> None:
    """Every secret length crosses the 16-byte blocks and the bit loop differently."""
    expected = md5_crypt.using(salt=salt).hash(secret).split("$")[3]
    assert btminer.md5_crypt_body(secret, salt) == expected


@pytest.mark.parametrize(("cmd", "params"), PARAMS)
@pytest.mark.parametrize("password", ["admin", "s3cret-Ünïcode"])
def test_frames_are_pyasics(cmd: str, params: dict[str, str], password: str) -> None:
    key = btminer.password_key(password, "Zq9.xY/1")
    sign = btminer.md5_crypt_body(key.pwd_md5 + "0815", "4hWWYqEf")
    token = TokenData(host_sign=sign, host_passwd_md5=key.pwd_md5)
    ours = btminer.encrypt_command(key, {"cmd": cmd, **params, "token": sign})
    theirs = create_privileged_cmd(token, {"cmd": cmd, **params})
    assert ours == theirs
    # and each side reads the other's ciphertext
    data = json.loads(ours)["data"]
    assert btminer.decrypt_reply(key, data) == {"cmd": cmd, **params, "token": sign}
    assert parse_btminer_priviledge_data(token, {"enc": data}) == {
        "cmd": cmd,
        **params,
        "token": sign,
    }


def test_undecryptable_reply_is_named() -> None:
    key = btminer.password_key("admin", "BQ5hoXV9")
    other = btminer.password_key("nimda", "BQ5hoXV9")
    data = json.loads(btminer.encrypt_command(other, {"cmd": "x", "token": "t"}))["data"]
    with pytest.raises(ValueError, match="wrong password"):
        btminer.decrypt_reply(key, data)
    with pytest.raises(ValueError, match="AES blocks"):
        btminer.decrypt_reply(key, "QUJD")
    with pytest.raises(ValueError, match="base64"):
        btminer.decrypt_reply(key, "@@@")


async def test_commands_are_obeyed_and_the_token_is_kept(sim: SimFleet) -> None:
    address = sim.address("m30s+")
    clock = FakeClock()
    session = btminer.BtminerSession(address, clock=clock)
    reply = await session.command("set_low_power", {}, "admin", 5.0)
    assert reply["Msg"] == "API command OK"
    await session.command("power_off", {"respbefore": "true"}, "admin", 5.0)
    assert (await counters(sim, address))["by_command"]["get_token"] == 1
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "sleep"

    # unmodified pyasic speaks to the same rig, with its own token, alongside ours
    rpc = BTMinerRPCAPI(address)
    assert (await rpc.power_on())["Msg"] == "API command OK"
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "low"

    # kept until TOKEN_REUSE_S on our clock, then asked for again
    clock.now += btminer.TOKEN_REUSE_S - 1
    await session.command("set_normal_power", {}, "admin", 5.0)
    assert (await counters(sim, address))["by_command"]["get_token"] == 2  # 1 was pyasic's
    clock.now += 1
    await session.command("set_normal_power", {}, "admin", 5.0)
    assert (await counters(sim, address))["by_command"]["get_token"] == 3


async def test_token_the_rig_forgot_is_fetched_again_once(sim: SimFleet) -> None:
    address = sim.address("m50s")
    session = btminer.BtminerSession(address)
    await session.command("set_low_power", {}, "admin", 5.0)
    kept = session.token
    await asyncio.to_thread(sim.control.reset, address)  # the firmware's token table is gone
    await session.command("set_high_power", {}, "admin", 5.0)
    seen = await counters(sim, address)
    assert seen["by_command"]["get_token"] == 1  # counters were reset with the rig
    assert seen["rejected"] == 1  # the forgotten token: "check token err", then a fresh one
    assert seen["writes"] == 1
    assert session.token is not None and session.token != kept
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "high"


async def test_kept_key_the_rig_cannot_decrypt_with_is_replaced_once(sim: SimFleet) -> None:
    """23 on a kept token: the rig's salt (or password) changed since the token was made."""
    address = sim.address("m30s+")
    session = btminer.BtminerSession(address)
    await session.command("set_low_power", {}, "admin", 5.0)
    assert session.token is not None
    session.token = replace(session.token, key=btminer.password_key("admin", "oldSALT1"))
    await session.command("set_high_power", {}, "admin", 5.0)
    seen = await counters(sim, address)
    assert seen["by_command"]["get_token"] == 2 and seen["rejected"] == 1
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "high"


async def test_wrong_password_is_a_clear_error_without_retry(sim: SimFleet) -> None:
    address = sim.address("m30s")
    session = btminer.BtminerSession(address)
    with pytest.raises(DriverError, match=r"code 23.*wrong API password") as info:
        await session.command("power_off", {"respbefore": "true"}, "not-the-password", 5.0)
    assert info.value.kind is FailureKind.BAD_REPLY
    assert (await counters(sim, address))["by_command"]["get_token"] == 1
    # a kept token made with the old password is dropped when the password changes
    await session.command("power_off", {"respbefore": "true"}, "admin", 5.0)
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "sleep"


async def test_garbage_token_reply_is_a_bad_reply(sim: SimFleet) -> None:
    address = sim.address("m60s")
    await asyncio.to_thread(sim.control.set_fault, address, "malformed")
    session = btminer.BtminerSession(address)
    with pytest.raises(DriverError, match=r"^get_token: not JSON") as info:
        await session.command("power_off", {"respbefore": "true"}, "admin", 5.0)
    assert info.value.kind is FailureKind.BAD_REPLY
    assert session.token is None


async def test_full_token_table_is_reported(sim: SimFleet) -> None:
    address = sim.address("m30s+")
    for _ in range(32):  # other clients took every slot
        reply = decode(await request(address, 4028, b'{"command":"get_token"}', 5.0))
        assert reply["Code"] == btminer.CODE_TOKEN
    session = btminer.BtminerSession(address)
    with pytest.raises(DriverError, match=r"token over max times \(code 136\).*try again later"):
        await session.command("power_off", {"respbefore": "true"}, "admin", 5.0)


async def test_unreachable_and_hung_rigs(sim: SimFleet) -> None:
    address = sim.address("m50s")
    await asyncio.to_thread(sim.control.set_fault, address, "hang")
    session = btminer.BtminerSession(address)
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"^get_token: no answer") as info:
        await session.command("power_off", {"respbefore": "true"}, "admin", 0.5)
    assert info.value.kind is FailureKind.TIMEOUT
    assert time.monotonic() - started < 2.0
    await asyncio.to_thread(sim.control.clear_faults, address)
    await asyncio.to_thread(sim.control.set_fault, address, "refuse")
    with pytest.raises(DriverError) as info:
        await session.command("power_off", {"respbefore": "true"}, "admin", 2.0)
    assert info.value.kind is FailureKind.UNREACHABLE


async def test_driver_uses_pyasics_password_setting(sim: SimFleet) -> None:
    address = sim.address("m60s")
    driver = driver_for(await identify(address))
    assert isinstance(driver, WhatsminerV2)
    saved = pyasic_settings.get("default_whatsminer_rpc_password", "admin")
    pyasic_settings.update("default_whatsminer_rpc_password", "wrong")
    try:
        with pytest.raises(DriverError, match=r"^set mode sleep: power_off: .*wrong API password"):
            await driver.apply(Mode.SLEEP, None, 5.0)
    finally:
        pyasic_settings.update("default_whatsminer_rpc_password", saved)
    result = await driver.apply(Mode.LIMIT, 2600, 5.0)
    assert result.sent
    state = await asyncio.to_thread(sim.control.rig, address)
    assert state["power_limit_w"] == 2600
    assert (await counters(sim, address))["by_command"]["get_token"] == 2  # one per password
