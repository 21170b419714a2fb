"""``[[switches]]`` and rigs' ``outlets``: what ``rigpilot config check`` accepts and refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config
from daemon.config import ConfigError, load_settings

NO_ENV: dict[str, str] = {}
SWITCHES = """
[[switches]]
name = "pdu-a1"
kind = "apc"
address = "10.0.9.1"
write_community = "s3cret-write"

[[switches]]
name = "plug-7"
kind = "shelly"
address = "10.0.9.7"
"""


@pytest.fixture(autouse=True)
def _no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "rigpilot.toml")


def load(tmp_path: Path, rigs: str, switches: str = SWITCHES) -> config.Settings:
    path = tmp_path / "rigpilot.toml"
    path.write_text(switches + rigs, encoding="utf-8")
    return load_settings(path, NO_ENV)


def test_rigs_name_their_outlets(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:1", "pdu-a1:2"]\n'
        '[[rigs]]\naddress = "10.0.0.2"\noutlets = ["plug-7:0"]\n',
    )
    assert [r.outlets for r in settings.rigs] == [("pdu-a1:1", "pdu-a1:2"), ("plug-7:0",)]
    pdu = settings.switches[0]
    assert (pdu.kind, pdu.default_port, settings.switches[1].default_port) == ("apc", 161, 80)
    assert pdu.write_community.get_secret_value() == "s3cret-write"


@pytest.mark.parametrize(
    ("rigs", "message"),
    [
        (
            '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-b2:1"]\n',
            "outlet 'pdu-b2:1' names switch 'pdu-b2', which is not in [[switches]] "
            "(known: pdu-a1, plug-7)",
        ),
        (
            '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:3"]\n'
            '[[rigs]]\naddress = "10.0.0.2"\noutlets = ["pdu-a1:3"]\n',
            "outlet 'pdu-a1:3' feeds both rig 10.0.0.1 and rig 10.0.0.2",
        ),
        ('[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1"]\n', "is not SWITCH:NUMBER"),
        (
            '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:0"]\n',
            "apc outlets are numbered from 1",
        ),
        (
            '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:4", "pdu-a1:4"]\n',
            "is listed twice",
        ),
    ],
)
def test_bad_outlet_references_are_named(tmp_path: Path, rigs: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, rigs)
    assert message in str(err.value)
    assert "rigs" in str(err.value)


def test_a_shared_outlet_must_be_declared(tmp_path: Path) -> None:
    shared = SWITCHES.replace('write_community = "s3cret-write"', "shared_outlets = [3]")
    settings = load(
        tmp_path,
        '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:3"]\n'
        '[[rigs]]\naddress = "10.0.0.2"\noutlets = ["pdu-a1:3"]\n',
        shared,
    )
    assert len(settings.rigs) == 2


TWICE = SWITCHES + '[[switches]]\nname = "pdu-a1"\nkind = "raritan"\naddress = "10.0.9.2"\n'
SAME_ADDRESS = SWITCHES + '[[switches]]\nname = "pdu-a2"\nkind = "raritan"\naddress = "10.0.9.1"\n'


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        (TWICE, "switch 'pdu-a1' is listed more than once"),
        (SAME_ADDRESS, "switches 'pdu-a1' and 'pdu-a2' have the same address 10.0.9.1"),
        (SWITCHES.replace('kind = "apc"', 'kind = "servertech"'), "switches[0].kind"),
        (
            SWITCHES.replace('write_community = "s3cret-write"', 'password = "x"'),
            "password is for plugs; SNMP PDUs use communities",
        ),
        (
            SWITCHES.replace('"10.0.9.7"', '"plug.local"'),
            "'plug.local' is not an IP address: give the switch's IPv4 or IPv6 address",
        ),
    ],
)
def test_bad_switches_are_named(tmp_path: Path, switches: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "", switches)
    assert message in str(err.value)


def test_config_check_refuses_an_unknown_switch_and_hides_communities(tmp_path: Path) -> None:
    path = tmp_path / "rigpilot.toml"
    path.write_text(SWITCHES + '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:1"]\n')
    ok = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "s3cret-write" not in ok.stdout
    path.write_text(SWITCHES + '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a2:1"]\n')
    bad = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "names switch 'pdu-a2', which is not in [[switches]]" in bad.stderr


def test_power_cycle_settings_and_opt_outs(tmp_path: Path) -> None:
    from daemon.power import PowerSwitches

    settings = load(
        tmp_path,
        "[power_cycle]\nenabled = true\nafter_s = 600\nexclude_groups = ['lab']\n"
        '[[rigs]]\naddress = "10.0.0.1"\noutlets = ["pdu-a1:1"]\n'
        '[[rigs]]\naddress = "10.0.0.2"\noutlets = ["pdu-a1:2"]\npower_cycle = false\n'
        '[[rigs]]\naddress = "10.0.0.3"\noutlets = ["pdu-a1:3"]\ngroup = "lab"\n',
    )
    power = PowerSwitches.from_settings(settings)
    assert power is not None
    rules = power.cycle_rules
    assert (rules.enabled, rules.after_s, rules.max_per_rig_per_day) == (True, 600.0, 2)
    assert rules.excluded == frozenset({"10.0.0.2", "10.0.0.3"})
    with pytest.raises(ConfigError, match=r"power_cycle\.after_s"):
        load(tmp_path, "[power_cycle]\nafter_s = 5\n")
