"""Where the learned efficiency is shown: ``rigpilot status`` (from the real state database),
the per-rig Prometheus series and the MQTT rig state (checked against the AsyncAPI document)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import identity, make_loop, observation, tick_report
from prometheus_client.parser import text_string_to_metric_families

from daemon.admin_cli import main_status
from daemon.efficiency import RigEfficiency, learn, shown
from daemon.metrics import Metrics, RigsSnapshot, Snapshot
from daemon.mqtt import asyncapi
from daemon.mqtt.state import Prices, rig_state
from daemon.persist import Persistence
from daemon.store import DB_NAME, Store
from drivers import catalogue
from policies.economics import Economics
from policies.values import Make, Mode, PowerSource

T0 = 1_800_000_000.0
_ENTRY = catalogue.lookup("antminer", "S19j Pro")
assert _ENTRY is not None
ENTRY: catalogue.ModelEntry = _ENTRY


def learnt(samples: int, watts: float = 3540.0) -> RigEfficiency:
    rig = None
    for i in range(samples):
        obs = observation(ths=100.0, watts=watts, source=PowerSource.METER, at=T0 + 60 * i)
        rig = learn(rig, obs, ENTRY, settling=False)
    assert rig is not None
    return rig


def test_status_counts_and_lists_the_learned_rigs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, loop = Store(tmp_path / DB_NAME), make_loop()
    saver = Persistence(store, loop)
    saver.restore(T0)
    loop.efficiency = {"10.0.0.1": learnt(25), "10.0.0.2": learnt(3)}
    saver.save_tick(tick_report(T0))
    store.db.execute("INSERT INTO efficiency VALUES ('10.0.0.3', '{\"version\": 1}')")
    store.close()
    main_status(["--state-dir", str(tmp_path)])
    plain = capsys.readouterr().out
    assert (
        "efficiency: 1 rig(s) learned from their meters, 0 from their own reports, 1 learning"
        in (plain)
    )
    assert "learned efficiency" not in plain  # the list only when asked
    main_status(["--state-dir", str(tmp_path), "--efficiency"])
    out = capsys.readouterr().out
    assert (
        "efficiency: 1 rig(s) learned from their meters, 0 from their own reports, 1 learning"
        in (out)
    )
    assert (
        "10.0.0.1 S19j Pro: normal 35.4 J/TH (+20.0 % vs the catalogue's 29.5), "
        "learned from meter, 25 sample(s)" in out
    )
    assert "10.0.0.2 S19j Pro: normal 29.5 J/TH, catalogue, 3 sample(s)" in out
    assert "10.0.0.3: unreadable row" in out  # named, not a traceback
    main_status(["--state-dir", str(tmp_path), "--efficiency", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["efficiency"] == {"learned_meter": 1, "learned_reported": 0, "learning": 1}
    first = doc["efficiency_rigs"][0]
    assert (first["rig"], first["source"], first["learned_from"], first["samples"]) == (
        "10.0.0.1",
        "learned",
        "meter",
        25,
    )


def test_the_per_rig_series_label_the_source_and_count_the_samples() -> None:
    a, b, c = (identity(f"10.0.0.{i}") for i in (1, 2, 3))
    unknown = identity("10.0.0.4", make=Make.WHATSMINER, model="M99")
    idents = {i.rig_id: i for i in (a, b, c, unknown)}
    rigs = RigsSnapshot(
        readings={r: observation(r, ident=i) for r, i in idents.items()},
        desired={},
        identities=idents,
        stuck=frozenset(),
        prices=Prices(40.0, 0.05, Economics()),
        efficiency={a.rig_id: learnt(25), b.rig_id: learnt(3)},
        entries={a.rig_id: ENTRY, b.rig_id: ENTRY, c.rig_id: ENTRY, unknown.rig_id: None},
    )
    metrics = Metrics(process=False)
    snapshot = object.__new__(Snapshot)  # only per_rig is read for the per-rig series
    object.__setattr__(snapshot, "per_rig", rigs)
    metrics._snapshot = snapshot
    samples = {
        (s.name, s.labels["rig"]): (s.labels, s.value)
        for f in text_string_to_metric_families(metrics._rig_text().decode())
        for s in f.samples
        if s.name.startswith("rigpilot_rig_efficiency")
    }
    labels, value = samples[("rigpilot_rig_efficiency_joules_per_hash", a.rig_id)]
    assert (labels["source"], labels["mode"]) == ("meter", "normal")
    assert value * 1e12 == pytest.approx(35.4)
    labels, value = samples[("rigpilot_rig_efficiency_joules_per_hash", b.rig_id)]
    assert labels["source"] == "catalogue" and value * 1e12 == pytest.approx(ENTRY.j_per_th)
    assert samples[("rigpilot_rig_efficiency_samples", a.rig_id)][1] == 25
    assert samples[("rigpilot_rig_efficiency_samples", b.rig_id)][1] == 3
    assert ("rigpilot_rig_efficiency_samples", c.rig_id) not in samples  # none taken
    assert samples[("rigpilot_rig_efficiency_joules_per_hash", c.rig_id)][0]["source"] == (
        "catalogue"
    )
    assert ("rigpilot_rig_efficiency_joules_per_hash", unknown.rig_id) not in samples


def test_the_rig_state_carries_it_as_the_asyncapi_document_says() -> None:
    from schema_check import problems

    doc = asyncapi.document()
    schema = doc["components"]["schemas"]["RigState"]
    ident = identity("10.0.0.7")
    obs = observation(at=1.0, ident=ident, mode=Mode.NORMAL)
    prices = Prices(45.0, 0.05, Economics())
    for learned in (learnt(25), learnt(3), None):
        view = shown(learned, ENTRY).as_dict()
        state = rig_state("10.0.0.7", ident, obs, None, prices, efficiency=view)
        assert problems(state, schema, doc) == []
        assert state["efficiency"] == view
    learned_view = rig_state(
        "10.0.0.7", ident, obs, None, prices, efficiency=shown(learnt(25), ENTRY).as_dict()
    )["efficiency"]
    assert learned_view["source"] == "learned" and learned_view["j_per_th"] == 35.4
