"""The backtest's report: figures per strategy, the per-step series, per-rig totals, and the
files (CSV, a self-contained HTML page with inline SVG charts, PNGs)."""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.backtest.engine import Outcome, Prices, Replay
from daemon.backtest.inputs import iso_utc
from daemon.backtest.png import RGB, chart_png, short, ticks

SERIES_CSV = "series.csv"
RIGS_CSV = "rigs.csv"
SUMMARY_CSV = "summary.csv"
HTML = "report.html"
PNGS = ("hashprice.png", "power.png", "profit.png")
STRATEGIES = ("policy", "always-on", "threshold")
COLORS: dict[str, RGB] = {
    "policy": (31, 119, 180),
    "always-on": (127, 127, 127),
    "threshold": (255, 127, 14),
    "hashprice": (0, 0, 0),
}
_MODEL_COLORS: tuple[RGB, ...] = (
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (255, 152, 150),
)
MAX_POINTS = 1500


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


def figures(r: Replay) -> Figures:
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
    )


def summary(outcome: Outcome) -> list[Figures]:
    return [figures(r) for r in (outcome.policy, outcome.always_on, outcome.threshold)]


def series_rows(outcome: Outcome) -> tuple[list[str], list[list[object]]]:
    """The per-step fleet series: prices, then per strategy power, energy, money and rigs."""
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
    ]
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
            round(be, 4),
        ]
        for k, r in enumerate(reps):
            s = r.strategy
            e, h = s.row_energy_ws[i], s.row_hash_ths_s[i]
            rev, cost = h * hp * fee_k, e * pp * cost_k
            cum[k] += rev - cost
            out += [
                round(e / dt / 1000.0, 3),
                round(h / dt / 1000.0, 4),
                round(e / 3.6e6, 4),
                round(rev, 4),
                round(cost, 4),
                round(rev - cost, 4),
                round(cum[k], 4),
                s.row_hashing[i],
            ]
        rows.append(out)
    return header, rows


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
        ]
        for f in figs
    ]
    return header, rows


# ---------------------------------------------------------------------------------------------
# charts


def _downsample(values: Sequence[float], points: int = MAX_POINTS) -> list[float]:
    """Bucket means, at most ``points`` of them."""
    n = len(values)
    if n <= points:
        return list(values)
    out = []
    for b in range(points):
        lo, hi = b * n // points, (b + 1) * n // points
        chunk = values[lo:hi]
        out.append(sum(chunk) / len(chunk))
    return out


Chart = tuple[str, str, list[tuple[str, RGB, list[float]]]]


def charts(outcome: Outcome) -> list[Chart]:
    """(file stem, title, series) for the three charts."""
    header, rows = series_rows(outcome)
    col = {name: i for i, name in enumerate(header)}
    prices = Prices.of(outcome.market)
    terms = outcome.config.economics
    hp_line: list[tuple[str, RGB, list[float]]] = [
        ("hashprice", COLORS["hashprice"], _downsample(prices.hp))
    ]
    models: dict[str, tuple[float, float]] = {}
    for u in outcome.always_on.strategy.units:
        p, h = models.get(u.cls.spec.model, (0.0, 0.0))
        models[u.cls.spec.model] = (p + u.phys.power_w * u.m, h + u.phys.hashrate_ths * u.m)
    for k, (model, (p_w, h_ths)) in enumerate(sorted(models.items())[: len(_MODEL_COLORS)]):
        be = [
            p_w / 1000.0 * 24.0 * pp * terms.overhead / (h_ths / 1000.0 * (1 - terms.pool_fee))
            for pp in prices.pp
        ]
        hp_line.append((f"break-even {model}", _MODEL_COLORS[k], _downsample(be)))
    power = [
        (n, COLORS[n], _downsample([_num(r[col[f"{_p(n)}_power_kw"]]) for r in rows]))
        for n in STRATEGIES
    ]
    profit = [
        (n, COLORS[n], _downsample([_num(r[col[f"{_p(n)}_cum_profit_usd"]]) for r in rows]))
        for n in STRATEGIES
    ]
    return [
        ("hashprice", "Hashprice against break-even at normal (USD/PH/day)", hp_line),
        ("power", "Fleet power (kW)", power),
        ("profit", "Cumulative profit (USD)", profit),
    ]


def _p(name: str) -> str:
    return name.replace("-", "_")


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def svg_chart(
    title: str, series: Sequence[tuple[str, RGB, Sequence[float]]], start: str, end: str
) -> str:
    """An inline SVG line chart with a y axis, gridlines and a legend."""
    w, h, left, right, top, bottom = 900, 320, 70, 10, 28, 40
    values = [v for _, _, ys in series for v in ys]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pw, ph = w - left - right, h - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for t in ticks(lo, hi):
        y = top + (hi - t) / (hi - lo) * ph
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#e1e1e1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{short(t)}</text>"
        )
    parts.append(
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top + ph}" x2="{w - right}" y2="{top + ph}" stroke="#333"/>'
        f'<text x="{left}" y="{h - 22}" font-size="11">{start}</text>'
        f'<text x="{w - right}" y="{h - 22}" font-size="11" text-anchor="end">{end}</text>'
    )
    for name, color, ys in series:
        n = len(ys)
        pts = " ".join(
            f"{left + (i / (n - 1) * pw if n > 1 else 0):.1f},{top + (hi - v) / (hi - lo) * ph:.1f}"
            for i, v in enumerate(ys)
        )
        rgb = "rgb({},{},{})".format(*color)
        parts.append(
            f'<polyline fill="none" stroke="{rgb}" stroke-width="1.3" points="{pts}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
    x = left
    for name, color, _ in series:
        rgb = "rgb({},{},{})".format(*color)
        parts.append(
            f'<rect x="{x}" y="{h - 14}" width="12" height="4" fill="{rgb}"/>'
            f'<text x="{x + 16}" y="{h - 9}" font-size="11">{html.escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def write_report(outcome: Outcome, out: Path, title: str, notes: Sequence[str] = ()) -> list[Path]:
    """Every report file into ``out`` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (header, rows) in (
        (SERIES_CSV, series_rows(outcome)),
        (RIGS_CSV, rig_rows(outcome)),
        (SUMMARY_CSV, summary_rows(summary(outcome))),
    ):
        write_csv(out / name, header, rows)
        written.append(out / name)
    made = charts(outcome)
    for stem, chart_title, series in made:
        path = out / f"{stem}.png"
        path.write_bytes(chart_png(series, chart_title))
        written.append(path)
    path = out / HTML
    path.write_text(html_page(outcome, title, made, notes), encoding="utf-8")
    written.append(path)
    return written


def html_page(outcome: Outcome, title: str, made: Sequence[Chart], notes: Sequence[str]) -> str:
    figs = summary(outcome)
    header, rows = summary_rows(figs)
    start, end = iso_utc(outcome.market.start), iso_utc(outcome.market.end)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    for r in rows:
        table += "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
    table += "</table>"
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
    svgs = "".join(f"<figure>{svg_chart(t, s, start, end)}</figure>" for _, t, s in made)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:960px}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f4f4f4}figure{margin:1em 0}"
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
