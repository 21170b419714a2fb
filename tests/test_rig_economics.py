"""Break-even per rig and per mode from an observation and the catalogue."""

from __future__ import annotations

import pytest
from helpers import identity
from helpers import observation as make_observation

from daemon.rig_economics import mode_points
from market.fetch import FeedError
from market.power import PushedPrice
from policies.economics import Economics, breakeven
from policies.values import Board, Make, Mode, Observation, PowerSource

ALL = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH})


def observation(
    model: str = "S19j Pro",
    make: Make = Make.ANTMINER,
    ths: float = 104.0,
    watts: float = 3068.0,
    mode: Mode = Mode.NORMAL,
    source: PowerSource = PowerSource.ESTIMATED,
) -> Observation:
    boards = (Board(0, ths / 3, 60, 70, 126, True),)
    ident = identity(make=make, model=model)
    return make_observation(
        mode=mode, ths=ths, watts=watts, source=source, ident=ident, boards=boards
    )


def test_current_mode_uses_measured_figures_others_the_catalogue() -> None:
    points = {p.mode: p for p in mode_points(observation(), ALL)}
    assert set(points) == {Mode.SLEEP, Mode.LOW, Mode.NORMAL}  # stock S19j Pro: no high
    assert points[Mode.NORMAL].power_w == 3068.0
    assert points[Mode.LOW].hashrate_ths == pytest.approx(72.8)
    assert points[Mode.LOW].power_source is PowerSource.ESTIMATED
    assert points[Mode.SLEEP].hashrate_ths == 0


def test_a_degraded_rig_is_scaled_in_every_mode() -> None:
    points = {p.mode: p for p in mode_points(observation(ths=104 * 2 / 3, watts=2100), ALL)}
    assert points[Mode.LOW].hashrate_ths == pytest.approx(72.8 * 2 / 3)


def test_whatsminer_has_high_and_reported_power_is_kept() -> None:
    obs = observation("M30S+ V40", Make.WHATSMINER, 100.0, 3400.0, source=PowerSource.REPORTED)
    points = {p.mode: p for p in mode_points(obs, ALL)}
    assert Mode.HIGH in points
    assert points[Mode.NORMAL].power_source is PowerSource.REPORTED


def test_only_supported_modes_are_offered() -> None:
    points = mode_points(
        observation("M60S VK40", Make.WHATSMINER), frozenset({Mode.SLEEP, Mode.NORMAL})
    )
    assert {p.mode for p in points} == {Mode.SLEEP, Mode.NORMAL}


def test_rig_breakeven_at_feb_2026_prices() -> None:
    terms = Economics(pool_fee=0.0)
    rows = {p.mode: breakeven(p, 34.9, 0.055, terms) for p in mode_points(observation(), ALL)}
    assert rows[Mode.NORMAL].breakeven_power_price_per_kwh == pytest.approx(0.0493, abs=5e-4)
    assert not rows[Mode.NORMAL].pays
    assert rows[Mode.LOW].pays  # underclocked, the same rig still earns at 5.5 c/kWh
    assert rows[Mode.SLEEP].margin_usd_per_day < 0  # sleeping costs its control board


def test_unknown_model_not_hashing_has_only_sleep() -> None:
    obs = observation("Mystery 9000", Make.OTHER, 0.0, 18.0, Mode.SLEEP)
    assert [p.mode for p in mode_points(obs, ALL)] == [Mode.SLEEP]


async def test_pushed_power_price_validates_and_keeps_the_last_good() -> None:
    pushed = PushedPrice(currency="USD")
    with pytest.raises(FeedError, match="no power price pushed yet"):
        await pushed.fetch(100.0)
    pushed.push(0.061, 90.0, "meter-A")
    for bad, message in [
        (float("nan"), "not finite"),
        (55.0, "implausible"),
        ("cheap", "not a number"),
    ]:
        with pytest.raises(FeedError, match=message):
            pushed.push(bad, 95.0, "meter-A")  # type: ignore[arg-type]
    quote = await pushed.fetch(100.0)
    assert quote.value == 0.061 and quote.detail == "pushed by meter-A"


def test_a_reading_no_rig_runs_at_steadily_teaches_no_shares() -> None:
    """An M60S on API v3 on its way to sleep read 0.3 TH/s and 218 W while reporting "normal":
    learnt as its shares, every later power-up of that rig was estimated at 6 % of its real
    draw, and the site ramp let through many times its kW. Such a reading teaches nothing;
    a rig with a dead board (two thirds of its hashrate) still does."""
    from daemon.rig_economics import rig_ratios
    from drivers import catalogue

    entry = catalogue.lookup("whatsminer", "M60S VK40")
    assert entry is not None

    def m60s(ths: float, watts: float) -> Observation:
        return observation("M60S VK40", Make.WHATSMINER, ths, watts, source=PowerSource.METER)

    assert rig_ratios(m60s(0.335, 218.0), entry) is None  # ramping down, mode still "normal"
    assert rig_ratios(m60s(186.0, 9000.0), entry) is None  # a wiring mistake: 2.6x the J/TH
    steady = rig_ratios(m60s(186.0, 3422.0), entry)
    assert steady == pytest.approx((1.0, 1.0), rel=1e-3)
    dead_board = rig_ratios(m60s(124.0, 2300.0), entry)
    assert dead_board == pytest.approx((124.0 / 186.0, 2300.0 / 3422.4), rel=1e-3)
    # what the ramp is then told a power-up to normal costs: the catalogue's, not 218 W
    asleep = observation("M60S VK40", Make.WHATSMINER, 0.0, 18.0, mode=Mode.SLEEP)
    woken = {
        p.mode: p
        for p in mode_points(
            asleep,
            frozenset({Mode.SLEEP, Mode.NORMAL}),
            entry,
            ratios=rig_ratios(m60s(0.335, 218.0), entry),
        )
    }
    assert woken[Mode.NORMAL].power_w == pytest.approx(3422.4, rel=1e-3)
