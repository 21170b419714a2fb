"""``rigpilot fleet``: every site on a broker from its retained topics (daemon/mqtt/sites.py,
daemon/sites_cli.py). The pure view against hand-written payloads, then the command against a
real Mosquitto: sites listed, a malformed retained payload named, an unreachable broker, a
refused login and a wrong CA each a clear one-line error."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from broker import USERS, Broker, free_port, make_pki

from daemon.cli import main as cli_main
from daemon.mqtt import sites
from daemon.sites_cli import main

NOW = 1_800_000_000.0


def fleet_doc(**over: object) -> bytes:
    doc: dict[str, object] = {
        "site": "north",
        "at": NOW - 12.0,
        "rigs": 40,
        "online": 38,
        "hashing": 30,
        "hashrate_ths": 4012.25,
        "power_kw": 120.5,
        "curtailed": 10,
        "curtailed_kw": 31.0,
        "would_curtail": None,
        "would_curtail_kw": None,
        "dry_run": False,
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_gather_reads_each_sites_retained_topics_and_names_what_it_cannot_read() -> None:
    retained = {
        "rigpilot/north/bridge/state": b"online",
        "rigpilot/north/bridge/info": b'{"version": "1.2.3", "site": "north", "others": []}',
        "rigpilot/north/fleet/state": fleet_doc(),
        "rigpilot/north/link/state": b"1",
        "rigpilot/south/bridge/state": b"online",  # its daemon's last word ...
        "rigpilot/south/link/state": b"0",  # ... before its bridge went down
        "rigpilot/south/fleet/state": fleet_doc(site="south", dry_run=True, would_curtail=4),
        "rigpilot/east/bridge/state": b"offline",
        "rigpilot/east/bridge/info": b"",  # cleared: skipped
        "rigpilot/bad/bridge/state": b"maybe",
        "rigpilot/bad/link/state": b"up",
        "rigpilot/bad/bridge/info": b"[1, 2]",
        "rigpilot/bad/fleet/state": b"{not json",
        "rigpilot/typed/fleet/state": fleet_doc(rigs="forty", power_kw=True, at=None),
        "rigpilot/north/rig/10.0.0.1/state": b"{}",  # not one of the four: ignored
        "elsewhere/west/bridge/state": b"online",  # another base topic
    }
    views = sites.gather("rigpilot", retained)
    assert sorted(views) == ["bad", "east", "north", "south", "typed"]
    north = sites.row(views["north"], NOW)
    assert north == {
        "site": "north",
        "state": "online",
        "availability": "online",
        "link": True,
        "rigs": 40,
        "online": 38,
        "hashrate_ths": 4012.25,
        "power_kw": 120.5,
        "curtailed": 10,
        "curtailed_share": 0.25,
        "curtailed_kw": 31.0,
        "dry_run": False,
        "last_tick_at": NOW - 12.0,
        "last_tick_age_s": 12.0,
        "version": "1.2.3",
        "conflict": False,
        "problems": [],
    }
    south = sites.row(views["south"], NOW)
    assert (south["state"], south["availability"], south["link"]) == ("link down", "online", False)
    assert (south["curtailed"], south["curtailed_share"], south["dry_run"]) == (4, 0.1, True)
    east = sites.row(views["east"], NOW)
    assert (east["state"], east["rigs"], east["last_tick_at"], east["problems"]) == (
        "offline",
        None,
        None,
        [],
    )
    assert views["bad"].state == "unknown"
    assert views["bad"].problems == [
        "rigpilot/bad/bridge/info: not a JSON object (a list)",
        "rigpilot/bad/bridge/state: expected online or offline, got b'maybe'",
        "rigpilot/bad/fleet/state: not JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))",
        "rigpilot/bad/link/state: expected 1 or 0 (a bridge notice), got b'up'",
    ]
    assert views["typed"].fleet is None
    assert views["typed"].problems == [
        "rigpilot/typed/fleet/state: power_kw is not a number (True); rigs is not a whole "
        "number ('forty'); at (the tick's time) is missing"
    ]


def test_the_table_shows_one_line_per_site() -> None:
    views = sites.gather(
        "rigpilot",
        {
            "rigpilot/north/bridge/state": b"online",
            "rigpilot/north/fleet/state": fleet_doc(),
            "rigpilot/far-away/link/state": b"0",
            "rigpilot/twin/bridge/state": b"online",
            "rigpilot/twin/bridge/info": b'{"others": [{"instance": "ab12", "host": "b"}]}',
        },
    )
    rows = [sites.row(v, NOW) for v in views.values()]
    assert sites.table(rows).splitlines() == [
        "SITE      STATE            RIGS   TH/s    kW     CURTAILED  LAST TICK",
        "far-away  link down        -      -       -      -          -",
        "north     online           38/40  4012.2  120.5  10 (25%)   "
        "2027-01-15 07:59:48 UTC (12 s ago)",
        "twin      online CONFLICT  -      -       -      -          -",
    ]


# --- the command against a real broker ---------------------------------------------------------


def retain(broker: Broker, user: str, topic: str, payload: bytes) -> None:
    args = ["mosquitto_pub", *broker.client_args(user, v5=False), "-q", "1", "-r", "-t", topic]
    subprocess.run([*args, "-m", payload.decode()], check=True, capture_output=True, timeout=10)


def viewer_args(broker: Broker, tmp: Path, *, password: str | None = None) -> list[str]:
    secret = tmp / "viewer-password"
    secret.write_text((password or USERS["viewer"]) + "\n")
    return [
        *("--broker", f"127.0.0.1:{broker.port}", "--ca-file", str(broker.pki["ca"])),
        *("--username", "viewer", "--password-file", str(secret)),
    ]


@pytest.fixture(scope="module")
def published(broker: Broker) -> Broker:
    for site in ("alpha", "beta", "gamma"):
        broker.add_site(site)
    retain(broker, "alpha", "rigpilot/alpha/bridge/state", b"online")
    retain(broker, "alpha", "rigpilot/alpha/fleet/state", fleet_doc(site="alpha", at=1e9))
    retain(broker, "beta", "rigpilot/beta/bridge/state", b"offline")
    retain(broker, "gamma", "rigpilot/gamma/bridge/state", b"online")
    retain(broker, "gamma", "rigpilot/gamma/fleet/state", b"{not json")
    return broker


def test_fleet_lists_every_site_and_names_a_malformed_payload(
    published: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*viewer_args(published, tmp_path), "--json"]) == 3
    out, err = capsys.readouterr()
    rows = {r["site"]: r for r in json.loads(out)["sites"]}
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    assert (rows["alpha"]["state"], rows["alpha"]["rigs"], rows["alpha"]["last_tick_at"]) == (
        "online",
        40,
        1e9,
    )
    assert rows["beta"]["state"] == "offline" and rows["beta"]["rigs"] is None
    assert rows["gamma"]["state"] == "online" and rows["gamma"]["rigs"] is None
    assert err.splitlines() == [
        "rigpilot fleet: unreadable: rigpilot/gamma/fleet/state: not JSON (Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    # The same through the console script's dispatcher, as a table.
    assert cli_main(["fleet", *viewer_args(published, tmp_path)]) == 3
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["SITE", "STATE", "RIGS", "TH/s", "kW", "CURTAILED", "LAST", "TICK"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["alpha", "online"],
        ["beta", "offline"],
        ["gamma", "online"],
    ]


def test_no_site_seen_is_an_error_naming_the_base_topic(
    published: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*viewer_args(published, tmp_path), "--base-topic", "nothing"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("rigpilot fleet: no site seen under nothing/ on 127.0.0.1:"), err


def test_a_refused_login_is_one_clear_line(
    published: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(viewer_args(published, tmp_path, password="wrong")) == 1
    err = capsys.readouterr().err
    assert err == (
        f"rigpilot fleet: broker 127.0.0.1:{published.port} refused the connection: "
        "Not authorized (check --username and the password)\n"
    )


def test_an_unreachable_broker_and_a_wrong_ca_are_one_clear_line(
    published: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    args = viewer_args(published, tmp_path)
    args[1] = f"127.0.0.1:{port}"
    assert main([*args, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"rigpilot fleet: broker 127.0.0.1:{port} cannot be reached: [Errno 111] Connection "
        "refused\n"
    )
    other = make_pki(tmp_path)  # a CA that did not sign the broker's certificate
    args = viewer_args(published, tmp_path)
    args[3] = str(other["ca"])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rigpilot fleet: broker 127.0.0.1:{published.port} cannot be reached")
    assert "CERTIFICATE_VERIFY_FAILED" in err, err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        ([], "name the broker with exactly one of --broker or --config"),
        (["--broker", "h:1", "--config", "x.toml"], "exactly one of --broker or --config"),
        (["--broker", "host:port"], "--broker 'host:port': the port 'port' is not a number"),
        (["--broker", "host:70000"], "--broker 'host:70000': the port must lie in 1..65535"),
        (["--broker", "host", "--timeout", "0"], "--timeout must be positive"),
        (["--broker", "host", "--base-topic", "a/#"], "base_topic"),
    ],
)
def test_a_bad_command_line_is_refused_naming_the_problem(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rigpilot fleet: ") and problem in err, err


def test_the_password_can_come_from_the_environment(
    published: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = viewer_args(published, tmp_path)
    without_file = args[: args.index("--password-file")]
    monkeypatch.setenv("RIGPILOT_MQTT__PASSWORD", USERS["viewer"])
    assert main([*without_file, "--json"]) == 3  # read (gamma's payload is malformed)
    monkeypatch.setenv("RIGPILOT_MQTT__PASSWORD", "wrong")
    assert main(without_file) == 1


def test_the_broker_can_come_from_a_configuration(
    published: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pw"
    secret.write_text(USERS["viewer"])
    config = tmp_path / "control.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {published.port}\nusername = "viewer"\n'
        f'password_file = "{secret}"\n[mqtt.tls]\nenabled = true\n'
        f'ca_file = "{published.pki["ca"]}"\n'
    )
    assert main(["--config", str(config), "--json"]) == 3  # gamma's payload is still malformed
    rows = json.loads(capsys.readouterr().out)["sites"]
    assert [r["site"] for r in rows] == ["alpha", "beta", "gamma"]


# --- the dashboard across sites -----------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "rigpilot.json"
SELECTOR = re.compile(r"\b(?:rigpilot|process)_[a-z0-9_]+(\{[^}]*\})?(?![a-z0-9_(])")


def test_the_dashboard_has_a_site_variable_that_filters_every_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert [v["name"] for v in variables] == ["site", "model", "rig"]  # each filters the next
    site = variables[0]
    assert site["query"]["query"] == "label_values(rigpilot_site_info, site)"
    assert (site["multi"], site["includeAll"], site["allValue"]) == (True, True, ".*")
    exprs = [v["query"]["query"] for v in variables[1:]]
    exprs += [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    selectors = [(m.group(0), m.group(1)) for e in exprs for m in SELECTOR.finditer(e)]
    assert len(selectors) > 50
    unfiltered = [s for s, labels in selectors if not (labels or "").startswith('{site=~"$site"')]
    assert not unfiltered, unfiltered
