"""Power switches over real sockets: the simulated PDUs read and switched by net-snmp's own
tools (a client nobody here wrote), and rigpilot's switch drivers against every simulated
switch, including their failures and replies they must refuse.

The session fleet (tests/conftest.py) has an APC PDU at 127.2.0.1 (outlets 1-2 feeding the two
S19j Pros), a Raritan PDU at 127.2.0.2 (S19 XP, S21), a Shelly plug at 127.2.0.3 (S21 Pro) and a
Tasmota plug at 127.2.0.4 (the first M30S+).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence

import pytest
from conftest import SimFleet

from drivers.identify import driver_for, identify
from drivers.switches import ber
from drivers.switches.base import PowerSwitch
from drivers.switches.plugs import ShellyGen2, Tasmota
from drivers.switches.snmp import ApcPdu, RaritanPdu
from drivers.transport import DriverError
from policies.values import FailureKind, Mode
from simulator import snmp
from simulator.rig import SimClock
from simulator.switches import APC_STATUS_STATE, SimSwitch, wire

APC, RARITAN, SHELLY, TASMOTA = "127.2.0.1", "127.2.0.2", "127.2.0.3", "127.2.0.4"
NET_SNMP = shutil.which("snmpget") and shutil.which("snmpset") and shutil.which("snmpwalk")
needs_net_snmp = pytest.mark.skipif(
    not NET_SNMP,
    reason="net-snmp's snmpget/snmpset/snmpwalk are not installed (Debian: apt-get install snmp)",
)
T = 2.0  # driver deadline, wall seconds


def net_snmp(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-v2c", "-On", "-t", "1", "-r", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def rig_on(sim: SimFleet, switch: str, outlet: int) -> str:
    state = sim.control.switch(switch)
    (entry,) = [o for o in state["outlets"] if o["outlet"] == outlet]
    (address,) = entry["rigs"]
    return str(address)


def outlet_state(sim: SimFleet, switch: str, outlet: int) -> dict[str, object]:
    (entry,) = [o for o in sim.control.switch(switch)["outlets"] if o["outlet"] == outlet]
    return dict(entry)


# ---- net-snmp against the simulated PDUs --------------------------------------------------


@needs_net_snmp
def test_snmpget_reads_apc_outlet_state_and_power(sim: SimFleet) -> None:
    out = net_snmp(
        "snmpget",
        "-c",
        "public",
        APC,
        ".1.3.6.1.2.1.1.2.0",
        ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.1",
        ".1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.1",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == ".1.3.6.1.2.1.1.2.0 = OID: .1.3.6.1.4.1.318.1.3.4.5"
    assert lines[1] == ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.1 = INTEGER: 1"
    watts = int(lines[2].rpartition("INTEGER: ")[2])
    # an S19j Pro hashing at normal draws about 3 kW
    assert 2500 <= watts <= 3600


@needs_net_snmp
def test_snmpset_switches_an_apc_outlet_and_cuts_the_rig(sim: SimFleet) -> None:
    rig = rig_on(sim, APC, 2)
    oid = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.2"
    out = net_snmp("snmpset", "-c", "private", APC, oid, "i", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{oid} = INTEGER: 2"
    assert outlet_state(sim, APC, 2)["on"] is False
    state = sim.control.rig(rig)
    assert (state["powered"], state["reachable"]) == (False, False)
    got = net_snmp("snmpget", "-c", "public", APC, ".1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.2")
    assert got.stdout.strip() == ".1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.2 = INTEGER: 0"
    # on again: a cold boot (the rig is still unreachable while its control board boots)
    out = net_snmp("snmpset", "-c", "private", APC, oid, "i", "1")
    assert out.returncode == 0, out.stderr
    state = sim.control.rig(rig)
    assert state["powered"] is True
    assert state["phase"] == "booting"


@needs_net_snmp
def test_snmpset_refusals_name_the_problem(sim: SimFleet) -> None:
    oid = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.1"
    read_only = net_snmp("snmpset", "-c", "public", APC, oid, "i", "2")
    assert read_only.returncode != 0
    assert "noAccess" in read_only.stderr
    bad_value = net_snmp("snmpset", "-c", "private", APC, oid, "i", "9")
    assert "wrongValue" in bad_value.stderr
    wrong_type = net_snmp("snmpset", "-c", "private", APC, oid, "s", "off")
    assert "wrongType" in wrong_type.stderr
    not_writable = net_snmp(
        "snmpset", "-c", "private", APC, ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.1", "i", "2"
    )
    assert "notWritable" in not_writable.stderr
    assert outlet_state(sim, APC, 1)["on"] is True
    unknown_community = net_snmp("snmpget", "-c", "guess", APC, ".1.3.6.1.2.1.1.1.0")
    assert "Timeout" in unknown_community.stderr


@needs_net_snmp
def test_snmpwalk_lists_the_raritan_outlet_tables(sim: SimFleet) -> None:
    out = net_snmp("snmpwalk", "-c", "public", RARITAN, ".1.3.6.1.4.1.13742.6.4.1.2.1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        ".1.3.6.1.4.1.13742.6.4.1.2.1.2.1.1 = INTEGER: 1",
        ".1.3.6.1.4.1.13742.6.4.1.2.1.2.1.2 = INTEGER: 1",
        ".1.3.6.1.4.1.13742.6.4.1.2.1.3.1.1 = INTEGER: 7",
        ".1.3.6.1.4.1.13742.6.4.1.2.1.3.1.2 = INTEGER: 7",
    ]
    bulk = net_snmp("snmpbulkwalk", "-c", "public", RARITAN, ".1.3.6.1.4.1.13742.6.5.4.3.1.4")
    assert bulk.returncode == 0, bulk.stderr
    # the power column is the last object of the agent's MIB: the walk ends on endOfMibView
    lines = bulk.stdout.splitlines()
    assert lines[-1].endswith(
        "No more variables left in this MIB View (It is past the end of the MIB tree)"
    )
    assert [line.split(" = ")[0] for line in lines[:-1]] == [
        ".1.3.6.1.4.1.13742.6.5.4.3.1.4.1.1.5",
        ".1.3.6.1.4.1.13742.6.5.4.3.1.4.1.2.5",
    ]
    assert all(" = Gauge32: " in line for line in lines[:-1])
    off = net_snmp(
        "snmpset", "-c", "private", RARITAN, ".1.3.6.1.4.1.13742.6.4.1.2.1.2.1.1", "i", "0"
    )
    assert off.returncode == 0, off.stderr
    state = net_snmp("snmpget", "-c", "public", RARITAN, ".1.3.6.1.4.1.13742.6.4.1.2.1.3.1.1")
    assert state.stdout.strip() == ".1.3.6.1.4.1.13742.6.4.1.2.1.3.1.1 = INTEGER: 8"


# ---- rigpilot's drivers against every simulated switch --------------------------------------


def drivers() -> list[tuple[PowerSwitch, int]]:
    return [
        (ApcPdu("apc", APC, (1, 2)), 1),
        (RaritanPdu("raritan", RARITAN, (1, 2)), 1),
        (ShellyGen2("shelly", SHELLY, (0,)), 0),
        (Tasmota("tasmota", TASMOTA, (1,)), 1),
    ]


@pytest.mark.parametrize("index", range(4), ids=["apc", "raritan", "shelly", "tasmota"])
async def test_driver_reads_switches_and_meters(sim: SimFleet, index: int) -> None:
    switch, outlet = drivers()[index]
    rig = rig_on(sim, switch.address, outlet)
    readings = await switch.read_outlets(timeout_s=T)
    assert readings[outlet].on is True
    true_w = float(sim.control.rig(rig)["power_w"])
    assert readings[outlet].power_w == pytest.approx(true_w, abs=40.0)
    await switch.set_outlet(outlet, False, timeout_s=T)
    readings = await switch.read_outlets(timeout_s=T)
    assert (readings[outlet].on, readings[outlet].power_w) == (False, 0.0)
    assert sim.control.rig(rig)["reachable"] is False
    await switch.set_outlet(outlet, True, timeout_s=T)
    assert (await switch.read_outlets(timeout_s=T))[outlet].on is True
    assert sim.control.rig(rig)["phase"] == "booting"


async def test_sleeping_rig_shows_its_standby_draw_at_the_outlet(sim: SimFleet) -> None:
    rig = rig_on(sim, SHELLY, 0)
    plug = ShellyGen2("s", SHELLY, (0,))
    hashing = (await plug.read_outlets(timeout_s=T))[0].power_w
    assert hashing is not None and hashing > 1000
    await driver_for(await identify(rig)).apply(Mode.SLEEP, None, 10.0)
    for _ in range(100):
        asleep = (await plug.read_outlets(timeout_s=T))[0].power_w
        if asleep is not None and asleep < 100:
            break
        await asyncio.sleep(0.2)
    # a sleeping Antminer's control board and fan: 18 W at the wall, not 0
    assert asleep == 18.0


@pytest.mark.parametrize("index", range(4), ids=["apc", "raritan", "shelly", "tasmota"])
async def test_unreachable_switch_is_a_timeout(sim: SimFleet, index: int) -> None:
    switch, _outlet = drivers()[index]
    sim.control.set_switch_fault(switch.address, "unreachable")
    with pytest.raises(DriverError) as err:
        await switch.read_outlets(timeout_s=0.5)
    assert err.value.kind is FailureKind.TIMEOUT
    assert switch.address in err.value.detail


@pytest.mark.parametrize("index", range(4), ids=["apc", "raritan", "shelly", "tasmota"])
async def test_stuck_relay_and_frozen_meter_show_in_readings(sim: SimFleet, index: int) -> None:
    switch, outlet = drivers()[index]
    sim.control.set_switch_fault(switch.address, "stuck_on", outlet=outlet)
    await switch.set_outlet(outlet, False, timeout_s=T)  # accepted...
    assert (await switch.read_outlets(timeout_s=T))[outlet].on is True  # ...and still on
    sim.control.clear_switch_fault(switch.address, "stuck_on", outlet=outlet)
    sim.control.set_switch_fault(switch.address, "meter_frozen", outlet=outlet)
    frozen = (await switch.read_outlets(timeout_s=T))[outlet].power_w
    await switch.set_outlet(outlet, False, timeout_s=T)
    reading = (await switch.read_outlets(timeout_s=T))[outlet]
    assert (reading.on, reading.power_w) == (False, frozen)
    assert frozen is not None and frozen > 1000


async def test_wrong_pdu_kind_is_a_clear_error(sim: SimFleet) -> None:
    with pytest.raises(DriverError) as err:
        await ApcPdu("a", RARITAN, (1,)).read_outlets(timeout_s=T)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert "does not exist on this PDU" in err.value.detail


async def test_outlet_the_pdu_lacks_is_a_clear_error(sim: SimFleet) -> None:
    with pytest.raises(DriverError) as err:
        await ApcPdu("a", APC, (1, 9)).read_outlets(timeout_s=T)
    assert ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.9" in err.value.detail.replace("1.3", ".1.3", 1)


async def test_wrong_write_community_is_refused_with_a_hint(sim: SimFleet) -> None:
    switch = ApcPdu("a", APC, (1,), write_community="public")
    with pytest.raises(DriverError) as err:
        await switch.set_outlet(1, False, timeout_s=T)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert "noAccess" in err.value.detail and "write community" in err.value.detail
    assert outlet_state(sim, APC, 1)["on"] is True


async def test_unconfigured_outlet_is_refused_before_anything_is_sent(sim: SimFleet) -> None:
    switch = ApcPdu("a", APC, (1,))
    with pytest.raises(DriverError, match="outlet 2 is not configured"):
        await switch.set_outlet(2, False, timeout_s=T)
    assert outlet_state(sim, APC, 2)["on"] is True


async def test_plug_drivers_at_the_wrong_device_name_it(sim: SimFleet) -> None:
    with pytest.raises(DriverError, match="HTTP 404") as err:
        await ShellyGen2("s", TASMOTA, (0,)).read_outlets(timeout_s=T)
    assert err.value.kind is FailureKind.BAD_REPLY
    with pytest.raises(DriverError, match="HTTP 404"):
        await Tasmota("t", SHELLY, (1,)).read_outlets(timeout_s=T)
    with pytest.raises(DriverError, match=r"value 3 not found"):
        await ShellyGen2("s", SHELLY, (3,)).read_outlets(timeout_s=T)
    # an Antminer's web UI is not a plug: its digest challenge is a clear 401
    antminer = sim.address("s19jpro")
    with pytest.raises(DriverError, match="HTTP 401"):
        await Tasmota("t", antminer, (1,)).read_outlets(timeout_s=T)


async def test_nothing_at_the_address_is_unreachable_or_a_timeout(sim: SimFleet) -> None:
    with pytest.raises(DriverError) as err:
        await Tasmota("t", "127.2.0.99", (1,)).read_outlets(timeout_s=0.5)
    assert err.value.kind in (FailureKind.UNREACHABLE, FailureKind.TIMEOUT)
    with pytest.raises(DriverError) as err:
        await RaritanPdu("r", "127.2.0.99", (1,)).read_outlets(timeout_s=0.5)
    assert err.value.kind is FailureKind.TIMEOUT


# ---- replies no real PDU sends, from an agent of our own --------------------------------------


class _LyingView(snmp.MibView):
    """Answers the APC state column with what it is given."""

    def __init__(self, values: dict[ber.Oid, ber.Value]) -> None:
        self.values = values

    def objects(self) -> Sequence[tuple[ber.Oid, ber.Value]]:
        return list(self.values.items())


@pytest.fixture
async def liar() -> AsyncIterator[_LyingView]:
    view = _LyingView({})
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: snmp.AgentProtocol(view, b"public", b"private", lambda: False),
        local_addr=("127.2.1.1", 161),
    )
    yield view
    transport.close()


async def test_state_that_is_not_an_integer_is_a_bad_reply(liar: _LyingView) -> None:
    liar.values[(*APC_STATUS_STATE, 1)] = ber.string("on")
    liar.values[(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 4, 3, 1, 7, 1)] = ber.integer(5)
    with pytest.raises(DriverError) as err:
        await ApcPdu("x", "127.2.1.1", (1,)).read_outlets(timeout_s=T)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert "not an integer" in err.value.detail


async def test_state_out_of_the_enumeration_is_a_bad_reply(liar: _LyingView) -> None:
    liar.values[(*APC_STATUS_STATE, 1)] = ber.integer(3)
    liar.values[(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 4, 3, 1, 7, 1)] = ber.integer(5)
    with pytest.raises(DriverError, match=r"outlet 1 state 3 is neither on \(1\) nor off \(2\)"):
        await ApcPdu("x", "127.2.1.1", (1,)).read_outlets(timeout_s=T)


async def test_negative_power_is_a_bad_reply(liar: _LyingView) -> None:
    liar.values[(*APC_STATUS_STATE, 1)] = ber.integer(1)
    liar.values[(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 4, 3, 1, 7, 1)] = ber.integer(-1)
    with pytest.raises(DriverError, match="outlet 1 power -1 W < 0"):
        await ApcPdu("x", "127.2.1.1", (1,)).read_outlets(timeout_s=T)


async def test_garbage_datagrams_are_a_bad_reply_naming_the_problem() -> None:
    class Garbage(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            self.transport.sendto(b"\x30\x03\x02\x01", addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Garbage, local_addr=("127.2.1.2", 161))
    try:
        with pytest.raises(DriverError) as err:
            await ApcPdu("x", "127.2.1.2", (1,)).read_outlets(timeout_s=0.5)
        assert err.value.kind is FailureKind.BAD_REPLY
        assert "undecodable reply (truncated: message at byte 0 says 3 bytes" in err.value.detail
    finally:
        transport.close()


# ---- the agent's own encoding, byte for byte --------------------------------------------------


def test_ber_encodings_match_x690_examples() -> None:
    assert ber.encode_value(ber.integer(0)) == bytes.fromhex("020100")
    assert ber.encode_value(ber.integer(128)) == bytes.fromhex("02020080")
    assert ber.encode_value(ber.integer(-129)) == bytes.fromhex("0202ff7f")
    assert ber.encode_value(ber.gauge(255)) == bytes.fromhex("420200ff")
    assert ber.encode_value(ber.Value(ber.OBJECT_ID, (1, 3, 6, 1, 4, 1, 13742))) == (
        bytes.fromhex("06072b06010401eb2e")
    )


def test_ber_message_round_trip_and_refusals() -> None:
    msg = ber.Message(1, b"public", ber.GET, 4242, 0, 0, (((1, 3, 6, 1), ber.Value(0x05)),))
    assert ber.decode_message(ber.encode_message(msg)) == msg
    for garbage in (b"", b"\x30\x05\x02\x01", b"\x04\x00", b"\x30\x84\xff\xff\xff\xff"):
        with pytest.raises(ber.BerError):
            ber.decode_message(garbage)


def test_dual_psu_rig_is_cut_only_when_its_last_outlet_is_off() -> None:
    from simulator.fleet import Fleet, GroupSpec

    clock = SimClock(scale=1.0)
    fleet = Fleet([GroupSpec("s19jpro", 2)], clock)
    pdu = SimSwitch("apc", "127.9.0.1", 4, clock, 0)
    wire([pdu], fleet.rigs, outlets_per_rig=2)
    first = fleet.rigs[0]
    assert [o.number for o in first.outlets] == [1, 2]
    pdu.switch(1, False)
    assert first.powered is True
    assert pdu.outlets[2].power_w() == pytest.approx(first.outlet_power_w(), abs=0.1)
    pdu.switch(2, False)
    assert (first.powered, first.reachable(), fleet.rigs[1].powered) == (False, False, True)


async def test_outlets_switched_together_go_out_as_one_snmp_set(sim: SimFleet) -> None:
    from daemon.power import PowerSwitches

    xp, s21 = rig_on(sim, RARITAN, 1), rig_on(sim, RARITAN, 2)
    pdu = RaritanPdu("px3", RARITAN, (1, 2))
    power = PowerSwitches({"px3": pdu}, {xp: [("px3", 1)], s21: [("px3", 2)]}, {"px3": T})
    sets_before = sim.control.switch(RARITAN)["snmp"]["sets"]
    done = await asyncio.gather(power.switch_rig(xp, False, T), power.switch_rig(s21, False, T))
    assert list(done) == ["outlets px3:1 off", "outlets px3:2 off"]
    state = sim.control.switch(RARITAN)
    assert state["snmp"]["sets"] == sets_before + 1
    assert [o["on"] for o in state["outlets"]] == [False, False]


async def test_a_refused_batch_fails_every_rig_in_it(sim: SimFleet) -> None:
    from daemon.power import PowerSwitches

    pdu = ApcPdu("apc", APC, (1, 2), write_community="public")
    power = PowerSwitches({"apc": pdu}, {"a": [("apc", 1)], "b": [("apc", 2)]}, {"apc": T})
    results = await asyncio.gather(
        power.switch_rig("a", False, T), power.switch_rig("b", False, T), return_exceptions=True
    )
    assert all(isinstance(r, DriverError) and "noAccess" in r.detail for r in results)
    assert all(o["on"] for o in sim.control.switch(APC)["outlets"])
