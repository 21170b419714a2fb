"""Prometheus metrics from real ticks of the control loop over the simulated fleet, scraped over
real HTTP and read back with prometheus_client's own text-format parser; the Grafana dashboard
and docs/metrics.md checked against what is actually exposed."""

from __future__ import annotations

import asyncio
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SimFleet
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_control_loop import Harness, harness

from daemon.loop import TickReport
from daemon.metrics import DURATION_BUCKETS_S, Metrics, MetricsServer
from daemon.mqtt.state import Prices, margin_usd_per_day
from daemon.operator_state import SiteTarget
from policies.guards import Override
from policies.values import Mode, Observation, PowerSource

NAME = re.compile(r"^rigpilot_[a-z0-9_]+$")
UNIT_SUFFIXES = (
    "_seconds",
    "_watts",
    "_celsius",
    "_hashes_per_second",
    "_joules_per_hash",
    "_ratio",
    "_total",
    "_info",
    # Money has no base unit: prices keep the unit they are quoted in (docs/metrics.md).
    "_usd_per_day",
    "_usd_per_phs_day",
    "_usd_per_kwh",
)
UNITLESS = {  # counts and 0/1 states: no unit to name
    "rigpilot_dry_run",
    "rigpilot_commands_held",
    "rigpilot_site_conflict",
    "rigpilot_pins",
    "rigpilot_policy_failing",
    "rigpilot_mqtt_connected",
    "rigpilot_config_last_reload_successful",
    "rigpilot_fleet_rigs",
    "rigpilot_fleet_rigs_observed",
    "rigpilot_fleet_rigs_hashing",
    "rigpilot_fleet_rigs_curtailed",
    "rigpilot_fleet_rigs_not_responding",
    "rigpilot_fleet_rigs_needing_hands",
    "rigpilot_fleet_rigs_power_estimated",
    "rigpilot_fleet_rigs_held_back",
    "rigpilot_fleet_rigs_unreadable",
    "rigpilot_fleet_rigs_implausible",
    "rigpilot_fleet_rigs_mode",
    "rigpilot_fleet_rigs_desired_mode",
    "rigpilot_market_source_up",
    "rigpilot_rig_up",
    "rigpilot_rig_not_responding",
    "rigpilot_rig_power_estimated",
    "rigpilot_rig_mode",
    "rigpilot_rig_desired_mode",
    "rigpilot_rig_efficiency_samples",
}
NOT_BASE_UNITS = re.compile(r"_(kw|kwh|ths|phs|th|ms|milliseconds|c|temp|pct|percent)(_|$)")
PRICE = re.compile(r"_usd_per_(phs_day|kwh|day)$")
OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
DASHBOARD = REPO / "docs" / "grafana" / "rigpilot.json"
DOC = REPO / "docs" / "metrics.md"

Key = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    families: dict[str, Any]  # family name -> prometheus_client Metric
    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def matching(self, name: str, **labels: str) -> list[Sample]:
        """Samples named ``name`` whose labels include ``labels``."""
        out = []
        for family in self.families.values():
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    out.append(s)
        return out

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def parse(text: str) -> Scrape:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: dict[Key, float] = {}
    for family in families.values():
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return Scrape(families, samples)


def fetch(server: MetricsServer, accept: str = "text/plain") -> tuple[str, str]:
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


async def scrape(server: MetricsServer) -> Scrape:
    text, content_type = await asyncio.to_thread(fetch, server)
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(text)


@dataclass
class Setup:
    h: Harness
    addresses: list[str]
    metrics: Metrics
    server: MetricsServer

    async def tick(self, hashprice: float = 80.0, power: float = 0.05) -> TickReport:
        report = await self.h.tick(hashprice, power)
        self.metrics.record_tick(report, self.h.loop, report.at)
        return report


@pytest.fixture
async def setup(sim: SimFleet, tmp_path: Path) -> AsyncIterator[Setup]:
    h, addresses = await harness(sim, tmp_path, dry_run=False)
    metrics = Metrics(per_rig=True)
    metrics.record_reload(True, h.clock())  # as the daemon does once it has loaded its config
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield Setup(h, addresses, metrics, server)
    finally:
        server.close()


