"""``report.html``: one self-contained page per run (no CDN, no plotting library, opens offline).

Plots are static SVG written here, as ``plots.py`` does for report.md: a run report must open years later on an
air-gapped CI artifact page, stay byte-identical for the same report, and weigh kilobytes. plotly would inline
3.5 MB of JavaScript per file and vega-lite needs its runtime; the plots here (scatter with a Pareto front, strip
plots of raw latency samples, bar charts) need neither. The one inline script only records what the browser
rendered (each plot's drawn size, script errors) in ``data-`` attributes, for the headless-browser test.
"""

from __future__ import annotations

import json
import re
from html import escape

from edgekit.reports.budget import budget_cell
from edgekit.reports.schema import Report, Variant

W, H, M = 640, 320, 56  # plot width, height, margin
COLORS = ("#3b7dd8", "#d8703b", "#4caf50", "#9c27b0", "#e91e63", "#795548", "#607d8b", "#ff9800")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1000px;padding:12px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.card{background:#f7f9fc;border:1px solid #dde3ec;border-radius:6px;padding:8px 12px}
.pass{color:#1b7f3b;font-weight:bold} .fail{color:#c62828;font-weight:bold} .skip{color:#888}
svg.plot{width:100%;height:auto;max-width:640px;display:block;margin:8px 0}
svg text{font:12px system-ui,sans-serif} details pre{overflow-x:auto;background:#f7f7f7;padding:8px;font-size:12px}
"""

PROBE = """
window.addEventListener('error',e=>{document.body.dataset.errors=(document.body.dataset.errors||'')+e.message+'\\n'});
window.addEventListener('load',()=>{const r=[...document.querySelectorAll('svg.plot')].map(s=>{const b=s.getBBox();
return {id:s.id,width:b.width,height:b.height,marks:s.querySelectorAll('circle,rect,path,line,polyline').length}});
document.body.dataset.plots=JSON.stringify(r);
document.body.dataset.overflow=String(document.documentElement.scrollWidth>window.innerWidth+1)});
"""


def _fmt(x: float | None, f: str = ".4f") -> str:
    return "-" if x is None else format(x, f)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(title: str, xlabel: str, ylabel: str, x: tuple[float, float], y: tuple[float, float]) -> list[str]:
    out = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{M}" y1="{H - M}" x2="{W - 16}" y2="{H - M}" stroke="#333"/>',
           f'<line x1="{M}" y1="{H - M}" x2="{M}" y2="30" stroke="#333"/>',
           f'<text x="{(M + W - 16) / 2}" y="{H - 14}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text x="14" y="{(H - M + 30) / 2}" text-anchor="middle" transform="rotate(-90 14 {(H - M + 30) / 2})">{escape(ylabel)}</text>']
    for i in range(5):
        fx, fy = x[0] + (x[1] - x[0]) * i / 4, y[0] + (y[1] - y[0]) * i / 4
        px, py = M + (W - 16 - M) * i / 4, H - M - (H - M - 30) * i / 4
        out += [f'<text x="{px:.1f}" y="{H - M + 16}" text-anchor="middle" fill="#555">{fx:.3g}</text>',
                f'<text x="{M - 6}" y="{py + 4:.1f}" text-anchor="end" fill="#555">{fy:.3g}</text>']
    return out


def _svg(plot_id: str, body: list[str], height: int = H) -> str:
    return (f'<svg class="plot" id="{plot_id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
            f'role="img" aria-label="{plot_id}">' + "".join(body) + "</svg>")


def primary_metric(report: Report) -> str | None:
    """The metric the page plots against latency: the first budgeted one, else the first the variants share."""
    measured = [v for v in report.variants if v.status != "not_built" and v.metrics]
    for m in [*report.budgets, *(measured[0].metrics if measured else {})]:
        if measured and all(m in v.metrics for v in measured):
            return m
    return None


def _latency(v: Variant) -> float | None:
    if v.latency_ms:
        return v.latency_ms.median
    medians = [c.latency_ms.median for c in v.components.values() if c.latency_ms]
    return sum(medians) if medians else None


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the Pareto front of (latency lower is better, accuracy higher is better)."""
    front, best = [], float("-inf")
    for name, _lat, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.append(name)
            best = acc
    return front


def tradeoff_svg(report: Report) -> str | None:
    metric = primary_metric(report)
    points = [(v.name, lat, v.metrics[metric]) for v in report.variants if v.status == "measured" and metric
              and (lat := _latency(v)) is not None]
    if not points:
        return None
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.1 or max(xs) * 0.1 or 1.0, (max(ys) - min(ys)) * 0.15 or abs(max(ys)) * 0.05 or 0.01
    xr, yr = (max(0.0, min(xs) - pad_x), max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y)
    sx, sy = _scale(*xr, M, W - 16), _scale(*yr, H - M, 30)
    body = _axes(f"{metric} vs median latency (Pareto front dashed)", "median latency (ms)", metric, xr, yr)
    front = pareto(points)
    by = {p[0]: p for p in points}
    line = " ".join(f"{sx(by[n][1]):.1f},{sy(by[n][2]):.1f}" for n in front)
    body.append(f'<polyline points="{line}" fill="none" stroke="#888" stroke-dasharray="5 4"/>')
    for i, (name, lat, acc) in enumerate(points):
        color = COLORS[i % len(COLORS)]
        body += [f'<circle cx="{sx(lat):.1f}" cy="{sy(acc):.1f}" r="6" fill="{color}"><title>{escape(name)}: {acc:.4f}, {lat:.2f} ms</title></circle>',
                 f'<text x="{sx(lat) + (9 if sx(lat) < W * 0.7 else -9):.1f}" y="{sy(acc) - 8:.1f}" text-anchor="{"start" if sx(lat) < W * 0.7 else "end"}">'
                 f'{escape(name)}{" *" if name in front else ""}</text>']
    return _svg("tradeoff", body)


def latency_svg(report: Report) -> str | None:
    rows = [(v.name, v.latency_ms.samples) for v in report.variants if v.latency_ms and v.latency_ms.samples]
    rows += [(f"{v.name} / {n}", c.latency_ms.samples) for v in report.variants for n, c in v.components.items() if c.latency_ms and c.latency_ms.samples]
    if not rows:
        return None
    hi = max(max(s) for _, s in rows) * 1.05
    band, top, label_w = 34, 40, 190
    height = top + band * len(rows) + 40
    sx = _scale(0.0, hi, label_w, W - 16)
    body = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">latency of every timed call (ms); box: quartiles, bar: median</text>']
    for i, (name, samples) in enumerate(rows):
        y = top + i * band
        s = sorted(samples)
        q1, med, q3 = s[len(s) // 4], s[len(s) // 2], s[(3 * len(s)) // 4]
        color = COLORS[i % len(COLORS)]
        body += [f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(name)}</text>',
                 f'<rect x="{sx(q1):.1f}" y="{y + 2}" width="{max(sx(q3) - sx(q1), 1):.1f}" height="20" fill="{color}" fill-opacity="0.25" stroke="{color}"/>',
                 f'<line x1="{sx(med):.1f}" y1="{y}" x2="{sx(med):.1f}" y2="{y + 24}" stroke="{color}" stroke-width="3"><title>median {med:.2f} ms</title></line>']
        body += [f'<circle cx="{sx(t):.1f}" cy="{y + 12 + ((k * 7) % 15) - 7}" r="2" fill="{color}"/>' for k, t in enumerate(samples)]
    axis_y = top + band * len(rows) + 4
    body.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{W - 16}" y2="{axis_y}" stroke="#333"/>')
    body += [f'<text x="{sx(hi * i / 4):.1f}" y="{axis_y + 16}" text-anchor="middle" fill="#555">{hi * i / 4:.3g}</text>' for i in range(5)]
    return _svg("latency", body, height)


def class_ap_svg(report: Report, top: int = 12) -> str | None:
    ref = report.variant(report.reference)
    if not ref or not ref.per_class_ap:
        return None
    variants = [v for v in report.variants if v is not ref and v.per_class_ap]
    if not variants:
        return None
    panels, label_w, bar_h = [], 150, 16
    y = 40
    body = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">per-class AP change vs {escape(ref.name)} ({top} largest per variant)</text>']
    for v in variants:
        change = sorted(((c, v.per_class_ap[c] - a) for c, a in ref.per_class_ap.items() if c in v.per_class_ap), key=lambda t: -abs(t[1]))[:top]
        bound = max([abs(d) for _, d in change] + [1e-6])
        sx = _scale(-bound, bound, label_w, W - 60)
        body.append(f'<text x="8" y="{y}" font-weight="bold">{escape(v.name)}</text>')
        y += 8
        for cls, d in change:
            x0, x1 = sx(0.0), sx(d)
            body += [f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{escape(cls)}</text>',
                     f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{max(abs(x1 - x0), 1):.1f}" height="{bar_h - 3}" fill="{COLORS[1] if d < 0 else COLORS[2]}"><title>{escape(cls)}: {d:+.4f}</title></rect>',
                     f'<text x="{max(x0, x1) + 4:.1f}" y="{y + 12}" fill="#555">{d:+.3f}</text>']
            y += bar_h
        body.append(f'<line x1="{sx(0.0):.1f}" y1="{y - bar_h * len(change)}" x2="{sx(0.0):.1f}" y2="{y}" stroke="#333"/>')
        y += 26
        panels.append(v.name)
    return _svg("class-ap", body, y)


def variants_table(report: Report) -> str:
    metrics = list(report.budgets) or sorted({m for v in report.variants for m in v.metrics})[:6]
    head = "".join(f"<th>{escape(h)}</th>" for h in ["variant", "status", *metrics, "median ms", "p90 ms", "size MB", "budget"])
    rows = []
    for v in report.variants:
        if v.status == "not_built":
            rows.append(f'<tr><td>{escape(v.name)}</td><td class="skip" colspan="{len(metrics) + 5}">not built: {escape(v.not_built_reason or "")}</td></tr>')
            continue
        cell = budget_cell(report, v)
        verdict = {"PASS": '<span class="pass">PASS</span>', "FAIL": '<span class="fail">FAIL</span>'}.get(cell.state, "-")
        lat = _latency(v)
        cells = [v.name, v.status, *[_fmt(v.metrics.get(m)) for m in metrics], _fmt(lat, ".2f"),
                 _fmt(v.latency_ms.p90 if v.latency_ms else None, ".2f"), f"{v.size_bytes / 1e6:.2f}"]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + f"<td>{verdict}</td></tr>")
    budgets = [f"<li>{escape(v.simulated_how)}: {escape(v.name)} is not built here</li>" for v in report.variants if v.status == "simulated"]
    budgets += [f"<li>{escape(v.name)}: {escape(b.message)}" + (f" (95% interval of the drop {b.interval[0]:.4f} to {b.interval[1]:.4f})" if b.interval else "")
               + "</li>" for v in report.variants for b in v.budget]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>" + (f"<ul>{''.join(budgets)}</ul>" if budgets else "")


def device_card(report: Report) -> str:
    d = report.device
    gpus = ", ".join(f"{g.get('name', '?')} (driver {g.get('driver', '?')}, sm {g.get('compute_capability', '?')})" for g in d.get("gpus") or [])
    keys = [("CPU", d.get("cpu_model")), ("cores", d.get("logical_cores")), ("ISA", ", ".join(d.get("isa_flags", []) or [])),
            ("GPU", gpus), ("Jetson", d.get("jetson_model")), ("L4T", d.get("l4t")), ("power mode", d.get("power_mode")),
            ("memory GB", d.get("memory_gb")), ("OS", d.get("os")), ("Python", d.get("python")),
            ("runtimes", ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items()))]
    return '<div class="card">' + "<br>".join(f"<b>{k}</b>: {escape(str(v))}" for k, v in keys if v) + "</div>"


def _inline_images(html: str, plots: dict[str, str]) -> str:
    """report.md's ``![..](plot.svg)`` images, inlined so the page needs no sibling file."""
    def swap(m: re.Match) -> str:
        svg = plots.get(m.group(1))
        return svg.replace("<svg ", f'<svg class="plot" id="{escape(m.group(1).removesuffix(".svg"))}" ', 1) if svg else m.group(0)
    return re.sub(r'<img src="([^"]+\.svg)"[^>]*>', swap, html)


def render_html(report: Report) -> str:
    from markdown_it import MarkdownIt

    from edgekit.reports.plots import report_plots
    from edgekit.reports.writer import tuning_lines

    name = report.recipe.get("name", "?")
    sections = [f"<h1>edgekit report: {escape(name)}</h1>",
                f"<p>Reference <code>{escape(report.reference)}</code>; created {escape(report.created_utc)}; edgekit {escape(report.edgekit_version)}.</p>",
                "<h2>Device</h2>", device_card(report), "<h2>Variants</h2>", variants_table(report)]
    for title, svg in (("Accuracy vs latency", tradeoff_svg(report)), ("Latency distributions", latency_svg(report)),
                       ("Per-class AP change", class_ap_svg(report))):
        if svg:
            sections += [f"<h2>{title}</h2>", svg]
    generation = [(v.name, v.metrics) for v in report.variants if "decode_tokens_per_s" in v.metrics]
    if generation:
        rows = "".join(f"<tr><td>{escape(n)}</td><td>{_fmt(m.get('ttft_ms'), '.1f')}</td><td>{_fmt(m.get('decode_tokens_per_s'), '.1f')}</td></tr>" for n, m in generation)
        sections += ["<h2>Generation</h2>", f"<table><tr><th>variant</th><th>TTFT ms</th><th>tokens/s</th></tr>{rows}</table>"]
    tuning = tuning_lines(report)
    if tuning:
        md = MarkdownIt("commonmark").enable("table")
        sections.append(_inline_images(md.render("\n".join(tuning)), report_plots(report)))
    manifests = "".join(f"<details><summary>{escape(v.name)}</summary><pre>{escape(json.dumps(v.manifest, indent=2, sort_keys=True))}</pre></details>"
                        for v in report.variants if v.manifest)
    sections += ["<h2>Manifest (versions, settings, input hashes)</h2>", manifests or "<p>-</p>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>edgekit report: {escape(name)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + f"\n<script>{PROBE}</script>\n</body></html>\n")

