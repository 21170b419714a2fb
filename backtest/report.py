"""The backtest's report: figures per strategy, the per-step series, per-rig totals, and the
files (CSV, a self-contained HTML page with inline SVG charts, PNGs)."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backtest.charts import ChartSpec, chart_specs, render
from backtest.engine import Outcome, Replay
from backtest.inputs import iso_utc
from backtest.ledger import Prices

SERIES_CSV = "series.csv"
RIGS_CSV = "rigs.csv"
SUMMARY_CSV = "summary.csv"
HTML = "report.html"
PNGS = ("hashprice.png", "power.png", "profit.png")
STRATEGIES = ("policy", "always-on", "threshold")
COLORS = {"policy": "#1f77b4", "always-on": "#7f7f7f", "threshold": "#ff7f0e"}


@dataclass(frozen=True, slots=True)
class Figures:
    """One strategy's totals over the history."""

    name: str
    energy_mwh: float
    revenue_usd: float
    cost_usd: float
    profit_usd: float
    rig_hours_asleep: float
    rig_hours_low: float
    mode_changes: int
    mode_changes_per_rig_max: int
    mode_changes_per_rig_mean: float
    steepest_ramp_kw_per_min: float
    # Where the profit against always-on came from (they add up to it; 0 for always-on):
    gain_spikes_usd: float = 0.0  # rows of spike prices: asleep while power cost more
    gain_low_hashprice_usd: float = 0.0  # every other row: lower modes, sleep, the slide
    cost_of_changes_usd: float = 0.0  # hashes lost booting and ramping, power drawn slowing


DEFAULT_SPIKE_USD_PER_KWH = 0.20


@dataclass(frozen=True, slots=True)
class SpikeRule:
    """Which rows count as price spikes: power at or above ``price_usd_per_kwh``, or, when
    ``top_pct`` is set, the top ``top_pct`` % of the rows by power price (ties included)."""

    price_usd_per_kwh: float = DEFAULT_SPIKE_USD_PER_KWH
    top_pct: float | None = None

    def threshold(self, power_prices: Sequence[float]) -> float:
        if self.top_pct is None:
            return self.price_usd_per_kwh
        ranked = sorted(power_prices, reverse=True)
        k = max(1, math.ceil(len(ranked) * self.top_pct / 100.0))
        return ranked[min(k, len(ranked)) - 1]


@dataclass(frozen=True, slots=True)
class Spikes:
    """The spike rows of one history under a rule: how they were chosen and how many."""

    rule: str  # "power >= 0.2 USD/kWh" or "top 1 % of power prices (>= 0.397 USD/kWh)"
    threshold_usd_per_kwh: float
    rows: int
    hours: float

    def describe(self) -> str:
        return f"{self.rule}: {self.rows} rows, {self.hours:.1f} h"


def spikes_of(outcome: Outcome, rule: SpikeRule) -> tuple[Spikes, list[bool]]:
    """The rule applied to the history's power prices (a stale quote counts at the last)."""
    pp = Prices.of(outcome.market).pp
    cut = rule.threshold(pp)
    flags = [p >= cut for p in pp]
    text = (
        f"power >= {cut:g} USD/kWh"
        if rule.top_pct is None
        else f"top {rule.top_pct:g} % of power prices (>= {cut:g} USD/kWh)"
    )
    n = sum(flags)
    return Spikes(text, cut, n, n * outcome.market.interval_s / 3600.0), flags


def row_profits(outcome: Outcome, r: Replay) -> list[float]:
    """Each market row's profit (USD) of one strategy, at that row's prices."""
    prices = Prices.of(outcome.market)
    terms = outcome.config.economics
    fee_k = (1.0 - terms.pool_fee) / 1000.0 / 86_400.0
    cost_k = terms.overhead / 3.6e6
    s = r.strategy
    return [
        h * hp * fee_k - e * pp * cost_k
        for e, h, hp, pp in zip(
            s.row_energy_ws, s.row_hash_ths_s, prices.hp, prices.pp, strict=True
        )
    ]