def pin(s: Setup, rig: str, mode: Mode = Mode.SLEEP) -> None:
    s.h.loop.operator.pin(
        Override(
            mode=mode,
            expires_at=s.h.clock.t + 3600,
            by="alice",
            why="test",
            rig_ids=frozenset({rig}),
            bypass_dwell=True,
        )
    )


async def test_values_match_the_tick_report(setup: Setup, sim: SimFleet) -> None:
    s = setup
    assert s.server.server_port > 0
    unreadable = s.addresses[2]
    await asyncio.to_thread(sim.control.set_fault, unreadable, "malformed")
    pin(s, s.addresses[0])
    s.h.loop.operator.set_site_target(SiteTarget(kw=500.0, until=s.h.clock.t + 3600, by="grid"))
    report = await s.tick(hashprice=80.0, power=0.05)
    m = await scrape(s.server)

    # The fleet, in base units
    assert m.value("rigpilot_fleet_rigs") == report.rigs == len(s.addresses)
    assert m.value("rigpilot_fleet_rigs_observed") == report.observed == len(s.addresses) - 1
    assert m.value("rigpilot_fleet_rigs_unreadable", reason="bad_reply") == 1
    assert m.value("rigpilot_fleet_rigs_unreadable", reason="timeout") == 0
    assert m.value("rigpilot_fleet_hashrate_hashes_per_second") == pytest.approx(
        report.hashrate_ths * 1e12
    )
    assert report.hashrate_ths > 100
    assert m.value("rigpilot_fleet_power_watts") == pytest.approx(report.power_kw * 1000)
    assert m.value("rigpilot_fleet_rigs_not_responding") == report.not_responding
    assert m.value("rigpilot_fleet_rigs_curtailed") == 1  # the pinned one
    assert m.value("rigpilot_fleet_rigs_desired_mode", mode="sleep") == 1
    assert sum(m.value("rigpilot_fleet_rigs_mode", mode=x.value) for x in Mode) == report.observed
    assert m.value("rigpilot_dry_run") == 0
    assert m.value("rigpilot_last_tick_timestamp_seconds") == report.at
    assert m.value("rigpilot_pins") == 1
    assert m.value("rigpilot_site_target_watts") == 500_000
    assert ("rigpilot_site_power_cap_watts", frozenset()) not in m.samples  # none configured
    assert m.value("rigpilot_site_info", site="site1") == 1

    # The market
    assert m.value("rigpilot_hashprice_usd_per_phs_day") == 80.0
    assert m.value("rigpilot_power_price_usd_per_kwh") == 0.05
    breakeven = m.value("rigpilot_fleet_breakeven_hashprice_usd_per_phs_day")
    assert 10 < breakeven < 80, "the hashing fleet pays at $80/PH/day and 5 c/kWh"
    for kind in ("hashprice", "power_price"):
        assert m.value("rigpilot_market_quote_age_seconds", kind=kind, source="pushed") == 0
        assert m.value("rigpilot_market_quote_ttl_seconds", kind=kind, source="pushed") == 600
    feeds = m.matching("rigpilot_market_source_up")
    assert feeds and all(x.value == 1 for x in feeds)
    assert m.matching("rigpilot_market_source_last_success_timestamp_seconds")

    # Every rig, as read
    prices = Prices(80.0, 0.05, s.h.loop.site.economics)
    estimated = 0
    for rig, reading in report.readings.items():
        ident = s.h.loop.observer.drivers[rig].identity
        key = {"rig": rig, "model": ident.model}
        info = m.matching("rigpilot_rig_info", rig=rig)
        assert len(info) == 1 and info[0].value == 1
        assert info[0].labels == {
            "rig": rig,
            "make": ident.make.value,
            "model": ident.model,
            "firmware": ident.firmware,
            "driver": ident.driver,
        }
        desired = report.desired[rig]
        assert m.value(
            "rigpilot_rig_desired_mode", **key, mode=desired.mode.value, by=desired.decided_by
        )
        assert m.value("rigpilot_rig_not_responding", **key) == 0
        if not isinstance(reading, Observation):
            assert rig == unreadable
            assert m.value("rigpilot_rig_up", **key) == 0
            assert m.matching("rigpilot_rig_hashrate_hashes_per_second", rig=rig) == []
            assert m.matching("rigpilot_rig_mode", rig=rig) == []
            continue
        assert m.value("rigpilot_rig_up", **key) == 1
        assert m.value("rigpilot_rig_hashrate_hashes_per_second", **key) == pytest.approx(
            reading.hashrate_ths * 1e12
        )
        assert reading.power_w is not None
        assert m.value("rigpilot_rig_power_watts", **key) == pytest.approx(reading.power_w)
        is_estimated = reading.power_source is PowerSource.ESTIMATED
        estimated += is_estimated
        assert m.value("rigpilot_rig_power_estimated", **key) == float(is_estimated)
        assert reading.max_chip_temp_c is not None
        assert m.value("rigpilot_rig_max_chip_temperature_celsius", **key) == pytest.approx(
            reading.max_chip_temp_c
        )
        boards = {
            x.labels["board"]: x.value
            for x in m.matching("rigpilot_rig_board_temperature_celsius", rig=rig)
        }
        assert boards == {
            str(b.index): pytest.approx(b.board_temp_c)
            for b in reading.boards
            if b.board_temp_c is not None
        }
        assert boards, "every simulated model reports board temperatures"
        assert m.value("rigpilot_rig_mode", **key, mode=reading.mode.value) == 1
        assert len(m.matching("rigpilot_rig_mode", rig=rig)) == 1
        margin = margin_usd_per_day(reading, prices)
        assert margin is not None
        assert m.value("rigpilot_rig_margin_usd_per_day", **key) == pytest.approx(margin)
    assert estimated >= 1, "stock Antminers report no watts: estimated, and flagged"
    assert m.value("rigpilot_fleet_rigs_power_estimated") == estimated
    pinned = m.matching("rigpilot_rig_desired_mode", rig=s.addresses[0])
    assert [(x.labels["mode"], x.labels["by"], x.value) for x in pinned] == [
        ("sleep", "override", 1)
    ]


