"""Static SVG plots written beside the report: no plotting library, no script, so they open anywhere (a browser, a
Markdown viewer, a CI artifact page) and are byte-identical for the same report."""

from __future__ import annotations

import re
from html import escape
from typing import Any

BAR_H, GAP, LABEL_W, PANEL_W, PAD = 18, 6, 170, 260, 12
RECOVERED, COST_PLUS, COST_MINUS = "#3b7dd8", "#d8703b", "#4caf50"


def _panel(x0: float, top: float, values: list[float | None], title: str, fmt: str, colors: tuple[str, str]) -> list[str]:
    """One horizontal bar panel with its zero line: positive bars in ``colors[0]``, negative in ``colors[1]``."""
    known = [v for v in values if v is not None]
    lo, hi = min([0.0, *known]), max([0.0, *known])
    span = (hi - lo) or 1.0
    zero = x0 + (0.0 - lo) / span * PANEL_W
    out = [f'<text x="{x0 + PANEL_W / 2:.1f}" y="{top - 8}" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    for i, v in enumerate(values):
        y = top + i * (BAR_H + GAP)
        if v is None:
            out.append(f'<text x="{zero + 4:.1f}" y="{y + BAR_H - 5}" fill="#888">n/a</text>')
            continue
        x1 = x0 + (v - lo) / span * PANEL_W
        left, width = min(zero, x1), max(abs(x1 - zero), 1.0)
        color = colors[0] if v >= 0 else colors[1]
        out.append(f'<rect x="{left:.1f}" y="{y}" width="{width:.1f}" height="{BAR_H}" fill="{color}"><title>{format(v, fmt)}</title></rect>')
        tx, anchor = (x1 + 4, "start") if v >= 0 else (x1 - 4, "end")
        out.append(f'<text x="{tx:.1f}" y="{y + BAR_H - 5}" text-anchor="{anchor}">{format(v, fmt)}</text>')
    bottom = top + len(values) * (BAR_H + GAP)
    out.append(f'<line x1="{zero:.1f}" y1="{top - 2}" x2="{zero:.1f}" y2="{bottom}" stroke="#333"/>')
    return out


def plot_name(graph: str, search: str = "") -> str:
    """The sensitivity plot's file name of ``graph`` (``report.md`` links it); ``search``: a search with a table of
    its own (e.g. ``onnxruntime:int4`` for a VLM decoder's weight-only search)."""
    stem = "sensitivity" if graph == "model" else f"sensitivity_{graph}"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9]+', '-', search)}.svg" if search else f"{stem}.svg"


def sensitivity_tables(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(search label, table) of every sensitivity table in one graph's tuning record: the main search's (label ""),
    then each other search that computed its own (``backend_searches`` reusing the main table carry None)."""
    out = [("", (record.get("search") or {}).get("sensitivity"))]
    out += [(name, s.get("sensitivity")) for name, s in (record.get("backend_searches") or {}).items()]
    return [(name, table) for name, table in out if table and table.get("rows")]


def most_sensitive(table: dict[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` rows of a sensitivity table (``SensitivityTable.to_dict``) whose float form recovers most loss."""
    return sorted(table.get("rows", []), key=lambda r: -(r.get("recovered_pt") or 0.0))[:top]


def sensitivity_svg(table: dict[str, Any], top: int = 10, title: str = "") -> str:
    """The ``top`` groups whose float form recovers most tuning loss: recovered loss (pt) and what leaving each float
    costs in latency (ms, from the profiler; below zero the int8 form is the slower one) side by side."""
    rows = most_sensitive(table, top)
    header = 44 + (18 if title else 0)
    height = header + len(rows) * (BAR_H + GAP) + PAD
    second = LABEL_W + PANEL_W + 150  # left edge of the latency panel
    width = second + PANEL_W + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{PAD}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>')
    for i, r in enumerate(rows):
        y = header + i * (BAR_H + GAP)
        out.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end">{escape(str(r["group"]))}</text>')
    out += _panel(LABEL_W + 30, header, [r.get("recovered_pt") for r in rows], "tuning loss recovered when float (pt)", "+.2f",
                  (RECOVERED, "#999"))
    out += _panel(second, header, [r.get("latency_cost_ms") for r in rows], "latency cost if left float (ms; below 0: int8 is slower)", "+.2f",
                  (COST_PLUS, COST_MINUS))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def report_plots(report) -> dict[str, str]:
    """File name -> SVG text of every plot ``report`` has data for (a sensitivity table per searched graph)."""
    plots = {}
    for graph, record in ((report.tuning or {}).get("graphs") or {}).items():
        for search, table in sensitivity_tables(record):
            what = f"{graph}{f' ({search})' if search else ''}: all {'int8' if not search else search.split(':')[-1]}"
            plots[plot_name(graph, search)] = sensitivity_svg(table, title=f"Sensitivity of {what} {table.get('baseline_loss_pt', 0):.2f} pt "
                                                              f"tuning loss ({len(table['rows'])} groups)")
    return plots
