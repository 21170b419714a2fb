"""Simulated power switches: APC and Raritan rack PDUs over SNMP v2c, Shelly Gen2 and Tasmota
smart plugs over HTTP, wired to the simulated rigs.

An outlet feeds one rig (or shares it with the rig's other outlets: dual-PSU rigs); a rig is
powered while any outlet feeding it is on. Switching the last one off cuts the rig (it stops
answering and draws nothing); switching one on again cold-boots it (:meth:`SimRig.power_on`).
What the outlet meters is the rig's wall power: 18 W for a sleeping rig, 0 W off.

The MIB objects, value types and encodings are the vendors' (docs/power-switches.md lists each
OID with its source); the HTTP replies are the plugs' documented JSON.

Faults: ``unreachable`` (nothing answers: SNMP requests dropped, HTTP connections hang),
``stuck_on`` (an outlet's relay: the switch accepts "off" and the outlet stays on),
``meter_frozen`` (the outlet's meter keeps reporting the value it had when frozen).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote

from drivers.switches import ber
from simulator import snmp
from simulator.protocol import HttpRequest, HttpResponse
from simulator.rig import SimClock, SimRig

KINDS = ("apc", "raritan", "shelly", "tasmota")
PDU_KINDS = ("apc", "raritan")
CYCLE_OFF_S = 5.0  # simulated seconds an outlet stays off on a "reboot"/"cycle" command
READ_COMMUNITY = "public"
WRITE_COMMUNITY = "private"

# PowerNet-MIB (APC, Schneider Electric)
APC_SYS_OBJECT_ID = "1.3.6.1.4.1.318.1.3.4.5"  # rPDU2 (AP8xxx switched, metered-by-outlet)
APC_MODEL = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 1, 5, 0)  # rPDUIdentModelNumber.0
APC_OUTLETS = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 1, 8, 0)  # rPDUIdentDeviceNumOutlets.0
APC_CONTROL = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 3, 1, 1, 4)  # rPDUOutletControlOutletCommand
APC_STATUS_NAME = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 2)  # rPDUOutletStatusOutletName
APC_STATUS_STATE = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4)  # rPDUOutletStatusOutletState
APC_METERED_POWER = (
    1,
    3,
    6,
    1,
    4,
    1,
    318,
    1,
    1,
    26,
    9,
    4,
    3,
    1,
    7,
)  # rPDU2OutletMeteredStatusPower
APC_IMMEDIATE_ON, APC_IMMEDIATE_OFF, APC_IMMEDIATE_REBOOT = 1, 2, 3

# PDU2-MIB (Raritan PX2/PX3), PDU number 1 (no daisy chain)
RARITAN_SYS_OBJECT_ID = "1.3.6.1.4.1.13742.6"
RARITAN_OUTLET_COUNT = (1, 3, 6, 1, 4, 1, 13742, 6, 3, 2, 2, 1, 4, 1)  # outletCount.1
RARITAN_NAME = (1, 3, 6, 1, 4, 1, 13742, 6, 3, 5, 3, 1, 3, 1)  # outletName.1.n
RARITAN_OPERATION = (1, 3, 6, 1, 4, 1, 13742, 6, 4, 1, 2, 1, 2, 1)  # switchingOperation.1.n
RARITAN_STATE = (1, 3, 6, 1, 4, 1, 13742, 6, 4, 1, 2, 1, 3, 1)  # outletSwitchingState.1.n
RARITAN_DIGITS = (1, 3, 6, 1, 4, 1, 13742, 6, 3, 5, 4, 1, 7, 1)  # outletSensorDecimalDigits.1.n.t
RARITAN_VALUE = (1, 3, 6, 1, 4, 1, 13742, 6, 5, 4, 3, 1, 4, 1)  # measurementsOutletSensorValue
RARITAN_ACTIVE_POWER = 5  # SensorTypeEnumeration activePower(5)
RARITAN_OFF, RARITAN_ON, RARITAN_CYCLE = 0, 1, 2  # switchingOperation
RARITAN_STATE_ON, RARITAN_STATE_OFF = 7, 8  # SensorStateEnumeration on(7), off(8)

SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)


class SwitchFault(StrEnum):
    UNREACHABLE = "unreachable"  # the whole switch
    STUCK_ON = "stuck_on"  # one outlet (``outlet`` parameter)
    METER_FROZEN = "meter_frozen"  # one outlet (``outlet`` parameter)


@dataclass(slots=True)
class SimOutlet:
    number: int
    on: bool = True
    rigs: list[SimRig] = field(default_factory=list)
    stuck_on: bool = False
    frozen_w: float | None = None
    back_on_at: float | None = None  # a cycle in progress: on again at this simulated time
    switched: int = 0  # commands that changed the relay (for tests and benchmarks)

    def power_w(self) -> float:
        if self.frozen_w is not None:
            return self.frozen_w
        if not self.on:
            return 0.0
        # A rig with several outlets splits its draw across the outlets that are on.
        total = 0.0
        for rig in self.rigs:
            feeding = max(1, sum(1 for o in rig.outlets if o.on))
            total += rig.outlet_power_w() / feeding
        return round(total, 1)


class SimSwitch:
    """One PDU or plug at ``address``; outlets numbered as the device numbers them."""

    def __init__(self, kind: str, address: str, outlets: int, clock: SimClock, index: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown switch kind {kind!r}; known: {', '.join(KINDS)}")
        if kind in ("shelly", "tasmota") and outlets != 1:
            raise ValueError(f"a simulated {kind} plug has exactly one outlet, not {outlets}")
        self.kind = kind
        self.address = address
        self.clock = clock
        self.index = index
        first = 0 if kind == "shelly" else 1
        self.outlets = {n: SimOutlet(n) for n in range(first, first + outlets)}
        self.unreachable = False
        self.boot_t = clock.now()
        self.mac = f"02:5E:{index >> 16 & 0xFF:02X}:{index >> 8 & 0xFF:02X}:{index & 0xFF:02X}:01"

    # ---- relays -------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock.now()
        for outlet in self.outlets.values():
            if outlet.back_on_at is not None and now >= outlet.back_on_at:
                outlet.back_on_at = None
                self._relay(outlet, True)

    def _relay(self, outlet: SimOutlet, on: bool) -> None:
        if not on and outlet.stuck_on:
            return  # the command was accepted; the contacts are welded
        if outlet.on == on:
            return
        outlet.on = on
        outlet.switched += 1
        for rig in outlet.rigs:
            if on:
                rig.power_on()
            elif not any(o.on for o in rig.outlets):
                rig.power_off()

    def switch(self, number: int, on: bool) -> None:
        self._tick()
        outlet = self.outlets[number]
        outlet.back_on_at = None
        self._relay(outlet, on)

    def cycle(self, number: int) -> None:
        self._tick()
        outlet = self.outlets[number]
        self._relay(outlet, False)
        if not outlet.on or outlet.stuck_on:
            outlet.back_on_at = self.clock.now() + CYCLE_OFF_S

    def outlet(self, number: int) -> SimOutlet:
        self._tick()
        return self.outlets[number]

    # ---- faults -------------------------------------------------------------------------------
    def set_fault(self, fault: SwitchFault, params: dict[str, Any]) -> None:
        if fault is SwitchFault.UNREACHABLE:
            self.unreachable = True
            return
        outlet = self._fault_outlet(params)
        if fault is SwitchFault.STUCK_ON:
            outlet.stuck_on = True
        else:
            outlet.frozen_w = outlet.power_w()

    def clear_fault(self, fault: SwitchFault, params: dict[str, Any]) -> None:
        if fault is SwitchFault.UNREACHABLE:
            self.unreachable = False
            return
        outlet = self._fault_outlet(params)
        if fault is SwitchFault.STUCK_ON:
            outlet.stuck_on = False
        else:
            outlet.frozen_w = None

    def _fault_outlet(self, params: dict[str, Any]) -> SimOutlet:
        try:
            return self.outlets[int(params["outlet"])]
        except (KeyError, ValueError, TypeError):
            known = ", ".join(str(n) for n in self.outlets)
            raise ValueError(
                f"switch {self.address}: this fault needs outlet=N, one of {known}"
            ) from None

    def reset(self) -> None:
        """Every outlet on, no faults (rigs cut by this switch cold-boot)."""
        self.unreachable = False
        for outlet in self.outlets.values():
            outlet.stuck_on, outlet.frozen_w, outlet.back_on_at = False, None, None
            self._relay(outlet, True)

    def state(self) -> dict[str, Any]:
        self._tick()
        return {
            "kind": self.kind,
            "address": self.address,
            "unreachable": self.unreachable,
            "outlets": [
                {
                    "outlet": o.number,
                    "on": o.on,
                    "power_w": o.power_w(),
                    "rigs": [r.address for r in o.rigs],
                    "stuck_on": o.stuck_on,
                    "meter_frozen": o.frozen_w is not None,
                    "switched": o.switched,
                }
                for o in self.outlets.values()
            ],
        }

    def uptime_ticks(self) -> int:
        return int((self.clock.now() - self.boot_t) * 100)


# ---- SNMP views ---------------------------------------------------------------------------


class ApcView(snmp.MibView):
    """PowerNet-MIB as an AP8941 (switched, metered by outlet) answers it."""

    def __init__(self, switch: SimSwitch) -> None:
        self.switch = switch

    def objects(self) -> Sequence[tuple[ber.Oid, ber.Value]]:
        sw = self.switch
        sw._tick()
        out: list[tuple[ber.Oid, ber.Value]] = [
            (SYS_DESCR, ber.string("APC Web/SNMP Management Card (MB:v4.1.0 MN:AP8941)")),
            (SYS_OBJECT_ID, ber.oid_value(APC_SYS_OBJECT_ID)),
            (SYS_UPTIME, ber.timeticks(sw.uptime_ticks())),
            (SYS_NAME, ber.string(f"apc-{sw.index}")),
            (APC_MODEL, ber.string("AP8941")),
            (APC_OUTLETS, ber.integer(len(sw.outlets))),
        ]
        for n, o in sw.outlets.items():
            state = APC_IMMEDIATE_ON if o.on else APC_IMMEDIATE_OFF
            out += [
                ((*APC_CONTROL, n), ber.integer(state)),
                ((*APC_STATUS_NAME, n), ber.string(f"Outlet {n}")),
                ((*APC_STATUS_STATE, n), ber.integer(state)),
                ((*APC_METERED_POWER, n), ber.integer(round(o.power_w()))),
            ]
        return out

    def check_set(self, oid: ber.Oid, value: ber.Value) -> None:
        if oid[:-1] != APC_CONTROL:
            raise snmp.SetRefused(ber.NOT_WRITABLE)
        if value.tag != ber.INTEGER:
            raise snmp.SetRefused(ber.WRONG_TYPE)
        if value.value not in (APC_IMMEDIATE_ON, APC_IMMEDIATE_OFF, APC_IMMEDIATE_REBOOT):
            # delayed commands (4-7) exist on real units; the simulator does not model them
            raise snmp.SetRefused(ber.WRONG_VALUE)

    def commit_set(self, oid: ber.Oid, value: ber.Value) -> None:
        n = oid[-1]
        if value.value == APC_IMMEDIATE_REBOOT:
            self.switch.cycle(n)
        else:
            self.switch.switch(n, value.value == APC_IMMEDIATE_ON)


class RaritanView(snmp.MibView):
    """PDU2-MIB as a PX3 answers it (PDU 1, outlet sensors with their decimal digits)."""

    def __init__(self, switch: SimSwitch) -> None:
        self.switch = switch

    def objects(self) -> Sequence[tuple[ber.Oid, ber.Value]]:
        sw = self.switch
        sw._tick()
        out: list[tuple[ber.Oid, ber.Value]] = [
            (SYS_DESCR, ber.string("PX3-5190R")),
            (SYS_OBJECT_ID, ber.oid_value(RARITAN_SYS_OBJECT_ID)),
            (SYS_UPTIME, ber.timeticks(sw.uptime_ticks())),
            (SYS_NAME, ber.string(f"px3-{sw.index}")),
            (RARITAN_OUTLET_COUNT, ber.integer(len(sw.outlets))),
        ]
        for n, o in sw.outlets.items():
            out += [
                ((*RARITAN_NAME, n), ber.string("")),
                ((*RARITAN_OPERATION, n), ber.integer(RARITAN_ON if o.on else RARITAN_OFF)),
                (
                    (*RARITAN_STATE, n),
                    ber.integer(RARITAN_STATE_ON if o.on else RARITAN_STATE_OFF),
                ),
                ((*RARITAN_DIGITS, n, RARITAN_ACTIVE_POWER), ber.gauge(0)),
                ((*RARITAN_VALUE, n, RARITAN_ACTIVE_POWER), ber.gauge(round(o.power_w()))),
            ]
        return out

    def check_set(self, oid: ber.Oid, value: ber.Value) -> None:
        if oid[:-1] != RARITAN_OPERATION:
            raise snmp.SetRefused(ber.NOT_WRITABLE)
        if value.tag != ber.INTEGER:
            raise snmp.SetRefused(ber.WRONG_TYPE)
        if value.value not in (RARITAN_OFF, RARITAN_ON, RARITAN_CYCLE):
            raise snmp.SetRefused(ber.WRONG_VALUE)

    def commit_set(self, oid: ber.Oid, value: ber.Value) -> None:
        n = oid[-1]
        if value.value == RARITAN_CYCLE:
            self.switch.cycle(n)
        else:
            self.switch.switch(n, value.value == RARITAN_ON)


def mib_view(switch: SimSwitch) -> snmp.MibView:
    return ApcView(switch) if switch.kind == "apc" else RaritanView(switch)


# ---- plugs over HTTP ------------------------------------------------------------------------


def _json_reply(value: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps(value).encode(), {"Content-Type": "application/json"})


def shelly_http(switch: SimSwitch, req: HttpRequest) -> HttpResponse:
    """Shelly Gen2+ RPC: ``POST /rpc`` with a JSON-RPC frame, or ``GET /rpc/<Method>?...``."""
    src = f"shellyplusplugs-{switch.mac.replace(':', '').lower()}"
    if req.method == "POST" and req.path == "/rpc":
        try:
            frame = json.loads(req.body)
            method, params, rid = frame["method"], frame.get("params") or {}, frame.get("id")
        except (ValueError, KeyError, TypeError):
            return _json_reply(
                {"id": None, "src": src, "error": {"code": -32700, "message": "parse error"}}
            )
    elif req.method == "GET" and req.path.startswith("/rpc/"):
        method, rid = req.path[len("/rpc/") :], None
        params = {k: v[-1] for k, v in parse_qs(req.query).items()}
        if "on" in params:
            params["on"] = str(params["on"]).lower() == "true"
    else:
        return HttpResponse(404, b"Not Found")

    def error(code: int, message: str) -> HttpResponse:
        return _json_reply({"id": rid, "src": src, "error": {"code": code, "message": message}})

    try:
        sid = int(params.get("id", -1))
    except (TypeError, ValueError):
        return error(-103, "Invalid argument 'id'!")
    if method not in ("Switch.Set", "Switch.GetStatus"):
        return error(404, f"No handler for {method}")
    if sid not in switch.outlets:
        return error(-105, f"Argument 'id', value {sid} not found!")
    if method == "Switch.Set":
        on = params.get("on")
        if not isinstance(on, bool):
            return error(-103, "Missing required argument 'on'!")
        was_on = switch.outlet(sid).on
        switch.switch(sid, on)
        return _json_reply({"id": rid, "src": src, "result": {"was_on": was_on}})
    outlet = switch.outlet(sid)
    power = outlet.power_w()
    status = {
        "id": sid,
        "source": "HTTP_in",
        "output": outlet.on,
        "apower": power,
        "voltage": 230.1,
        "freq": 50.0,
        "current": round(power / 230.1, 3),
        "aenergy": {"total": 0.0, "by_minute": [0.0, 0.0, 0.0], "minute_ts": 0},
        "temperature": {"tC": 41.2, "tF": 106.2},
    }
    return _json_reply({"id": rid, "src": src, "result": status} if rid is not None else status)


def tasmota_http(switch: SimSwitch, req: HttpRequest) -> HttpResponse:
    """Tasmota's ``/cm?cmnd=...``: ``Power``, ``Power1 On|Off|Toggle``, ``Status 8|10``."""
    if req.path != "/cm":
        return HttpResponse(404, b"Not Found")
    cmnd = parse_qs(req.query).get("cmnd", [""])[-1]
    cmnd = unquote(cmnd).strip()
    word, _, arg = cmnd.partition(" ")
    key = word.lower()
    outlet = switch.outlet(1)
    if key in ("power", "power1"):
        arg = arg.strip().lower()
        if arg in ("1", "on"):
            switch.switch(1, True)
        elif arg in ("0", "off"):
            switch.switch(1, False)
        elif arg in ("2", "toggle"):
            switch.switch(1, not outlet.on)
        elif arg:
            return _json_reply({"Command": "Error"})
        # a single-relay device answers "POWER" whatever the index asked
        return _json_reply({"POWER": "ON" if switch.outlet(1).on else "OFF"})
    if key == "status" and arg.strip() in ("8", "10"):
        power = outlet.power_w()
        return _json_reply(
            {
                "StatusSNS": {
                    "Time": "2026-01-01T00:00:00",
                    "ENERGY": {
                        "TotalStartTime": "2026-01-01T00:00:00",
                        "Total": 0.0,
                        "Yesterday": 0.0,
                        "Today": 0.0,
                        "Power": round(power),
                        "ApparentPower": round(power),
                        "ReactivePower": 0,
                        "Factor": 1.0 if power else 0.0,
                        "Voltage": 230,
                        "Current": round(power / 230.0, 3),
                    },
                }
            }
        )
    return _json_reply({"Command": "Unknown"})


