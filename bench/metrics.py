"""Scrape cost of the per-rig series: 10,000 rigs, written as text vs prometheus_client.

Builds one tick's per-rig state in memory (10,000 rigs over six models, three boards each,
1 % unread, desired modes from a policy and a guard, the Whatsminers' efficiency learned from
their reported watts) and times, per scrape:

- ``Metrics._rig_text`` as the daemon runs it: the per-rig series written as text on the first
  scrape after a tick (``daemon/exposition.py``), served from that cache until the next tick;
- baseline, same run: what every scrape cost before, through ``prometheus_client``: a
  ``GaugeMetricFamily`` per family, ``add_metric`` per sample, then ``generate_latest`` (the
  same series: parsed from our text).

Also checks that both texts parse to the same samples.

Ends with ``RESULT rigs=... series=... text_ms=... cached_ms=... prometheus_client_ms=...
ok=yes|no`` (ok: the same samples, and the first render at least 4× faster than the baseline).

Usage: python -m bench.metrics [--rigs 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from daemon.efficiency import RigEfficiency, learn
from daemon.metrics import Metrics, RigsSnapshot, Snapshot
from daemon.mqtt.state import Prices
from drivers import catalogue
from policies.economics import Economics
from policies.guards import Desired
from policies.values import Board, Identity, Make, Mode, Observation, PowerSource, Reading, RigId

MODELS = [
    (Make.ANTMINER, "S19j Pro", "antminer-stock", 104.0, 3068.0),
    (Make.ANTMINER, "S19 XP", "antminer-stock", 141.0, 3010.0),
    (Make.ANTMINER, "S21", "antminer-stock", 200.0, 3500.0),
    (Make.WHATSMINER, "M30S+ V40", "whatsminer-v2", 100.0, 3400.0),
    (Make.WHATSMINER, "M50S VH50", "whatsminer-v2", 126.0, 3276.0),
    (Make.WHATSMINER, "M60S VK40", "whatsminer-v3", 186.0, 3422.0),
]


def fleet(n: int) -> RigsSnapshot:
    readings: dict[RigId, Reading] = {}
    desired: dict[RigId, Desired] = {}
    identities: dict[RigId, Identity] = {}
    for i in range(n):
        make, model, driver, ths, watts = MODELS[i % len(MODELS)]
        rig = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        identity = Identity(rig, make, model, "2024.1", driver)
        identities[rig] = identity
        mode = Mode.NORMAL if i % 7 else Mode.LOW
        desired[rig] = Desired(rig, mode, None, "bench", "breakeven" if i % 11 else "dwell")
        if i % 100 == 0:
            continue  # unread this tick
        boards = tuple(Board(b, ths / 3, 60.0 + b + i % 5, 70.0 + b, 110, True) for b in range(3))
        readings[rig] = Observation(
            identity=identity,
            observed_at=1.8e9,
            hashrate_ths=ths * (0.9 + (i % 10) / 100),
            power_w=watts,
            power_source=PowerSource.REPORTED if make is Make.WHATSMINER else PowerSource.ESTIMATED,
            mode=mode,
            mining=True,
            boards=boards,
            max_chip_temp_c=72.0 + i % 9,
            inlet_c=25.0 if make is Make.WHATSMINER else None,
            outlet_c=45.0 if make is Make.WHATSMINER else None,
        )
    entries = {rig: catalogue.lookup(i.make.value, i.model) for rig, i in identities.items()}
    return RigsSnapshot(
        readings,
        desired,
        identities,
        frozenset(),
        Prices(40.0, 0.05, Economics()),
        efficiency=learned(identities, entries),
        entries=entries,
    )


def learned(
    identities: dict[RigId, Identity], entries: dict[RigId, catalogue.ModelEntry | None]
) -> dict[RigId, RigEfficiency]:
    """Every Whatsminer's efficiency learned from its reported watts (25 samples over 24 min,
    trusted), one object per model shared by its rigs: the Antminers keep the catalogue."""
    per_model: dict[str, RigEfficiency] = {}
    out: dict[RigId, RigEfficiency] = {}
    for rig, identity in identities.items():
        if identity.make is not Make.WHATSMINER:
            continue
        if identity.model not in per_model:
            entry = entries[rig]
            assert entry is not None
            learnt: RigEfficiency | None = None
            for k in range(25):
                obs = Observation(
                    identity,
                    60.0 * k,
                    entry.hashrate_ths,
                    entry.power_w * 1.05,
                    PowerSource.REPORTED,
                    Mode.NORMAL,
                    True,
                )
                learnt = learn(learnt, obs, entry, settling=False)
            assert learnt is not None and learnt.reference is Mode.NORMAL
            per_model[identity.model] = learnt
        out[rig] = per_model[identity.model]
    return out


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rigs = fleet(args.rigs)
    metrics = Metrics(per_rig=True, process=False)
    snapshot = object.__new__(Snapshot)  # only per_rig is read by _rig_text
    object.__setattr__(snapshot, "per_rig", rigs)
    first, cached, base = [], [], []
    text = b""
    for _ in range(args.repeat):
        metrics._snapshot = snapshot  # a new tick: the cache is for the previous one
        metrics._rig_cache = None
        t = time.perf_counter()
        text = metrics._rig_text()
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        again = metrics._rig_text()
        cached.append(time.perf_counter() - t)
        assert again is text
    families = list(text_string_to_metric_families(text.decode()))
    rows = [(f.name, f.documentation, [(s.labels, s.value) for s in f.samples]) for f in families]
    reference = b""
    for _ in range(args.repeat):
        t = time.perf_counter()
        built: list[Metric] = []  # what collect() built per scrape: add_metric per sample
        for name, doc, values in rows:
            names = list(values[0][0]) if values else []
            family = GaugeMetricFamily(name, doc, labels=names)
            for labels, value in values:
                family.add_metric(list(labels.values()), value)
            built.append(family)
        registry = CollectorRegistry()
        registry.register(_Families(built))
        reference = generate_latest(registry)
        base.append(time.perf_counter() - t)
    same = samples(text.decode()) == samples(reference.decode())
    series = sum(len(f.samples) for f in families)
    text_ms = statistics.median(first) * 1000
    cached_ms = statistics.median(cached) * 1000
    base_ms = statistics.median(base) * 1000
    print(
        f"{args.rigs} rigs, {series} per-rig series, {len(text) / 1e6:.1f} MB of text\n"
        f"  written as text (first scrape after a tick)  {text_ms:8.1f} ms\n"
        f"  later scrapes (cached)                        {cached_ms:8.3f} ms\n"
        f"  baseline: prometheus_client families + text  {base_ms:8.1f} ms\n"
        f"  same samples: {'yes' if same else 'NO'}"
    )
    ok = same and text_ms * 4 <= base_ms
    print(
        f"RESULT rigs={args.rigs} series={series} text_ms={text_ms:.1f} "
        f"cached_ms={cached_ms:.3f} prometheus_client_ms={base_ms:.1f} "
        f"ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
