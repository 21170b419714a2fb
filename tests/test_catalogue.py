"""The model catalogue: its figures, pyasic spellings, power estimation, and load validation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from helpers import write_toml
from hypothesis import given
from hypothesis import strategies as st

from drivers.catalogue import (
    IDLE_SHARE,
    SLEEP_POWER_W,
    Catalogue,
    CatalogueError,
    ModelEntry,
    default_catalogue,
    estimate_power_w,
    load,
    lookup,
)
from policies.values import Make, Mode, PowerSource

ECONOMICS = Path(__file__).resolve().parents[1] / "docs" / "reference" / "economics.md"
ESTIMATED = "estimated: V²f model, see docs/catalogue.md"

# The rows of docs/reference/economics.md: (make, model, TH/s, W, J/TH).
ECONOMICS_ROWS = [
    (Make.ANTMINER, "S19j Pro", 104, 3068, 29.5),
    (Make.ANTMINER, "S19 XP", 140, 3010, 21.5),
    (Make.ANTMINER, "S21", 200, 3500, 17.5),
    (Make.ANTMINER, "S21 Pro", 234, 3510, 15.0),
    (Make.ANTMINER, "S21 XP", 270, 3645, 13.5),
    (Make.WHATSMINER, "M30S", 88, 3344, 38.0),
    (Make.WHATSMINER, "M50S", 126, 3276, 26.0),
    (Make.WHATSMINER, "M60S", 186, 3422, 18.4),
]

CATALOGUE = "catalogue.toml"


def entry(make: Make | str, model: str) -> ModelEntry:
    found = lookup(make, model)
    assert found is not None, f"{make} {model} not in the catalogue"
    return found


def v2f_power_share(f: float) -> float:
    """Power at normalised frequency f as a share of nameplate (docs/catalogue.md)."""
    v = max(0.82, 0.6 + 0.4 * f)
    return 0.06 + 0.94 * v * v * f


# --- the figures ---------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "model", "ths", "watts", "j_per_th"), ECONOMICS_ROWS)
def test_economics_rows_match(
    make: Make, model: str, ths: float, watts: float, j_per_th: float
) -> None:
    e = entry(make, model)
    assert e.make is make
    assert e.model == model
    assert e.hashrate_ths == pytest.approx(ths, abs=0.1)
    assert e.power_w == pytest.approx(watts, abs=0.1)
    assert e.j_per_th == pytest.approx(j_per_th, abs=0.1)
    assert e.source == "docs/reference/economics.md"
    assert e.normal.source == "docs/reference/economics.md"


def test_economics_rows_are_the_reference_table() -> None:
    row = re.compile(r"^\| (Antminer|Whatsminer) (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")
    table = [
        (Make(m[1].lower()), m[2], float(m[3]), float(m[4]), float(m[5]))
        for line in ECONOMICS.read_text(encoding="utf-8").splitlines()
        if (m := row.match(line))
    ]
    assert table == [(mk, md, float(t), float(w), j) for mk, md, t, w, j in ECONOMICS_ROWS]


def test_spec_sheet_models() -> None:
    s19pro = entry("antminer", "S19 Pro")
    assert (s19pro.hashrate_ths, s19pro.power_w) == (110, 3250)
    assert "spec sheet" in s19pro.source
    m30s_plus = entry("whatsminer", "M30S+")
    assert (m30s_plus.hashrate_ths, m30s_plus.power_w) == (100, 3400)
    assert "spec sheet" in m30s_plus.source


def test_every_figure_has_a_source_and_estimates_follow_the_v2f_model() -> None:
    for e in default_catalogue().entries:
        assert e.source and e.hashboards_source, e.model
        assert e.hashboards == 3, e.model
        assert e.figures(Mode.LOW) is not None, e.model
        for fig in e.modes:
            assert fig.source, (e.model, fig.mode)
            if fig.mode is Mode.NORMAL:
                continue
            assert fig.source == ESTIMATED, (e.model, fig.mode)
            f = {Mode.LOW: 0.70, Mode.HIGH: 1.12}[fig.mode]
            assert fig.hashrate_ths == pytest.approx(e.hashrate_ths * f, abs=0.05)
            expected = e.j_per_th * v2f_power_share(f) / f
            assert fig.j_per_th == pytest.approx(expected, abs=0.05), (e.model, fig.mode)


def test_high_mode_only_where_the_make_has_it() -> None:
    for e in default_catalogue().entries:
        has_high = e.figures(Mode.HIGH) is not None
        assert has_high == (e.make is Make.WHATSMINER), e.model


def test_shipped_catalogue_is_package_data() -> None:
    import drivers

    assert (Path(drivers.__file__).parent / "catalogue.toml").is_file()
    assert len(default_catalogue().entries) == 10


# --- lookup ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "spelling", "model"),
    [
        ("antminer", "S19j Pro", "S19j Pro"),
        ("AntMiner", "ANTMINER S19J PRO", "S19j Pro"),
        (Make.ANTMINER, "s19j pro", "S19j Pro"),
        (Make.BRAIINS, "S19j Pro (BOS+)", "S19j Pro"),
        ("antminer", "S19 XP", "S19 XP"),
        ("antminer", "S21 XP", "S21 XP"),
        ("antminer", "S21 Pro", "S21 Pro"),
        ("antminer", "S21", "S21"),
        ("whatsminer", "M30S+ V40", "M30S+"),
        ("WhatsMiner", "M60S VK40", "M60S"),
        ("whatsminer", "M30S+V40", "M30S+"),
        ("whatsminer", "M60S_VK40", "M60S"),
        ("whatsminer", "M50S VH50", "M50S"),
        ("whatsminer", "M30S V50", "M30S"),
        ("whatsminer", "M30S VE10", "M30S"),
        ("whatsminer", "M30S", "M30S"),
        ("whatsminer", "Whatsminer M30S+", "M30S+"),
    ],
)
def test_lookup_pyasic_spellings(make: Make | str, spelling: str, model: str) -> None:
    assert entry(make, spelling).model == model


def test_plus_is_significant() -> None:
    assert entry("whatsminer", "M30S").model == "M30S"
    assert entry("whatsminer", "M30S V50").model == "M30S"
    assert entry("whatsminer", "M30S+").model == "M30S+"
    assert lookup("whatsminer", "M30S++ V10") is None
    assert entry("whatsminer", "M30S").power_w != entry("whatsminer", "M30S+").power_w


@pytest.mark.parametrize(
    ("make", "model"),
    [
        ("antminer", "S9"),
        ("antminer", "S19j Pro+"),
        ("antminer", "M30S"),  # a Whatsminer model under the wrong maker
        ("whatsminer", "S19j Pro"),
        ("whatsminer", "M31S"),
        ("antminer", ""),
        ("antminer", "   "),
    ],
)
def test_lookup_unknown_is_none(make: str, model: str) -> None:
    assert lookup(make, model) is None


# --- estimation ------------------------------------------------------------------------------


def test_estimate_sleep_and_off() -> None:
    e = entry("antminer", "S19j Pro")
    for hashrate in (None, 0.0, 50.0):
        sleep = estimate_power_w(e, Mode.SLEEP, hashrate)
        assert sleep.power_w == SLEEP_POWER_W == 18.0
        assert sleep.source is PowerSource.ESTIMATED
        assert estimate_power_w(e, Mode.OFF, hashrate).power_w == 0.0


def test_estimate_low_mode_uses_low_j_per_th_and_measured_hashrate() -> None:
    e = entry("antminer", "S19j Pro")
    est = estimate_power_w(e, Mode.LOW, 72.3)
    low = e.figures(Mode.LOW)
    assert low is not None
    assert est.power_w == pytest.approx(low.j_per_th * 72.3)
    assert est.basis == f"S19j Pro low mode {low.j_per_th:.1f} J/TH x 72.3 TH/s"
    assert est.source is PowerSource.ESTIMATED


def test_estimate_normal_tracks_a_dead_board() -> None:
    e = entry("antminer", "S19j Pro")
    assert estimate_power_w(e, Mode.NORMAL, 104.0).power_w == pytest.approx(3068.0)
    two_boards = estimate_power_w(e, Mode.NORMAL, 104.0 * 2 / 3)
    assert two_boards.power_w == pytest.approx(3068.0 * 2 / 3)


def test_estimate_high_mode() -> None:
    m60s = entry("whatsminer", "M60S VK40")
    high = m60s.figures(Mode.HIGH)
    assert high is not None
    assert estimate_power_w(m60s, Mode.HIGH, 200.0).power_w == pytest.approx(high.j_per_th * 200)
    # stock Antminer has no high mode: normal J/TH, and the basis says so
    s21 = entry("antminer", "S21")
    est = estimate_power_w(s21, Mode.HIGH, 200.0)
    assert est.power_w == pytest.approx(3500.0)
    assert "normal used" in est.basis


def test_estimate_unknown_mode_uses_normal() -> None:
    e = entry("whatsminer", "M30S")
    assert estimate_power_w(e, Mode.UNKNOWN, 80.0).power_w == pytest.approx(38.0 * 80)
    assert estimate_power_w(e, Mode.UNKNOWN, None).power_w == pytest.approx(3344.0)


def test_estimate_hashrate_unknown_uses_rated_figures() -> None:
    e = entry("antminer", "S19j Pro")
    low = e.figures(Mode.LOW)
    assert low is not None
    assert estimate_power_w(e, Mode.NORMAL, None).power_w == pytest.approx(3068.0)
    assert estimate_power_w(e, Mode.LOW, None).power_w == pytest.approx(low.power_w)
    assert "hashrate unknown" in estimate_power_w(e, Mode.LOW, None).basis


def test_estimate_not_hashing_is_the_idle_floor() -> None:
    e = entry("antminer", "S19j Pro")
    idle = SLEEP_POWER_W + IDLE_SHARE * 3068
    for mode in (Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT, Mode.UNKNOWN):
        assert estimate_power_w(e, mode, 0.0).power_w == pytest.approx(idle)
    # a trickle of hashrate never estimates below the rig standing idle
    assert estimate_power_w(e, Mode.NORMAL, 1.0).power_w == pytest.approx(idle)


def test_estimate_limit() -> None:
    e = entry("antminer", "S19j Pro")
    capped = estimate_power_w(e, Mode.LIMIT, 91.9, 2500)
    assert capped.power_w == 2500.0
    assert "power limit 2500 W" in capped.basis
    # a limit above what the rig draws changes nothing
    assert estimate_power_w(e, Mode.LIMIT, 60.0, 2500).power_w == pytest.approx(29.5 * 60)
    # hashrate unknown: the limit against nameplate
    assert estimate_power_w(e, Mode.LIMIT, None, 2500).power_w == 2500.0
    assert estimate_power_w(e, Mode.LIMIT, None, 4000).power_w == pytest.approx(3068.0)
    # no limit given: normal
    assert estimate_power_w(e, Mode.LIMIT, None).power_w == pytest.approx(3068.0)
    # a limit below the control board's draw is not believed
    assert estimate_power_w(e, Mode.LIMIT, 10.0, 5).power_w == SLEEP_POWER_W
    assert estimate_power_w(e, Mode.LIMIT, None, 0).power_w == pytest.approx(3068.0)


def test_estimate_unknown_model_is_none() -> None:
    assert estimate_power_w(lookup("antminer", "S9"), Mode.NORMAL, 13.5) is None


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_estimate_rejects_impossible_hashrate(bad: float) -> None:
    with pytest.raises(ValueError, match="hashrate_ths"):
        estimate_power_w(entry("antminer", "S21"), Mode.NORMAL, bad)


@given(
    index=st.integers(min_value=0, max_value=9),
    mode=st.sampled_from(list(Mode)),
    a=st.floats(min_value=0.0, max_value=1000.0),
    b=st.floats(min_value=0.0, max_value=1000.0),
    limit=st.none() | st.integers(min_value=-100, max_value=10_000),
)
def test_estimate_is_monotonic_in_hashrate_and_never_negative(
    index: int, mode: Mode, a: float, b: float, limit: int | None
) -> None:
    e = default_catalogue().entries[index]
    lo, hi = sorted((a, b))
    low = estimate_power_w(e, mode, lo, limit)
    high = estimate_power_w(e, mode, hi, limit)
    rated = estimate_power_w(e, mode, None, limit)
    assert 0.0 <= low.power_w <= high.power_w
    assert rated.power_w >= 0.0
    assert all(est.source is PowerSource.ESTIMATED for est in (low, high, rated))
    assert all(math.isfinite(est.power_w) for est in (low, high, rated))


# --- validation --------------------------------------------------------------------------------

GOOD_ENTRY = """
[[models]]
make = "antminer"
model = "S19j Pro"
aliases = []
hashrate_ths = 104
power_w = 3068
source = "test"
hashboards = 3
hashboards_source = "test"