def http_handler(switch: SimSwitch, req: HttpRequest) -> HttpResponse:
    return shelly_http(switch, req) if switch.kind == "shelly" else tasmota_http(switch, req)


# ---- wiring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SwitchSpec:
    """``KIND:OUTLETS`` from the command line (plugs: ``shelly`` / ``tasmota``, one outlet)."""

    kind: str
    outlets: int


def parse_switch(text: str) -> SwitchSpec:
    kind, sep, count = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"{text!r}: unknown switch kind {kind!r}; known: {', '.join(KINDS)}")
    if kind in PDU_KINDS:
        if not sep or not count.isdigit() or not 1 <= int(count) <= 48:
            raise ValueError(f"{text!r}: a PDU needs KIND:OUTLETS with 1..48 outlets")
        return SwitchSpec(kind, int(count))
    if sep and count != "1":
        raise ValueError(f"{text!r}: a plug has one outlet")
    return SwitchSpec(kind, 1)


def wire(switches: Sequence[SimSwitch], rigs: Sequence[SimRig], outlets_per_rig: int = 1) -> None:
    """Feed the rigs in order from the switches' outlets in order, ``outlets_per_rig``
    consecutive outlets each; outlets left over stay empty, rigs left over have no switch."""
    if outlets_per_rig < 1:
        raise ValueError("outlets per rig must be at least 1")
    free = [o for sw in switches for o in sw.outlets.values()]
    for i, rig in enumerate(rigs):
        chunk = free[i * outlets_per_rig : (i + 1) * outlets_per_rig]
        if len(chunk) < outlets_per_rig:
            break
        rig.outlets = tuple(chunk)
        for outlet in chunk:
            outlet.rigs.append(rig)