async def test_counters_count_decisions_and_commands_and_only_go_up(setup: Setup) -> None:
    s = setup
    await s.tick(hashprice=80.0)
    first = await scrape(s.server)
    for family in ("rigpilot_decisions", "rigpilot_commands"):
        assert first.families[family].type == "counter"
        assert all(x.name == family + "_total" for x in first.families[family].samples)
    decided = sum(x.value for x in first.matching("rigpilot_decisions_total"))
    assert decided == len(s.addresses), "the first tick decides every rig once"

    rig = s.addresses[1]
    pin(s, rig)
    await s.tick(hashprice=80.0)  # the pin: one decision, one command sent
    await s.tick(hashprice=80.0)  # nothing changes: no decision
    second = await scrape(s.server)
    assert second.value("rigpilot_decisions_total", by="override", mode="sleep") == 1
    driver = s.h.loop.observer.drivers[rig].identity.driver
    sent = second.value("rigpilot_commands_total", outcome="sent", driver=driver, mode="sleep")
    assert sent >= 1
    for key, value in first.samples.items():
        if key[0].endswith("_total"):
            assert second.samples[key] >= value, key
    assert sum(x.value for x in second.matching("rigpilot_decisions_total")) == decided + 1

    # Histograms: one observation per tick, cumulative buckets, +Inf equal to the count
    for name in ("rigpilot_tick_duration_seconds", "rigpilot_observation_duration_seconds"):
        assert second.families[name].type == "histogram"
        buckets = second.matching(name + "_bucket")
        bounds = [float(x.labels["le"]) for x in buckets]
        assert bounds == [*DURATION_BUCKETS_S, math.inf]
        counts = [x.value for x in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == second.value(name + "_count") == 3
        assert second.value(name + "_sum") > 0
    assert second.value("rigpilot_tick_duration_seconds_sum") >= second.value(
        "rigpilot_observation_duration_seconds_sum"
    )


async def test_a_rig_that_leaves_the_fleet_leaves_the_exposition(setup: Setup) -> None:
    s = setup
    await s.tick()
    gone = s.addresses[3]
    before = await scrape(s.server)
    assert any(dict(labels).get("rig") == gone for _, labels in before.samples)
    s.h.loop.observer.inventory.forget(gone)
    report = await s.tick()
    assert gone not in report.readings
    after = await scrape(s.server)
    assert not [key for key in after.samples if dict(key[1]).get("rig") == gone]
    assert after.value("rigpilot_fleet_rigs") == len(s.addresses) - 1
    rigs = {x.labels["rig"] for x in after.matching("rigpilot_rig_info")}
    assert rigs == set(s.addresses) - {gone}


async def test_a_failing_policy_is_exposed_until_it_decides_again(setup: Setup) -> None:
    from test_control_loop import Exploding

    s = setup
    plugin = Exploding()
    s.h.loop.policies = [*s.h.loop.policies, plugin]
    await s.tick()
    m = await scrape(s.server)
    assert m.value("rigpilot_policy_failing", policy="breakeven") == 0
    assert m.value("rigpilot_policy_failing", policy="exploding") == 0
    plugin.broken = True
    report = await s.tick()
    assert report.failed_policies == ("exploding",)
    m = await scrape(s.server)
    assert m.value("rigpilot_policy_failing", policy="exploding") == 1
    assert m.value("rigpilot_policy_failing", policy="breakeven") == 0
    plugin.broken = False
    await s.tick()
    assert (await scrape(s.server)).value("rigpilot_policy_failing", policy="exploding") == 0


async def test_per_rig_off_has_no_rig_labels_and_keeps_the_totals(setup: Setup) -> None:
    s = setup
    report = await s.tick()
    fleet_only = Metrics(per_rig=False, process=False)
    fleet_only.record_tick(report, s.h.loop, report.at)
    m = parse(fleet_only.render().decode())
    assert not [key for key in m.samples if "rig" in dict(key[1])]
    assert not [name for name in m.names if name.startswith("rigpilot_rig_")]
    assert m.value("rigpilot_fleet_rigs") == report.rigs
    assert m.value("rigpilot_fleet_power_watts") == pytest.approx(report.power_kw * 1000)
    full = await scrape(s.server)
    assert full.names - m.names, "per-rig series are in the default exposition"
    assert m.names <= full.names, "the same fleet series either way"


async def test_names_units_and_types_follow_prometheus_conventions(setup: Setup) -> None:
    s = setup
    pin(s, s.addresses[0])
    s.h.loop.operator.set_site_target(SiteTarget(kw=500.0, until=s.h.clock.t + 3600, by="grid"))
    report = await s.tick()
    ours = Metrics(process=False, mqtt_connected=lambda: True, mqtt_events_dropped=lambda: 7)
    ours.record_tick(report, s.h.loop, report.at)
    ours.record_reload(True, report.at)
    m = parse(ours.render().decode())
    assert m.value("rigpilot_mqtt_connected") == 1
    assert m.value("rigpilot_mqtt_events_dropped_total") == 7
    assert len(m.families) >= 40
    for name, family in m.families.items():
        assert NAME.match(name), name
        assert not NOT_BASE_UNITS.search(PRICE.sub("", name)), f"{name}: not a base unit"
        assert family.documentation, f"{name} has no help text"
        if family.type == "counter":
            assert all(x.name == name + "_total" for x in family.samples), name
            assert name + "_total" not in UNITLESS
            continue
        assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if family.type == "histogram":
            kinds = {x.name.removeprefix(name) for x in family.samples}
            assert kinds == {"_bucket", "_sum", "_count"}, name
            assert name.endswith("_seconds"), name
            continue
        assert family.type == "gauge", name
        assert name.endswith(UNIT_SUFFIXES) or name in UNITLESS, f"{name}: unit suffix?"
        if name.endswith("_info"):
            assert all(x.value == 1 for x in family.samples), name
    # Prometheus asks for OpenMetrics first: the same families, valid in that format too
    om_text, om_type = await asyncio.to_thread(fetch, s.server, OPENMETRICS)
    assert om_type.startswith("application/openmetrics-text")
    om_names = {f.name for f in openmetrics_families(om_text)}  # type: ignore[no-untyped-call]
    assert om_names == set(parse(s.metrics.render().decode()).families)
    # The default adds only the standard process and Python collectors
    extra = parse(s.metrics.render().decode()).names - m.names - {"rigpilot_mqtt_connected"}
    assert extra and all(n.startswith(("process_", "python_")) for n in extra), extra


def _exposed_names(s: Setup, report: TickReport) -> set[str]:
    everything = Metrics(mqtt_connected=lambda: False)
    everything.record_tick(report, s.h.loop, report.at)
    return parse(everything.render().decode()).names


async def test_the_dashboard_only_queries_exposed_metrics(setup: Setup) -> None:
    s = setup
    pin(s, s.addresses[0])
    s.h.loop.site = replace(s.h.loop.site, power_cap_kw=1000.0)
    s.h.loop.operator.set_site_target(SiteTarget(kw=500.0, until=s.h.clock.t + 3600, by="grid"))
    report = await s.tick()
    await s.tick()  # a second tick: counters with labels exist
    exposed = _exposed_names(s, report) | (await scrape(s.server)).names
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    exprs: list[str] = []
    ids: list[int] = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            exprs.append(t["expr"])
    exprs += [v["query"]["query"] for v in variables.values() if v["type"] == "query"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    referenced = {
        name for e in exprs for name in re.findall(r"\b(?:rigpilot|process)_[a-z0-9_]+", e)
    }
    assert len(referenced) >= 30
    missing = referenced - exposed
    assert not missing, f"the dashboard queries metrics that do not exist: {sorted(missing)}"


async def test_the_doc_describes_every_metric(setup: Setup) -> None:
    s = setup
    report = await s.tick()
    doc = DOC.read_text()
    ours = Metrics(process=False, mqtt_connected=lambda: True, mqtt_events_dropped=lambda: 0)
    ours.record_tick(report, s.h.loop, report.at)
    ours.record_reload(True, report.at)
    families = parse(ours.render().decode()).families
    exposed = {n + "_total" if f.type == "counter" else n for n, f in families.items()}
    undocumented = sorted(n for n in exposed if f"`{n}`" not in doc)
    assert not undocumented, f"docs/metrics.md does not list {undocumented}"
    documented = set(re.findall(r"^\| `(rigpilot_[a-z0-9_]+)`", doc, re.MULTILINE))
    assert documented <= exposed | {"rigpilot_site_power_cap_watts"}, documented - exposed


async def test_rigs_with_implausible_fields_are_counted(setup: Setup) -> None:
    report = await setup.tick()
    rid, obs = next((r, o) for r, o in report.readings.items() if isinstance(o, Observation))
    lying = replace(obs, errors=("implausible power_w: 1e+30 (plausible 0..7000 W)",))
    report = replace(report, readings={**report.readings, rid: lying})
    ours = Metrics(process=False, mqtt_connected=lambda: True)
    ours.record_tick(report, setup.h.loop, report.at)
    assert parse(ours.render().decode()).value("rigpilot_fleet_rigs_implausible") == 1


async def test_before_the_first_tick_and_after_close() -> None:
    metrics = Metrics(process=False)
    server = metrics.serve("127.0.0.1", 0)
    port = server.server_port
    m = await scrape(server)
    assert m.value("rigpilot_tick_duration_seconds_count") == 0
    assert ("rigpilot_fleet_rigs", frozenset()) not in m.samples, "nothing observed yet"
    (build,) = m.matching("rigpilot_build_info")
    assert build.labels["version"] and build.value == 1
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(
            urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=5
        )


def test_label_values_are_escaped_as_the_exposition_format_requires() -> None:
    from daemon.exposition import escape, gauge_family

    odd = 'model "X" \\ one\nline'
    text = gauge_family(
        "rigpilot_test_value", "A test.", [(f'{{rig="r1",model="{escape(odd)}"}}', 2.5)]
    )
    (family,) = text_string_to_metric_families(text)
    (sample,) = family.samples
    assert sample.labels == {"rig": "r1", "model": odd}
    assert (family.type, sample.value) == ("gauge", 2.5)


async def test_scrapes_between_ticks_reuse_the_per_rig_text_and_gzip_is_honoured(
    setup: Setup,
) -> None:
    import gzip

    await setup.tick()
    first = setup.metrics._rig_text()
    assert first and setup.metrics._rig_text() is first  # written once per tick
    url = f"http://127.0.0.1:{setup.server.server_port}/metrics"

    def fetch_gzip() -> tuple[str | None, bytes]:
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Content-Encoding"], response.read()

    encoding, raw = await asyncio.to_thread(fetch_gzip)
    assert encoding == "gzip"
    body = gzip.decompress(raw).decode()
    assert parse(body).samples.keys() == (await scrape(setup.server)).samples.keys()
    await setup.tick()
    assert setup.metrics._rig_text() is not first  # a new tick, new text
