"""``rigpilot status`` and ``rigpilot config check``: for operators at a shell.

``status`` reads what the running daemon last wrote to its state database (read-only, so it
works while the daemon runs and needs no network); ``config check`` validates a configuration
as the daemon would and prints the effective one, secrets masked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from daemon import efficiency
from daemon.config import ConfigError, Settings, load_settings, resolve_config_path
from daemon.control_config import ControlSettings
from daemon.lifecycle import is_running
from daemon.store import StoreError, read_efficiency, read_status
from drivers import catalogue
from policies.values import rig_text

EXIT_STOPPED = 3  # as systemctl status: "not running"
EXIT_STALE = 4  # running, but no tick completed within the watchdog's deadline
EXIT_NEVER_RAN = 5  # no daemon has run on this state directory

STATUS_EPILOG = """exit status:
  0  running: the last tick is fresh (or the daemon is starting)
  2  the configuration or the state database cannot be read
  3  stopped: stopped cleanly, or its process is gone (killed, crashed)
  4  stale: the process runs but has completed no tick within the watchdog's deadline
  5  never ran: no daemon has written a status in this state directory"""


def _settings(path: Path | None, prog: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rigpilot status",
        description="Print the daemon's state and fleet summary (from its state database).",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="configuration file (for state_dir)")
    p.add_argument("--state-dir", type=Path, default=None, help="override the state directory")
    p.add_argument("--json", action="store_true", help="the whole status document as JSON")
    p.add_argument(
        "--efficiency",
        action="store_true",
        help="also list each rig's efficiency learned from its measured watts, as last saved "
        "(J/TH against the catalogue's, source, samples); with --json, under 'efficiency_rigs'",
    )
    return p


def main_status(argv: Sequence[str]) -> int:
    args = _status_parser().parse_args(argv)
    state_dir = args.state_dir
    control = ControlSettings()
    if state_dir is None:
        settings = _settings(args.config, "rigpilot status")
        if settings is None:
            return 2
        state_dir, control = settings.state_dir, settings.control
    try:
        status, written = read_status(state_dir)
        process, _ = read_status(state_dir, "process")
        learned = learned_rigs(read_efficiency(state_dir)) if args.efficiency else None
    except StoreError as exc:
        print(f"rigpilot status: {exc}", file=sys.stderr)
        return 2
    if status is None and process is None:
        print(f"rigpilot status: no daemon has run on {state_dir}")
        return EXIT_NEVER_RAN
    now = time.time()
    proc = process or {}
    state, exit_code, how = _judge(proc, written, control, now)
    if args.json:
        doc = {
            **(status or {}),
            "state": state,
            "age_s": None if written is None else round(now - written, 1),
            "stale": state == "stale",
            "process": process,
        }
        if learned is not None:
            doc["efficiency_rigs"] = learned
        print(json.dumps(doc, indent=2))
        return exit_code
    shown = status or {}
    mode = "DRY-RUN" if shown.get("dry_run") else "live"
    version = proc.get("version") or shown.get("version", "")
    print(f"rigpilot {version} pid {proc.get('pid')} ({mode}): {how}")
    if status is not None and written is not None:
        _print_summary(status, now - written)
    if proc.get("last_reload"):
        _print_reload(proc["last_reload"])
    if learned is not None:
        _print_learned(learned)
    return exit_code


def _judge(
    proc: Mapping[str, Any], written: float | None, control: ControlSettings, now: float
) -> tuple[str, int, str]:
    """(state, exit status, what to say) of the daemon its ``process`` document describes,
    whose status was last ``written`` then."""
    pid = proc.get("pid")
    wedged_after_s = float(proc.get("wedged_after_s") or control.wedged_after())
    started_at = proc.get("started_at")
    ticked = written is not None and (started_at is None or written >= started_at)
    age = now - written if ticked and written is not None else None
    if proc.get("stopped_at") is not None:
        return "stopped", EXIT_STOPPED, f"STOPPED at {_utc(proc['stopped_at'])} (a clean stop)"
    if not isinstance(pid, int) or not is_running(pid, proc.get("pid_start")):
        gone = f"STOPPED: process {pid} is gone (killed or crashed; it did not stop cleanly)"
        return "stopped", EXIT_STOPPED, gone
    if age is None:
        since = f" for {now - started_at:.0f} s" if started_at is not None else ""
        return "starting", 0, f"starting{since}: no tick completed yet"
    if age > wedged_after_s:
        stale = f"STALE: running, but no tick completed for {age:.0f} s: is it wedged?"
        return "stale", EXIT_STALE, stale
    return "running", 0, "running"


def _print_summary(status: Mapping[str, Any], age_s: float) -> None:
    print(f"  {rig_text(status.get('summary', ''), 2000)}")
    if status.get("conflict"):  # another instance announces this site (docs/mqtt.md)
        print(f"  CONFLICT: {rig_text(status['conflict'], 2000)}")
    extra = [f"policies: {', '.join(status.get('policies') or [])}"]
    if status.get("pins"):
        extra.append(f"{status['pins']} operator pin(s)")
    if status.get("site_target_kw") is not None:
        extra.append(f"site target {status['site_target_kw']:g} kW")
    print("  " + "; ".join(extra))
    learned = status.get("efficiency")
    if learned:
        print(
            f"  efficiency: {learned.get('learned_meter', 0)} rig(s) learned from their meters, "
            f"{learned.get('learned_reported', 0)} from their own reports, "
            f"{learned.get('learning', 0)} learning; the others on the catalogue"
        )
    print(f"  last tick {age_s:.0f} s ago")


def learned_rigs(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The stored rows as shown (daemon/efficiency.py ``shown``), by rig; a row that is not one
    is listed with its problem."""
    out: list[dict[str, Any]] = []
    for rig_id in sorted(rows):
        row = rows[rig_id]
        try:
            learned = efficiency.from_dict(row)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            out.append({"rig": rig_id, "problem": f"unreadable row: {exc!r}"})
            continue
        entry = catalogue.lookup(learned.make, learned.model)
        view = efficiency.shown(learned, entry).as_dict()
        out.append({"rig": rig_id, "model": learned.model, **view})
    return out


