"""``rigpilot demo`` (``make demo``): the daemon on a simulated fleet through the Feb 2026 slide.

Starts ``rigpilot sim`` with a mixed fleet of 12 rigs (one hung, one slow) in a private network
namespace, then runs rigpilot's control loop against it — observer, market, breakeven policy,
guards, reconciler, audit log — while replaying a market scenario: hashprice sliding from about
$45 to about $30/PH/day, a power-price spike, and a partial recovery. The fleet is shown live:
rig, model, observed and desired mode, hashrate, watts, chip temperature, margin and reason.

Dry-run by default (decisions are made and logged, nothing is sent); ``--live`` commands the
simulated rigs. The simulator runs 30x real time and the loop's clock advances 30 s per tick,
so each tick shown is 30 seconds of site time.

    rigpilot demo [--live] [--speed 1.0] [--ticks 48] [--keep-running]

Part of the installed package, so it runs without a source checkout. It is the one module of
``daemon`` besides the backtest that imports the simulator, and only ``daemon/cli.py`` reaches
it, lazily, for this command (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

FLEET = [
    "--antminer", "s19jpro:2", "--antminer", "s19xp:2", "--antminer", "s21:2",
    "--whatsminer", "m30s+:2", "--whatsminer", "m50s:2", "--whatsminer", "m60s:2",
    "--fault", "127.1.0.2=hang", "--fault", "127.1.0.4=slow,delay_s=1.5",
]  # fmt: skip


def scenario(tick: int, ticks: int) -> tuple[float, float]:
    """(hashprice USD/PH/day, power price USD/kWh) at ``tick``: the Feb 2026 slide."""
    third = ticks / 3
    if tick < 2 * third:  # hashprice slides from 45 to 30
        hashprice = 45.0 - 15.0 * tick / (2 * third)
    else:  # and recovers to about 40
        hashprice = 30.0 + 10.0 * (tick - 2 * third) / third
    spike = int(0.45 * ticks) <= tick < int(0.55 * ticks)
    return hashprice, 0.22 if spike else 0.045


def say(text: str = "") -> None:
    print(text, flush=True)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def render(report: object, tick: int, hashprice: float, power: float, clear: bool) -> str:
    from daemon.loop import TickReport
    from policies.values import Observation

    assert isinstance(report, TickReport)
    lines = []
    if clear:
        lines.append("\x1b[2J\x1b[H")
    lines.append(
        f"tick {tick:3d}  hashprice ${hashprice:5.2f}/PH/day  power ${power:.3f}/kWh"
        f"   ({report.summary()})"
    )
    lines.append(
        f"{'rig':<11} {'model':<10} {'seen':<7} {'want':<7} {'TH/s':>6} {'W':>6} {'°C':>4}  reason"
    )
    for rig_id, desired in sorted(
        report.desired.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("."))
    ):
        reading = report.readings.get(rig_id)
        if isinstance(reading, Observation):
            star = (
                "*" if reading.power_source and reading.power_source.value == "estimated" else " "
            )
            model = reading.identity.model[:10]
            cells = (
                f"{model:<10} {reading.mode.value:<7} {desired.mode.value:<7} "
                f"{reading.hashrate_ths:6.1f} {reading.power_w or 0:5.0f}{star} "
                f"{reading.max_chip_temp_c or 0:4.0f}"
            )
        else:
            kind = getattr(reading, "kind", None)
            cells = f"{'-':<10} {'-':<7} {desired.mode.value:<7} {'unreadable: ' + str(kind):>23}"
        reason = desired.reason.replace("\n", " ")
        lines.append(f"{rig_id:<11} {cells}  [{desired.decided_by}] {reason[:90]}")
    lines.append("* estimated power (stock Antminer firmware reports none)")
    return "\n".join(lines)


def site_sleep(site_s_per_wall_s: float) -> Callable[[float], Awaitable[None]]:
    """A sleep measured in site seconds (the demo's clock runs faster than the wall)."""

    async def sleep(site_s: float) -> None:
        await asyncio.sleep(site_s / site_s_per_wall_s)

    return sleep


async def run(control: Path, live: bool, ticks: int, speed: float) -> None:
    from daemon.audit import AuditLog
    from daemon.loop import ControlLoop
    from daemon.observer import Observer, ObserverSettings
    from daemon.reconciler import Actuator, Reconciler
    from drivers.inventory import Inventory
    from market.hashprice import PushedHashprice
    from market.power import PushedPrice
    from market.service import Market
    from policies.api import Site
    from policies.breakeven import BreakevenPolicy
    from policies.economics import Economics
    from policies.guards import GuardConfig
    from policies.values import QuoteKind
    from simulator.client import SimControl

    sim = SimControl(control)
    addresses = [r["address"] for r in sim.rigs()]
    say(f"Identifying {len(addresses)} simulated rigs ...")
    inventory = Inventory()
    failures = await inventory.ensure(addresses, timeout_s=10)
    for f in failures:
        say(f"  {f.address}: {f.kind.value}: {f.detail}")
    clock = Clock()
    observer = Observer(inventory, ObserverSettings(timeout_s=2.0), clock=clock)
    observer.sync_drivers()
    hashprice, power = PushedHashprice(ttl_s=900), PushedPrice(ttl_s=900)
    terms = Economics(pool_fee=0.02, overhead=1.0)
    audit_path = Path(tempfile.mkdtemp(prefix="rigpilot-demo-")) / "audit.jsonl"
    loop = ControlLoop(
        observer=observer,
        market=Market({QuoteKind.HASHPRICE: [hashprice], QuoteKind.POWER_PRICE: [power]}),
        policies=[BreakevenPolicy()],
        site=Site(name="demo", economics=terms),
        guard_config=GuardConfig(
            min_dwell_s=120,
            hysteresis_usd_per_day=0.25,
            ramp_kw_per_min=8.0,
            economics=terms,
            ramp_horizon_s=30.0,  # the tick: power-ups start 1 s of site time apart within it
        ),
        reconciler=Reconciler(confirm_deadline_s=180),
        actuator=Actuator(
            observer.drivers, dry_run=not live, clock=clock, sleep=site_sleep(30.0 * speed)
        ),
        audit=AuditLog(audit_path),
        market_refresh_s=0.0,
        clock=clock,
    )
    clear = sys.stdout.isatty()
    say(
        f"{'LIVE: commanding the simulated rigs' if live else 'DRY-RUN: nothing is sent'}; "
        f"audit log: {audit_path}"
    )
    for tick in range(ticks):
        hp, pp = scenario(tick, ticks)
        hashprice.push(hp, clock.t, "scenario")
        power.push(pp, clock.t, "scenario")
        report = await loop.tick()
        if clear or tick % 8 == 0 or tick == ticks - 1:
            say(render(report, tick, hp, pp, clear))
        else:
            say(f"tick {tick:3d}  hashprice ${hp:5.2f}  power ${pp:.3f}  {report.summary()}")
        clock.t += 30
        await asyncio.sleep(1.0 / speed)
    stats = sim.stats()
    say(
        f"\nSimulator served {stats['requests']} requests: {stats['reads']} reads, "
        f"{stats['writes']} writes ({'live' if live else 'dry-run: zero writes expected'})."
    )
    say(f"Every decision and command is in {audit_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rigpilot demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="command the simulated rigs")
    parser.add_argument("--ticks", type=int, default=48, help="ticks of 30 s to replay (48)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="ticks per wall second (1; the simulator's physics keeps pace only at 1)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the simulator up afterwards (Ctrl-C to stop)",
    )
    args = parser.parse_args(argv)
    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    from daemon.logsetup import configure_logging

    configure_logging(level="warning", stream=sys.stderr)  # the table is the demo's output
    control = Path(tempfile.mkdtemp()) / "sim.sock"
    sim_args = [*FLEET, "--time-scale", "30"]
    say("Starting: rigpilot sim " + " ".join(sim_args))
    sim = launch.start(sim_args, control)
    try:
        asyncio.run(run(control, args.live, args.ticks, args.speed))
        if args.keep_running:
            say(f"\nSimulator still running (pid {sim.proc.pid}, control {control}); Ctrl-C stops.")
            sim.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
