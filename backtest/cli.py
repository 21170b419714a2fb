"""``rigpilot backtest``: the command line (docs/backtest.md)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TextIO

from backtest.classes import ProgressFn, ReplayConfig
from backtest.cohorts import Counters, PolicyFailed
from backtest.engine import replay
from backtest.inputs import (
    BacktestInputError,
    Fleet,
    Market,
    load_fleet,
    load_market,
    parse_policies,
)
from backtest.report import (
    DEFAULT_SPIKE_USD_PER_KWH,
    Figures,
    SpikeRule,
    Spikes,
    money,
    spikes_of,
    summary,
    write_csv,
    write_report,
)

SWEEP_KEYS = {
    "policy": "policies, '+' joins several (breakeven+power-cap)",
    "hysteresis": "guards.hysteresis_usd_per_day",
    "dwell": "guards.min_dwell_s",
    "ramp_kw": "guards.ramp_kw_per_min",
    "ramp_rigs": "guards.ramp_rigs_per_s",
    "tick": "control.tick_s",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rigpilot backtest",
        description=(
            "Replay a hashprice and power-price history through the live policies and guards, "
            "on the simulator's rig physics, and report what it would have earned against "
            "always-on and a plain on/off threshold."
        ),
    )
    p.add_argument(
        "--market",
        type=Path,
        required=True,
        help="CSV or JSON (UTF-8, a byte-order mark allowed): time, hashprice_usd_per_ph_day, "
        "power_price_usd_per_kwh (or power_price_usd_per_mwh); rows 5 minutes to 1 hour apart",
    )
    p.add_argument(
        "--fleet",
        type=Path,
        required=True,
        help="TOML or JSON [[rigs]] groups: model, count, optional health, health_spread, "
        "health_buckets, ambient_c, group, modes (the rigpilot sim fleet format)",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="policy name, or several joined by '+' (breakeven+power-cap), as installed",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="a rigpilot configuration (as for rigpilot run): [control] tick, guards, "
        "power_cap_kw, policy_params and [market] economics; default: built-in defaults",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for the report files")
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="compare settings in one run (repeatable; every combination): "
        + "; ".join(f"{k} ({v})" for k, v in SWEEP_KEYS.items()),
    )
    p.add_argument("--tick", type=float, help="seconds between ticks (default: control.tick_s, 30)")
    p.add_argument("--seed", type=int, default=0, help="the ramp jitter's seed (default 0)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="call policies and guards at every tick, never skipping (slow; for checking)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="sweep runs replayed at once, one process each (default: one per CPU this "
        "process may use, at most one per run; 1: one after the other)",
    )
    spikes = p.add_mutually_exclusive_group()
    spikes.add_argument(
        "--spike-price",
        type=float,
        metavar="USD_PER_KWH",
        help="a market row is a price spike when its power price is at least this (default "
        f"{DEFAULT_SPIKE_USD_PER_KWH:g}); the report splits the gain against always-on into "
        "spikes, low hashprice and the cost of changes",
    )
    spikes.add_argument(
        "--spike-top",
        type=float,
        metavar="PCT",
        help="instead: the top PCT %% of the rows by power price are the spikes",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal")
    return p


def spike_rule(args: argparse.Namespace) -> SpikeRule:
    """The spike rule from ``--spike-price`` or ``--spike-top``; BacktestInputError if bad."""
    if args.spike_top is not None:
        if not 0 < args.spike_top <= 100:
            raise BacktestInputError(f"--spike-top: {args.spike_top:g} is not a percentage 0..100")
        return SpikeRule(top_pct=args.spike_top)
    if args.spike_price is not None:
        if not math.isfinite(args.spike_price):
            raise BacktestInputError(f"--spike-price: {args.spike_price} is not a number")
        return SpikeRule(price_usd_per_kwh=args.spike_price)
    return SpikeRule()


def cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one run of a sweep reports back: its figures, not the whole replay."""

    label: str
    config: ReplayConfig
    name: str
    out: Path
    wall_s: float
    counters: Counters | None
    figures: list[Figures]
    spikes: Spikes
    failures: tuple[PolicyFailed, ...] = ()
    """Policies that failed during the replay (each failing tick held the fleet, as live)."""


def run_one(
    label: str,
    cfg: ReplayConfig,
    market: Market,
    fleet: Fleet,
    out: Path,
    progress: ProgressFn | None,
    rule: SpikeRule | None = None,
) -> RunResult:
    """Replay one setting and write its report into ``out``; also the body of a sweep's
    worker process (everything it takes and returns pickles)."""
    from policies.registry import load_policy

    policies = [load_policy(name) for name in cfg.policies]
    name = _run_name(label, cfg)
    started = time.perf_counter()
    outcome = replay(market, fleet, policies, cfg, progress)
    wall = time.perf_counter() - started
    if progress is not None:
        print(file=sys.stderr)
    notes = [f"sweep: {label}"] if label else []
    notes += [f"FAILED: {f}" for f in outcome.failures]
    rule = rule or SpikeRule()
    write_report(outcome, out, f"rigpilot backtest: {name}", notes, rule)
    spikes, _ = spikes_of(outcome, rule)
    figs = summary(outcome, rule)
    counters = outcome.policy.counters
    return RunResult(label, cfg, name, out, wall, counters, figs, spikes, outcome.failures)