def reset_outlets(rig: SimRig) -> None:
    """Put the outlets feeding ``rig`` back to on, without faults, without touching the rig
    (a rig reset: ``SimRig.factory_reset`` has already powered it)."""
    for outlet in rig.outlets:
        outlet.on, outlet.stuck_on, outlet.frozen_w, outlet.back_on_at = True, False, None, None


class SwitchBank:
    """The switches of one simulator process and their sockets: one UDP socket per PDU (SNMP
    on ``snmp_port``), plugs answering through the fleet server's web port."""

    def __init__(self, switches: Sequence[SimSwitch]) -> None:
        self.switches = list(switches)
        self.by_address = {sw.address: sw for sw in self.switches}
        self.agents: dict[str, snmp.AgentProtocol] = {}
        self._transports: list[asyncio.DatagramTransport] = []

    async def start(
        self,
        http_hosts: dict[str, Callable[[HttpRequest], HttpResponse | None]],
        snmp_port: int = 161,
    ) -> None:
        loop = asyncio.get_running_loop()
        for sw in self.switches:
            if sw.kind in PDU_KINDS:

                def factory(sw: SimSwitch = sw) -> snmp.AgentProtocol:
                    return snmp.AgentProtocol(
                        mib_view(sw),
                        READ_COMMUNITY.encode(),
                        WRITE_COMMUNITY.encode(),
                        lambda: sw.unreachable,
                    )

                transport, agent = await loop.create_datagram_endpoint(
                    factory, local_addr=(sw.address, snmp_port)
                )
                self._transports.append(transport)
                self.agents[sw.address] = agent
            else:

                def host(req: HttpRequest, sw: SimSwitch = sw) -> HttpResponse | None:
                    return None if sw.unreachable else http_handler(sw, req)

                http_hosts[sw.address] = host

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()


def build_switches(
    specs: Sequence[SwitchSpec], clock: SimClock, base_address: str
) -> list[SimSwitch]:
    from simulator.fleet import addresses

    specs = list(specs)
    return [
        SimSwitch(spec.kind, address, spec.outlets, clock, i)
        for i, (spec, address) in enumerate(
            zip(specs, addresses(base_address, len(specs)), strict=True)
        )
    ]
