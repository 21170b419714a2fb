"""``rigpilot config check``'s warnings (real files with real modes) and rig address checks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from test_systemd_unit import UNIT, parse_unit

from daemon.admin_cli import main_config
from daemon.config import ConfigError, load_settings
from daemon.config_warnings import HIDDEN_FROM_SERVICE, config_warnings
from daemon.rig_address import check_rig_address

COMPLETE = """
[[rigs]]
address = "10.0.0.1"
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
"""
SHOWN: dict[str, str] = {}  # tests see every directory (their own is under /tmp)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A directory every user can enter, under /tmp itself (pytest's tmp_path is in a 0700
    directory, which would make every file in it unreadable to other users)."""
    path = Path(tempfile.mkdtemp(prefix="rigpilot-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def warnings(path: Path, hidden: Mapping[str, str] = SHOWN) -> list[str]:
    return config_warnings(load_settings(path), path, hidden=hidden)


def test_a_complete_world_readable_config_has_no_warning(folder: Path) -> None:
    assert warnings(write(folder / "r.toml", COMPLETE, 0o644)) == []


def test_a_config_file_the_dynamic_user_cannot_read(folder: Path) -> None:
    path = write(folder / "r.toml", COMPLETE, 0o600)
    [warning] = warnings(path)
    assert f"the configuration file {path}: the service (DynamicUser=yes" in warning
    assert "mode 0600" in warning and f"chmod 0644 {path}" in warning


def test_a_directory_the_dynamic_user_cannot_enter(folder: Path) -> None:
    inner = folder / "private"
    inner.mkdir(mode=0o700)
    [warning] = warnings(write(inner / "r.toml", COMPLETE, 0o644))
    assert f"its directory {inner} (mode 0700" in warning and "chmod o+x" in warning


def test_a_config_file_the_service_cannot_see(folder: Path) -> None:
    [warning] = warnings(write(folder / "r.toml", COMPLETE, 0o644), HIDDEN_FROM_SERVICE)
    assert "it is under /tmp, which the service cannot see (PrivateTmp=yes" in warning


def test_the_hidden_directories_are_the_units() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    for setting in set(HIDDEN_FROM_SERVICE.values()) | {"DynamicUser=yes", "PrivateUsers=yes"}:
        key, value = setting.split("=")
        assert service.get(key) == [value], setting


def test_a_secret_in_a_world_readable_config(folder: Path) -> None:
    text = f'{COMPLETE}[mqtt]\npassword = "hunter2"\n[[market.hashprice]]\ntype = "luxor"\n'
    path = write(folder / "r.toml", text + 'api_key = "k3y"\n', 0o644)
    found = sorted(warnings(path), reverse=True)
    assert len(found) == 2 and not any("hunter2" in w or "k3y" in w for w in found)
    assert found[0].startswith(f"mqtt.password is written in {path}, which every local user")
    assert "/etc/rigpilot/mqtt_password" in found[0]
    assert found[1].startswith("market.hashprice[0].api_key is written in")
    assert "EnvironmentFile=" in found[1]
    private = write(folder / "r.toml", text + 'api_key = "k3y"\n', 0o600)
    assert ["secret" not in w for w in warnings(private)] == [True]  # unreadable, not exposed


def test_a_password_file_world_readable_or_unreadable_to_the_service(folder: Path) -> None:
    secret = write(folder / "pw", "hunter2\n", 0o644)
    text = f'{COMPLETE}[mqtt]\nenabled = true\npassword_file = "{secret}"\n'
    path = write(folder / "r.toml", text, 0o644)
    [warning] = warnings(path)
    assert f"mqtt.password_file {secret} is readable by every local user (mode 0644" in warning
    secret.chmod(0o600)
    [warning] = warnings(path)
    assert f"mqtt.password_file {secret}: the service (DynamicUser=yes" in warning
    assert "do not make it world-readable" in warning and "LoadCredential=" in warning


def test_tls_files_the_service_cannot_read(folder: Path) -> None:
    ca = write(folder / "ca.pem", "x", 0o600)
    cert = write(folder / "client.pem", "x", 0o644)
    key = write(folder / "client.key", "x", 0o600)
    text = (
        f'{COMPLETE}[mqtt]\nenabled = true\n[mqtt.tls]\nenabled = true\nca_file = "{ca}"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    found = warnings(write(folder / "r.toml", text, 0o644))
    assert len(found) == 2
    assert found[0].startswith(f"mqtt.tls.ca_file {ca}: the service") and "chmod 0644" in found[0]
    assert found[1].startswith(f"mqtt.tls.key_file {key}: the service")
    assert f"LoadCredential=mqtt_client_key:{key}" in found[1]
    key.chmod(0o644)
    assert "readable by every local user" in warnings(folder / "r.toml")[1]


def test_credentials_are_not_checked(folder: Path) -> None:
    key = "/run/credentials/rigpilot.service/mqtt_client_key"
    text = (
        f"{COMPLETE}[mqtt]\nenabled = true\n[mqtt.tls]\nenabled = true\n"
        f'cert_file = "{key}.pem"\nkey_file = "{key}"\n'
    )
    assert warnings(write(folder / "r.toml", text, 0o644)) == []


def test_no_rigs_and_no_power_price(folder: Path) -> None:
    found = warnings(write(folder / "r.toml", "", 0o644))
    assert len(found) == 2
    assert found[0].startswith("no rigs configured ([[rigs]])")
    assert found[1].startswith("no power price source ([[market.power]])")


def test_config_check_prints_warnings_and_still_passes(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(folder / "r.toml", "", 0o600)
    assert main_config(["check", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(e.startswith("rigpilot config check: warning: ") for e in err)
    assert "no rigs" in err[0] and "no power price" in err[1] and str(path) in err[2]


# --- rig addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("10.0.0.300", "'10.0.0.300' is not a valid IPv4 address: Octet 300 (> 255) not permitted"),
        ("10.0.0", "'10.0.0' is not a valid IPv4 address: Expected 4 octets"),
        ("010.0.0.1", "'010.0.0.1' is not a valid IPv4 address: Leading zeros are not permitted"),
        ("fe80::1::2", "'fe80::1::2' is not a valid IPv6 address"),
        ("rig-07.example", "'rig-07.example' is a host name: rigs are read by IP address"),
        ("10.0.0.1/24", "'10.0.0.1/24' is not an IPv4 or IPv6 address"),
    ],
)
def test_a_rig_address_must_be_an_ip_address(tmp_path: Path, address: str, error: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(f'[[rigs]]\naddress = "10.0.0.1"\n[[rigs]]\naddress = "{address}"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(exc.value).startswith(f"invalid configuration: rigs[1].address (from {path}): ")
    assert error in str(exc.value)


def test_ip_addresses_are_accepted() -> None:
    for address in ("10.0.0.1", "192.168.255.254", "2001:db8::7", "fe80::1%eth0"):
        assert check_rig_address(f" {address} ") == address