def base_config(args: argparse.Namespace) -> ReplayConfig:
    """The replay's settings: the configuration file's (or defaults), then the flags."""
    from policies.api import Site
    from policies.economics import Economics
    from policies.guards import GuardConfig
    from policies.registry import available_policies

    policies = parse_policies(args.policy, available_policies())
    if args.config is not None:
        from daemon.config import ConfigError, load_settings

        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            raise BacktestInputError(f"{args.config}: {exc}") from exc
        control = settings.control
        economics = settings.market.economics
        site = Site(
            name=settings.site.name,
            economics=economics,
            power_cap_kw=control.power_cap_kw,
            params=dict(control.policy_params),
        )
        guards = control.guards.to_config(economics, control.tick_s, control.off.rule())
        tick = control.tick_s
    else:
        economics = Economics()
        site, guards, tick = Site(economics=economics), GuardConfig(economics=economics), 30.0
    if args.tick is not None:
        if args.tick < 1:
            raise BacktestInputError(f"--tick: {args.tick:g} s is below 1 s")
        tick = args.tick
    return ReplayConfig(policies, guards, site, tick, args.seed, args.exact)


def parse_sweep(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in SWEEP_KEYS:
            raise BacktestInputError(
                f"--sweep {item!r}: want KEY=V1,V2 with KEY one of {', '.join(SWEEP_KEYS)}"
            )
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise BacktestInputError(f"--sweep {item!r}: no values")
        if any(k == key for k, _ in out):
            raise BacktestInputError(f"--sweep {key}: given twice")
        out.append((key, vals))
    return out


def apply_setting(config: ReplayConfig, key: str, value: str) -> ReplayConfig:
    """``config`` with one swept setting changed; BacktestInputError for a bad value."""
    if key == "policy":
        from policies.registry import available_policies

        return dataclasses.replace(config, policies=parse_policies(value, available_policies()))
    try:
        number = float(value)
    except ValueError:
        raise BacktestInputError(f"--sweep {key}: {value!r} is not a number") from None
    if key == "tick":
        if number < 1:
            raise BacktestInputError(f"--sweep tick: {value} s is below 1 s")
        return dataclasses.replace(config, tick_s=number)
    g = config.guards
    try:
        if key == "hysteresis":
            guards = dataclasses.replace(g, hysteresis_usd_per_day=number)
        elif key == "dwell":
            guards = dataclasses.replace(g, min_dwell_s=number)
        elif key == "ramp_kw":
            guards = dataclasses.replace(g, ramp_kw_per_min=number)
        else:
            guards = dataclasses.replace(g, ramp_rigs_per_s=number)
    except ValueError as exc:
        raise BacktestInputError(f"--sweep {key}={value}: {exc}") from None
    return dataclasses.replace(config, guards=guards)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:  # noqa: C901, PLR0912, PLR0915  the command line, each option checked with its own message
    """Entry point of ``rigpilot backtest``; returns the exit status (2 on bad input, 1 when a
    policy failed during a replay)."""
    stdout = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        market = load_market(args.market)
        fleet = load_fleet(args.fleet)
        config = base_config(args)
        sweep = parse_sweep(args.sweep)
        runs: list[tuple[str, ReplayConfig]] = []
        for combo in itertools.product(*(vals for _, vals in sweep)):
            cfg, parts = config, []
            for (key, _), value in zip(sweep, combo, strict=True):
                cfg = apply_setting(cfg, key, value)
                parts.append(f"{key}={value}")
            runs.append((" ".join(parts), cfg))
        if args.jobs is not None and args.jobs < 1:
            raise BacktestInputError(f"--jobs: {args.jobs} is below 1")
        rule = spike_rule(args)
    except BacktestInputError as exc:
        print(f"rigpilot backtest: error: {exc}", file=sys.stderr)
        return 2
    from policies.api import check_site
    from policies.registry import PolicyLoadError, load_policy

    for _, cfg in runs:  # unknown names and unusable policy settings stop it here, not mid-run
        for name in cfg.policies:
            try:
                check_site(load_policy(name), cfg.site)
            except PolicyLoadError as exc:
                print(f"rigpilot backtest: error: {exc}", file=sys.stderr)
                return 2
            except ValueError as exc:
                print(f"rigpilot backtest: error: policy_params ({name}): {exc}", file=sys.stderr)
                return 2

    print(
        f"market {market.path}: {len(market.rows)} rows every {market.interval_s} s; "
        f"fleet {fleet.path}: {fleet.rigs} rigs",
        file=stdout,
    )
    if fleet.ignored:
        print(f"  ignored (simulator-only): {', '.join(fleet.ignored)}", file=stdout)

    base: Path = args.out

    def out_dir(n: int) -> Path:
        return base if len(runs) == 1 else base / f"run-{n:02d}"

    jobs = min(len(runs), args.jobs if args.jobs is not None else cpus())
    results: list[RunResult] = []
    if jobs <= 1:
        for n, (label, cfg) in enumerate(runs, start=1):
            name = _run_name(label, cfg)
            progress = None if args.quiet else _progress(f"[{n}/{len(runs)}] {name}")
            result = run_one(label, cfg, market, fleet, out_dir(n), progress, rule)
            _failed(n, len(runs), result)
            _shown(result, stdout)
            results.append(result)
    else:
        if not args.quiet:
            print(f"{len(runs)} runs, {jobs} at a time", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {
                pool.submit(run_one, label, cfg, market, fleet, out_dir(n), None, rule): n
                for n, (label, cfg) in enumerate(runs, start=1)
            }
            done: dict[int, RunResult] = {}
            for future in as_completed(futures):
                n = futures[future]
                done[n] = result = future.result()
                _failed(n, len(runs), result)
                if not args.quiet:
                    print(
                        f"[{n}/{len(runs)}] {result.name}: done in {result.wall_s:.1f} s",
                        file=sys.stderr,
                    )
        for n in sorted(done):  # shown in run order, whatever order they finished in
            _shown(done[n], stdout)
            results.append(done[n])
    if len(runs) > 1:
        _write_sweep(results, args.out, stdout)
    failed = sum(1 for r in results if r.failures)
    if failed:  # every report is written, and says so; the exit status says it too
        print(
            f"rigpilot backtest: {failed} of {len(runs)} runs had a failing policy (see above): "
            "the fleet held at each failing tick, as the daemon would; their figures say "
            "nothing about that policy",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_name(label: str, cfg: ReplayConfig) -> str:
    """What a run is called: its sweep settings, or its policies."""
    return label or "+".join(cfg.policies)


def _failed(n: int, total: int, result: RunResult) -> None:
    for failure in result.failures:
        print(
            f"\nrigpilot backtest: error: [{n}/{total}] {result.name}: {failure}", file=sys.stderr
        )


def _shown(result: RunResult, out: TextIO) -> None:
    print(f"\n{result.name}: {result.wall_s:.1f} s, report in {result.out}/", file=out)
    c = result.counters
    if c is not None:
        print(
            f"  {c.ticks} ticks, policies called {c.decide_calls}x, guards {c.guard_calls}x, "
            f"at most {c.peak_units} cohorts",
            file=out,
        )
    _table(result.figures, out)
    _gains(result.figures, result.spikes, out)
    flag = run_flag(result)
    if flag:
        print(f"  note: {flag}", file=out)


def _progress(label: str) -> ProgressFn:
    tty = sys.stderr.isatty()
    shown = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // total
        if tty:
            print(f"\r{label}: {pct:3d}% ({done}/{total} rows)", end="", file=sys.stderr)
        elif pct // 10 != shown[0]:
            shown[0] = pct // 10
            print(f"{label}: {pct}% ({done}/{total} rows)", file=sys.stderr)

    return report


def _table(figs: Sequence[Figures], out: TextIO) -> None:
    base = next(f.profit_usd for f in figs if f.name == "always-on")
    print(
        f"  {'strategy':<10} {'profit USD':>13} {'vs always-on':>13} {'energy MWh':>11} "
        f"{'revenue USD':>13} {'power USD':>12} {'rig-h asleep':>12} {'changes/rig':>11} "
        f"{'ramp kW/min':>11}",
        file=out,
    )
    for f in figs:
        print(
            f"  {f.name:<10} {f.profit_usd:>13,.2f} {f.profit_usd - base:>+13,.2f} "
            f"{f.energy_mwh:>11,.2f} {f.revenue_usd:>13,.2f} {f.cost_usd:>12,.2f} "
            f"{f.rig_hours_asleep:>12,.1f} {f.mode_changes_per_rig_mean:>11.2f} "
            f"{f.steepest_ramp_kw_per_min:>11,.1f}",
            file=out,
        )


def inert_reasons(cfg: ReplayConfig) -> list[str]:
    """Settings that leave a configured policy with nothing to do (it answers no intents)."""
    reasons = []
    if "power-cap" in cfg.policies and cfg.site.power_cap_kw is None:
        reasons.append("power-cap: no power cap configured ([control] power_cap_kw)")
    if "schedule" in cfg.policies and not cfg.site.params.get("schedule"):
        reasons.append("schedule: no schedule windows configured (policy_params.schedule)")
    return reasons


def run_flag(result: RunResult) -> str:
    """ "policy failed: ..." when a policy failed during the run; "inert: ..." when the policy
    never changed a rig's mode (the run is always-on); else ""."""
    if result.failures:
        names = ", ".join(repr(f.policy) for f in result.failures)
        return f"policy failed: {names} (the fleet held at each failing tick)"
    if result.figures[0].mode_changes:
        return ""
    why = "; ".join(inert_reasons(result.config)) or "its settings never asked for a change"
    return f"inert: the policy never acted, the run equals always-on ({why})"


def sweep_flags(results: Sequence[RunResult]) -> list[str]:
    """Per run of a sweep: why it is not a result of its own (inert, or the same figures as an
    earlier run, with the setting that made no difference when it is known), or ""."""
    flags = []
    for n, result in enumerate(results):
        flag = run_flag(result)
        twin = next((k for k in range(n) if results[k].figures[0] == result.figures[0]), None)
        if twin is not None:
            same = f"identical to run-{twin + 1:02d}"
            reasons = [
                r
                for r in inert_reasons(result.config)
                if r not in inert_reasons(results[twin].config)
            ]
            same += f" ({'; '.join(reasons)})" if reasons else ""
            flag = f"{flag}; {same}" if flag else same
        flags.append(flag)
    return flags


def _gains(figs: Sequence[Figures], spikes: Spikes, out: TextIO) -> None:
    """Where each strategy's gain against always-on came from."""
    base = next(f for f in figs if f.name == "always-on")
    print(f"  gain against always-on, by source (spikes: {spikes.describe()}):", file=out)
    print(
        f"  {'strategy':<10} {'vs always-on':>13} {'from spikes':>13} {'low hashprice':>14} "
        f"{'changes cost':>13}",
        file=out,
    )
    for f in figs:
        if f is base:
            continue
        print(
            f"  {f.name:<10} {money(f.profit_usd - base.profit_usd):>+13,.2f} "
            f"{money(f.gain_spikes_usd):>+13,.2f} {money(f.gain_low_hashprice_usd):>+14,.2f} "
            f"{money(f.cost_of_changes_usd):>13,.2f}",
            file=out,
        )


def _write_sweep(results: Sequence[RunResult], out_dir: Path, out: TextIO) -> None:
    header = [
        "run",
        "settings",
        "policies",
        "hysteresis_usd_per_day",
        "min_dwell_s",
        "tick_s",
        "profit_usd",
        "profit_vs_always_on_usd",
        "profit_vs_threshold_usd",
        "energy_mwh",
        "rig_hours_asleep",
        "mode_changes_per_rig_mean",
        "mode_changes_per_rig_max",
        "steepest_ramp_kw_per_min",
        "gain_from_spikes_usd",
        "gain_from_low_hashprice_usd",
        "cost_of_changes_usd",
        "flag",
    ]
    rows: list[list[object]] = []
    print("\nsweep:", file=out)
    flags = sweep_flags(results)
    for n, result in enumerate(results, start=1):
        label, cfg = result.label, result.config
        pol, always, thr = result.figures
        flag = flags[n - 1]
        rows.append(
            [
                f"run-{n:02d}",
                label,
                "+".join(cfg.policies),
                cfg.guards.hysteresis_usd_per_day,
                cfg.guards.min_dwell_s,
                cfg.tick_s,
                round(pol.profit_usd, 2),
                round(pol.profit_usd - always.profit_usd, 2),
                round(pol.profit_usd - thr.profit_usd, 2),
                round(pol.energy_mwh, 4),
                round(pol.rig_hours_asleep, 2),
                round(pol.mode_changes_per_rig_mean, 3),
                pol.mode_changes_per_rig_max,
                round(pol.steepest_ramp_kw_per_min, 2),
                money(pol.gain_spikes_usd),
                money(pol.gain_low_hashprice_usd),
                money(pol.cost_of_changes_usd),
                flag,
            ]
        )
        print(
            f"  run-{n:02d} {label:<42} profit {pol.profit_usd:>12,.2f} "
            f"({pol.profit_usd - always.profit_usd:+,.2f} vs always-on, "
            f"{pol.profit_usd - thr.profit_usd:+,.2f} vs threshold), "
            f"{pol.mode_changes_per_rig_mean:.2f} changes/rig, "
            f"changes cost {money(pol.cost_of_changes_usd):,.2f}" + (f"  [{flag}]" if flag else ""),
            file=out,
        )
    write_csv(out_dir / "sweep.csv", header, rows)
    print(f"  comparison in {out_dir / 'sweep.csv'}", file=out)