def _print_learned(rigs: Sequence[Mapping[str, Any]]) -> None:
    print(f"  learned efficiency ({len(rigs)} rig(s) with samples; the others on the catalogue):")
    for r in rigs:
        if "problem" in r:
            print(f"    {rig_text(r['rig'])}: {r['problem']}")
            continue
        rated = r["catalogue_j_per_th"]
        vs = ""
        if r["source"] == "learned" and rated:
            vs = f" ({(r['j_per_th'] / rated - 1) * 100:+.1f} % vs the catalogue's {rated:g})"
        source = f"learned from {r['learned_from']}" if r["source"] == "learned" else "catalogue"
        jth = "n/a" if r["j_per_th"] is None else f"{r['j_per_th']:g}"
        print(
            f"    {rig_text(r['rig'])} {rig_text(r['model'], 64)}: {r['mode']} {jth} J/TH{vs}, "
            f"{source}, {r['samples']} sample(s)"
        )


def _print_reload(reload: Mapping[str, Any]) -> None:
    if reload.get("ok"):
        changed = ", ".join(reload.get("changed") or []) or "no changes"
        print(f"  last reload {_utc(reload['at'])}: applied ({changed})")
    else:
        error = "\n    ".join(str(reload.get("error")).splitlines())
        print(f"  last reload {_utc(reload['at'])}: REJECTED, the running configuration")
        print(f"    was kept: {error}")


def main_config(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rigpilot config",
        description="Configuration tools.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a configuration and print the effective one, secrets masked",
        description="Validate FILE (default: $RIGPILOT_CONFIG, then /etc/rigpilot/rigpilot.toml)"
        " with the RIGPILOT_* environment applied, as `rigpilot run` would; print the "
        "effective configuration with secrets masked. Exit status 2 names every problem. "
        "Warnings (the exit status stays 0) name what would not work as meant under the "
        "shipped systemd unit: a file its dynamic user could not read, a secret every local "
        "user can read, no rigs, no power price source.",
    )
    check.add_argument("file", nargs="?", type=Path, default=None)
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    sub.add_parser(
        "example",
        help="print the commented example configuration shipped with rigpilot",
        description="Print the commented example configuration (every section, with defaults "
        "and explanations) to start /etc/rigpilot/rigpilot.toml from.",
    )
    args = p.parse_args(argv)
    if args.action == "example":
        print(example_config(), end="")
        return 0
    path = resolve_config_path(args.file)
    settings = _settings(args.file, "rigpilot config check")
    if settings is None:
        return 2
    from daemon.config_warnings import config_warnings

    for warning in config_warnings(settings, path):
        print(f"rigpilot config check: warning: {warning}", file=sys.stderr)
    problems = semantic_problems(settings)
    for problem in problems:
        print(f"rigpilot config check: {problem}", file=sys.stderr)
    if problems:
        return 2
    doc = effective(settings)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        source = str(path) if path else "no file: defaults and environment"
        print(f"# effective configuration ({source}); secrets masked")
        print(to_toml(doc), end="")
    return 0


def example_config() -> str:
    """The example configuration installed with the package (daemon/rigpilot.example.toml)."""
    return resources.files("daemon").joinpath("rigpilot.example.toml").read_text("utf-8")


def semantic_problems(settings: Settings) -> list[str]:
    """What load_settings cannot see but `rigpilot run` would refuse: the daemon's own
    validation (daemon/prepare.py), which builds every source, policy and guard."""
    import httpx

    from daemon.prepare import ConfigProblems, prepare

    try:  # the sources are only built, never asked: nothing is fetched
        prepare(settings, httpx.AsyncClient())
    except ConfigProblems as exc:
        return list(exc.problems)
    return []


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as plain data; SecretStr values are masked by pydantic's JSON mode."""
    data: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    return data


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_scalar(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML rendering of ``doc`` (None values are shown as comments: TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in doc.items():
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if (
            isinstance(value, dict)
            and value
            and all(not isinstance(v, dict) or v for v in value.values())
        ):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        elif value is None:
            lines.append(f"# {_key(key)} = (unset)")
        else:
            lines.append(f"{_key(key)} = {_scalar(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, name)
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name)
    return out