def figures(r: Replay, split: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Figures:
    s = r.strategy
    rigs = len(s.rig_changes)
    rev, cost = sum(s.rig_revenue), sum(s.rig_cost)
    return Figures(
        r.name,
        sum(s.rig_energy_ws) / 3.6e9,
        rev,
        cost,
        rev - cost,
        sum(s.rig_asleep_s) / 3600.0,
        sum(s.rig_low_s) / 3600.0,
        sum(s.rig_changes),
        max(s.rig_changes, default=0),
        sum(s.rig_changes) / rigs if rigs else 0.0,
        r.ramp_kw_per_min,
        *split,
    )


def summary(outcome: Outcome, rule: SpikeRule | None = None) -> list[Figures]:
    """Policy, always-on and threshold, each with its gain against always-on split by source.

    The split, per market row: the strategy's profit less always-on's, plus what its changes
    cost in that row (so: as if every change took effect at once), is credited to the spikes
    when the row's power price is a spike (``rule``), else to the low hashprice; the changes'
    cost (the engine's ``row_change_cost``: each transition against its target's steady state,
    on the replay's physics) is the third part. The low-hashprice part is the remainder of the
    total, so the three add up to the profit against always-on exactly."""
    _, flags = spikes_of(outcome, rule or SpikeRule())
    base_rows = row_profits(outcome, outcome.always_on)
    base = figures(outcome.always_on)
    out = []
    for r in (outcome.policy, outcome.always_on, outcome.threshold):
        if r is outcome.always_on:
            out.append(base)
            continue
        plain = figures(r)
        changes = sum(r.strategy.row_change_cost)
        spikes = (
            sum(
                p - b + c
                for p, b, c, spike in zip(
                    row_profits(outcome, r),
                    base_rows,
                    r.strategy.row_change_cost,
                    flags,
                    strict=True,
                )
                if spike
            )
            + 0.0
        )  # a float even with no spike rows
        gain = plain.profit_usd - base.profit_usd
        out.append(figures(r, (spikes, gain - spikes + changes, changes)))
    return out


def series_rows(
    outcome: Outcome, rule: SpikeRule | None = None
) -> tuple[list[str], list[list[object]]]:
    """The per-step fleet series: prices, then per strategy power, energy, money and rigs."""
    _, spike = spikes_of(outcome, rule or SpikeRule())
    prices = Prices.of(outcome.market)
    terms = outcome.config.economics
    fee_k = (1.0 - terms.pool_fee) / 1000.0 / 86_400.0
    cost_k = terms.overhead / 3.6e6
    dt = float(outcome.market.interval_s)
    # The fleet's break-even hashprice at normal (always-on), at each step's power price.
    a = outcome.always_on.strategy
    p_w = sum(u.phys.power_w * u.m for u in a.units)
    h_ths = sum(u.phys.hashrate_ths * u.m for u in a.units)
    header = [
        "time",
        "hashprice_usd_per_ph_day",
        "power_price_usd_per_kwh",
        "fleet_breakeven_hashprice_usd_per_ph_day",
        "power_spike",
    ]
    # ... and each model's, from its rigs' steady figures at normal.
    per_model: dict[str, tuple[float, float]] = {}
    for u in a.units:
        w, ths = per_model.get(u.cls.spec.key, (0.0, 0.0))
        per_model[u.cls.spec.key] = (w + u.phys.power_w * u.m, ths + u.phys.hashrate_ths * u.m)
    model_cols = model_columns(outcome)
    model_rates = [per_model[key] for key in sorted(per_model)]
    header += [col for _, col in model_cols]
    for name in STRATEGIES:
        p = name.replace("-", "_")
        header += [
            f"{p}_power_kw",
            f"{p}_hashrate_phs",
            f"{p}_energy_kwh",
            f"{p}_revenue_usd",
            f"{p}_cost_usd",
            f"{p}_profit_usd",
            f"{p}_cum_profit_usd",
            f"{p}_rigs_hashing",
            f"{p}_change_cost_usd",
        ]
    reps = (outcome.policy, outcome.always_on, outcome.threshold)
    cum = [0.0, 0.0, 0.0]
    rows: list[list[object]] = []
    for i, row in enumerate(outcome.market.rows):
        hp, pp = prices.hp[i], prices.pp[i]
        be = p_w / 1000.0 * 24.0 * pp * terms.overhead / (h_ths / 1000.0 * (1 - terms.pool_fee))
        out: list[object] = [
            iso_utc(row.t),
            "" if row.hashprice_usd_per_ph_day is None else row.hashprice_usd_per_ph_day,
            "" if row.power_price_usd_per_kwh is None else row.power_price_usd_per_kwh,
            _r(be, 4),
            int(spike[i]),
        ]
        out += [
            _r(w / 1000.0 * 24.0 * pp * terms.overhead / (ths / 1000.0 * (1 - terms.pool_fee)), 4)
            for w, ths in model_rates
        ]
        for k, r in enumerate(reps):
            s = r.strategy
            e, h = s.row_energy_ws[i], s.row_hash_ths_s[i]
            rev, cost = h * hp * fee_k, e * pp * cost_k
            cum[k] += rev - cost
            out += [
                _r(e / dt / 1000.0, 3),
                _r(h / dt / 1000.0, 4),
                _r(e / 3.6e6, 4),
                _r(rev, 4),
                _r(cost, 4),
                _r(rev - cost, 4),
                _r(cum[k], 4),
                s.row_hashing[i],
                _r(s.row_change_cost[i], 4),
            ]
        rows.append(out)
    return header, rows


def _r(value: float, digits: int) -> float:
    """Rounded, never -0.0."""
    return round(value, digits) + 0.0


def rig_rows(outcome: Outcome) -> tuple[list[str], list[list[object]]]:
    """Per rig: what it is, how often it changed mode (wear), time curtailed, money."""
    header = [
        "rig",
        "model",
        "health",
        "group",
        "mode_changes",
        "hours_asleep",
        "hours_low",
        "energy_kwh",
        "revenue_usd",
        "cost_usd",
        "profit_usd",
        "always_on_profit_usd",
        "threshold_profit_usd",
        "threshold_mode_changes",
    ]
    p, a, t = (outcome.policy.strategy, outcome.always_on.strategy, outcome.threshold.strategy)
    rows: list[list[object]] = []
    for c in outcome.classes:
        for i in range(c.first, c.first + c.count):
            rows.append(
                [
                    f"{c.spec.key}-{i + 1:05d}",
                    c.spec.model,
                    c.health,
                    c.group,
                    p.rig_changes[i],
                    round(p.rig_asleep_s[i] / 3600.0, 3),
                    round(p.rig_low_s[i] / 3600.0, 3),
                    round(p.rig_energy_ws[i] / 3.6e6, 3),
                    round(p.rig_revenue[i], 4),
                    round(p.rig_cost[i], 4),
                    round(p.rig_revenue[i] - p.rig_cost[i], 4),
                    round(a.rig_revenue[i] - a.rig_cost[i], 4),
                    round(t.rig_revenue[i] - t.rig_cost[i], 4),
                    t.rig_changes[i],
                ]
            )
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def summary_rows(figs: Sequence[Figures]) -> tuple[list[str], list[list[object]]]:
    header = [
        "strategy",
        "energy_mwh",
        "revenue_usd",
        "cost_usd",
        "profit_usd",
        "profit_vs_always_on_usd",
        "rig_hours_asleep",
        "rig_hours_low",
        "mode_changes",
        "mode_changes_per_rig_max",
        "mode_changes_per_rig_mean",
        "steepest_ramp_kw_per_min",
        "gain_from_spikes_usd",
        "gain_from_low_hashprice_usd",
        "cost_of_changes_usd",
    ]
    base = next(f.profit_usd for f in figs if f.name == "always-on")
    rows: list[list[object]] = [
        [
            f.name,
            round(f.energy_mwh, 4),
            round(f.revenue_usd, 2),
            round(f.cost_usd, 2),
            round(f.profit_usd, 2),
            round(f.profit_usd - base, 2),
            round(f.rig_hours_asleep, 2),
            round(f.rig_hours_low, 2),
            f.mode_changes,
            f.mode_changes_per_rig_max,
            round(f.mode_changes_per_rig_mean, 3),
            round(f.steepest_ramp_kw_per_min, 2),
            money(f.gain_spikes_usd),
            money(f.gain_low_hashprice_usd),
            money(f.cost_of_changes_usd),
        ]
        for f in figs
    ]
    return header, rows


def money(value: float) -> float:
    """Rounded to the cent, never -0.0 (a cost of -0.001 is 0.0, not "-0.0")."""
    return _r(value, 2)


def gain_sentence(f: Figures, base: Figures, spikes: Spikes) -> str:
    """Where one strategy's profit against always-on came from, in words."""
    return (
        f"{f.name}: {money(f.profit_usd - base.profit_usd):+,.2f} USD against always-on = "
        f"{money(f.gain_spikes_usd):+,.2f} from the price spikes ({spikes.describe()}) "
        f"{money(f.gain_low_hashprice_usd):+,.2f} from running lower or asleep the rest of the "
        f"time (hashprice low against the power price) - {money(f.cost_of_changes_usd):,.2f} "
        "the changes cost (hashes lost booting and ramping, power drawn while slowing)"
    )


# ---------------------------------------------------------------------------------------------
# charts


def model_columns(outcome: Outcome) -> list[tuple[str, str]]:
    """(model name, its break-even column in series.csv), one per model in the fleet."""
    models = sorted(
        {u.cls.spec.key: u.cls.spec.model for u in outcome.always_on.strategy.units}.items()
    )
    return [
        (model, f"breakeven_{key.replace('+', 'plus')}_usd_per_ph_day") for key, model in models
    ]


def charts(outcome: Outcome, rule: SpikeRule | None = None) -> list[ChartSpec]:
    """The report's three charts, their data taken from the series.csv columns."""
    header, rows = series_rows(outcome, rule)
    cols: dict[str, list[float]] = {name: [] for name in header[1:]}
    names = header[1:]
    prices = Prices.of(outcome.market)
    for r, hp, pp in zip(rows, prices.hp, prices.pp, strict=True):
        for name, value in zip(names, r[1:], strict=True):
            cols[name].append(float(value) if isinstance(value, int | float) else math.nan)
        # empty price cells are drawn at the price the money is counted at (the last known)
        cols["hashprice_usd_per_ph_day"][-1] = hp
        cols["power_price_usd_per_kwh"][-1] = pp
    times = [row.t for row in outcome.market.rows]
    strategies = [(n, _p(n), COLORS[n]) for n in STRATEGIES]
    return chart_specs(cols, times, outcome.market.end, model_columns(outcome), strategies)


def _p(name: str) -> str:
    return name.replace("-", "_")


def write_report(
    outcome: Outcome,
    out: Path,
    title: str,
    notes: Sequence[str] = (),
    rule: SpikeRule | None = None,
) -> list[Path]:
    """Every report file into ``out`` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (header, rows) in (
        (SERIES_CSV, series_rows(outcome, rule)),
        (RIGS_CSV, rig_rows(outcome)),
        (SUMMARY_CSV, summary_rows(summary(outcome, rule))),
    ):
        write_csv(out / name, header, rows)
        written.append(out / name)
    made = charts(outcome, rule)
    for spec in made:
        path = out / f"{spec.stem}.png"
        path.write_bytes(render(spec, "png"))
        written.append(path)
    path = out / HTML
    path.write_text(html_page(outcome, title, made, notes, rule), encoding="utf-8")
    written.append(path)
    return written


def _inline_svg(data: bytes) -> str:
    """matplotlib's SVG document as an element for the page (its XML prologue and RDF
    metadata dropped: the page says what the chart is)."""
    text = data.decode("utf-8")
    text = text[text.index("<svg") :]
    head, _, rest = text.partition(" <metadata>")
    _, sep, tail = rest.partition("</metadata>\n")
    return head + tail if sep else text


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    for r in rows:
        out += "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
    return out + "</table>"


def summary_tables(figs: Sequence[Figures]) -> str:
    """The summary as two tables narrow enough for a 1,280 px page: money, then operations."""
    base = next(f for f in figs if f.name == "always-on")

    def usd(v: float, sign: bool = False) -> str:
        return f"{money(v):+,.2f}" if sign else f"{money(v):,.2f}"

    money_table = _html_table(
        [
            "strategy",
            "profit<br>USD",
            "vs always-on<br>USD",
            "from spikes<br>USD",
            "from low hashprice<br>USD",
            "cost of changes<br>USD",
            "revenue<br>USD",
            "power cost<br>USD",
            "energy<br>MWh",
        ],
        [
            [
                f.name,
                usd(f.profit_usd),
                usd(f.profit_usd - base.profit_usd, sign=True),
                usd(f.gain_spikes_usd, sign=True),
                usd(f.gain_low_hashprice_usd, sign=True),
                usd(f.cost_of_changes_usd),
                usd(f.revenue_usd),
                usd(f.cost_usd),
                f"{f.energy_mwh:,.2f}",
            ]
            for f in figs
        ],
    )
    ops_table = _html_table(
        [
            "strategy",
            "rig-hours<br>asleep",
            "rig-hours<br>low",
            "mode<br>changes",
            "changes per rig<br>max",
            "changes per rig<br>mean",
            "steepest ramp<br>kW/min",
        ],
        [
            [
                f.name,
                f"{f.rig_hours_asleep:,.1f}",
                f"{f.rig_hours_low:,.1f}",
                f"{f.mode_changes:,}",
                f"{f.mode_changes_per_rig_max:,}",
                f"{f.mode_changes_per_rig_mean:.2f}",
                f"{f.steepest_ramp_kw_per_min:,.1f}",
            ]
            for f in figs
        ],
    )
    return money_table + ops_table


def html_page(
    outcome: Outcome,
    title: str,
    made: Sequence[ChartSpec],
    notes: Sequence[str],
    rule: SpikeRule | None = None,
) -> str:
    figs = summary(outcome, rule)
    spikes, _ = spikes_of(outcome, rule or SpikeRule())
    base = next(f for f in figs if f.name == "always-on")
    gains = "".join(
        f"<li>{html.escape(gain_sentence(f, base, spikes))}</li>" for f in figs if f is not base
    )
    start, end = iso_utc(outcome.market.start), iso_utc(outcome.market.end)
    table = (
        summary_tables(figs) + f"<p>Where the gain against always-on came from:</p><ul>{gains}</ul>"
    )
    cfg = outcome.config
    g = cfg.guards
    facts = [
        f"market: {html.escape(outcome.market.path)}, {len(outcome.market.rows)} rows every "
        f"{outcome.market.interval_s} s, {start} to {end}",
        f"fleet: {html.escape(outcome.fleet.path)}, {outcome.fleet.rigs} rigs in "
        f"{len(outcome.classes)} classes",
        f"policies: {html.escape(', '.join(cfg.policies))}; tick {cfg.tick_s:g} s; dwell "
        f"{g.min_dwell_s:g} s; hysteresis {g.hysteresis_usd_per_day:g} USD/day; ramp "
        f"{g.ramp_kw_per_min:g} kW/min, {g.ramp_rigs_per_s:g} rigs/s; pool fee "
        f"{cfg.economics.pool_fee:g}, overhead {cfg.economics.overhead:g}",
        *(html.escape(n) for n in notes),
    ]
    svgs = "".join(f"<figure>{_inline_svg(render(spec, 'svg'))}</figure>" for spec in made)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:960px}"
        "table{border-collapse:collapse;font-size:13px;margin:0 0 1em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f4f4f4}figure{margin:1em 0}figure svg{max-width:100%;height:auto}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>"
        + "".join(f"<li>{f}</li>" for f in facts)
        + "</ul><h2>Summary</h2>"
        + table
        + "<p>policy: the configured policies through the guards, as live; always-on: every rig "
        "at normal throughout; threshold: a rig at normal while its margin at normal is &ge; 0 "
        "at that step, else asleep, no guards. Same physics for all three. Files: "
        f"{SERIES_CSV}, {RIGS_CSV}, {SUMMARY_CSV}, {', '.join(PNGS)}.</p>"
        "<h2>Charts</h2>" + svgs + "</body></html>\n"
    )