[models.modes.low]
hashrate_ths = 72.8
j_per_th = 24.0
source = "test"

[models.modes.normal]
j_per_th = 29.5
source = "test"
"""


def test_load_good_file(tmp_path: Path) -> None:
    catalogue = load(write_toml(tmp_path, GOOD_ENTRY, CATALOGUE))
    assert isinstance(catalogue, Catalogue)
    assert [e.model for e in catalogue.entries] == ["S19j Pro"]
    assert catalogue.lookup("antminer", "ANTMINER S19J PRO") is catalogue.entries[0]


@pytest.mark.parametrize(
    ("old", "new", "model", "field"),
    [
        ("power_w = 3068", "power_w = -3068", "S19j Pro", "power_w"),
        ("power_w = 3068", 'power_w = "lots"', "S19j Pro", "power_w"),
        ("hashrate_ths = 104", "hashrate_ths = 0", "S19j Pro", "hashrate_ths"),
        ('make = "antminer"', 'make = "bitfury"', "S19j Pro", "make"),
        ("hashboards = 3", "hashboards = 2.5", "S19j Pro", "hashboards"),
        ("hashboards = 3", "hashboard = 3", "S19j Pro", "hashboard"),
        ('hashboards_source = "test"', "", "S19j Pro", "hashboards_source"),
        ("aliases = []", "aliases = [1]", "S19j Pro", "aliases"),
        ("j_per_th = 29.5", "j_per_th = 35.0", "S19j Pro", "modes.normal.j_per_th"),
        ("j_per_th = 24.0", "j_per_th = true", "S19j Pro", "modes.low.j_per_th"),
        ("hashrate_ths = 72.8", "hashrate_ths = 110", "S19j Pro", "modes.low.hashrate_ths"),
        ("[models.modes.low]", "[models.modes.turbo]", "S19j Pro", "modes.turbo"),
        ("[models.modes.normal]", "[models.modes.high]", "S19j Pro", "modes.normal"),
        ('source = "test"\nhashboards', "hashboards", "S19j Pro", "source"),
        ('model = "S19j Pro"', 'model = ""', "entry 1", "model"),
    ],
)
def test_broken_entry_names_model_and_field(
    tmp_path: Path, old: str, new: str, model: str, field: str
) -> None:
    assert old in GOOD_ENTRY
    path = write_toml(tmp_path, GOOD_ENTRY.replace(old, new, 1), CATALOGUE)
    with pytest.raises(CatalogueError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert (f"model {model!r}" if model != "entry 1" else "entry 1") in message
    assert f"field {field!r}" in message


def test_duplicate_name_is_refused(tmp_path: Path) -> None:
    twin = GOOD_ENTRY.replace('model = "S19j Pro"', 'model = "S19j Pro Copy"').replace(
        "aliases = []", 'aliases = ["s19j pro"]'
    )
    with pytest.raises(CatalogueError, match=r"model 'S19j Pro Copy'.*'aliases'.*'S19j Pro'"):
        load(write_toml(tmp_path, GOOD_ENTRY + twin, CATALOGUE))


def test_unreadable_file_is_a_catalogue_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        load(write_toml(tmp_path, GOOD_ENTRY + "\n[[models]\n", CATALOGUE))
    with pytest.raises(CatalogueError, match="cannot read"):
        load(tmp_path / "missing.toml")
    with pytest.raises(CatalogueError, match="models"):
        load(write_toml(tmp_path, "title = 'no models'\n", CATALOGUE))
