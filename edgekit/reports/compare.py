"""``edgekit compare``: the same recipe measured on several devices or versions, side by side.

The first report is the baseline. Accuracy is compared everywhere (a variant whose metric fell below the
baseline's by more than the recipe's budget is a regression). Latency is compared only between reports with the
same device fingerprint (CPU/GPU model, ISA, cores, threads): across devices a ratio is information, on one device a
slowdown beyond the measured noise is a regression. Noise: two standard errors of the difference of the medians,
from each run's raw timed calls, and never less than 5% of the baseline's median.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from edgekit.reports.schema import Report, Variant

MIN_LATENCY_TOLERANCE = 0.05


def fingerprint(report: Report) -> str:
    """The device a report was measured on, and the threads its latency used."""
    d = report.device
    threads = sorted({v.threads for v in report.variants if v.threads})
    gpus = ",".join(g.get("name", "?") for g in d.get("gpus") or []) or "no GPU"
    board = [f"{d['jetson_model']} {d.get('power_mode', '')}".strip()] if d.get("jetson_model") else []
    return " / ".join(str(x) for x in (d.get("cpu_model") or "?", f"{d.get('logical_cores', '?')} cores", ",".join(d.get("isa_flags") or []) or "-",
                                        gpus, *board, f"threads {','.join(map(str, threads)) or '?'}"))


def _median_se(v: Variant) -> float:
    """Standard error of the median latency (1.2533 sigma / sqrt(n)) from the raw samples; 0 without them."""
    s = v.latency_ms.samples if v.latency_ms else []
    return 1.2533 * float(np.std(s, ddof=1)) / math.sqrt(len(s)) if len(s) >= 2 else 0.0


@dataclass
class Comparison:
    reports: list[tuple[str, Report]]
    variants: list[str]
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compare_reports(reports: list[tuple[str, Report]]) -> Comparison:
    """Variants measured in every report, and the regressions of each report against the first."""
    names = [v.name for v in reports[0][1].variants if v.status != "not_built"]
    common = [n for n in names if all((r.variant(n) and r.variant(n).status != "not_built") for _, r in reports[1:])]
    result = Comparison(reports, common)
    (base_label, base), budgets = reports[0], reports[0][1].budgets
    for label, other in reports[1:]:
        if other.recipe.get("name") != base.recipe.get("name"):
            result.notes.append(f"{label}: recipe {other.recipe.get('name')!r}, baseline {base.recipe.get('name')!r}")
        same_device = fingerprint(other) == fingerprint(base)
        if not same_device:
            result.notes.append(f"{label}: another device ({fingerprint(other)}): latency shown as ratios, not gated")
        for name in common:
            b, o = base.variant(name), other.variant(name)
            for metric, rule in budgets.items():
                if metric not in b.metrics or metric not in o.metrics or "max_drop" not in rule:
                    continue
                drop = b.metrics[metric] - o.metrics[metric]
                if drop > rule["max_drop"]:
                    result.regressions.append(f"{label}: {name} {metric} {o.metrics[metric]:.4f} vs {b.metrics[metric]:.4f} in {base_label} "
                                              f"(drop {drop:.4f} > budget {rule['max_drop']:g})")
            if same_device and b.latency_ms and o.latency_ms:
                noise = max(2 * math.hypot(_median_se(b), _median_se(o)), MIN_LATENCY_TOLERANCE * b.latency_ms.median)
                if o.latency_ms.median - b.latency_ms.median > noise:
                    result.regressions.append(f"{label}: {name} median latency {o.latency_ms.median:.2f} ms vs {b.latency_ms.median:.2f} ms in "
                                              f"{base_label} (+{o.latency_ms.median - b.latency_ms.median:.2f} ms > noise {noise:.2f} ms)")
    if not common:
        result.notes.append("no variant is measured in every report")
    return result


def rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: per variant and report, metrics, latency (ratio to baseline), size."""
    metrics = list(c.reports[0][1].budgets) or sorted({m for _, r in c.reports for v in r.variants for m in v.metrics})[:3]
    header = ["variant", "report", *metrics, "median ms", "vs baseline", "size MB"]
    out = []
    for name in c.variants:
        base = c.reports[0][1].variant(name)
        for label, r in c.reports:
            v = r.variant(name)
            lat = v.latency_ms.median if v.latency_ms else None
            ratio = f"{lat / base.latency_ms.median:.2f}x" if lat and base.latency_ms else "-"
            out.append([name, label, *[f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in metrics],
                        f"{lat:.2f}" if lat else "-", ratio, f"{v.size_bytes / 1e6:.2f}"])
    return header, out


def render_compare_html(c: Comparison) -> str:
    from edgekit.reports.html import COLORS, CSS, PROBE, W, _svg

    header, table = rows(c)
    devices = "".join(f"<li><b>{escape(label)}</b>: {escape(fingerprint(r))} ({escape(r.created_utc)})</li>" for label, r in c.reports)
    body = "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in row) + "</tr>" for row in table)
    # grouped bars: median latency per variant, one color per report
    bars, y, label_w = [f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">median latency (ms) per variant and report</text>'], 36, 170
    hi = max([r.variant(n).latency_ms.median for n in c.variants for _, r in c.reports if r.variant(n).latency_ms] + [1e-6]) * 1.1
    for name in c.variants:
        bars.append(f'<text x="{label_w - 8}" y="{y + 12}" text-anchor="end">{escape(name)}</text>')
        for i, (label, r) in enumerate(c.reports):
            v = r.variant(name)
            if v.latency_ms:
                w = (W - label_w - 60) * v.latency_ms.median / hi
                bars.append(f'<rect x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="12" fill="{COLORS[i % len(COLORS)]}"><title>{escape(label)}: {v.latency_ms.median:.2f} ms</title></rect>'
                            f'<text x="{label_w + w + 4:.1f}" y="{y + 10}" fill="#555">{v.latency_ms.median:.2f}</text>')
            y += 14
        y += 10
    legend = "".join(f'<span style="color:{COLORS[i % len(COLORS)]}">&#9632;</span> {escape(label)} ' for i, (label, _) in enumerate(c.reports))
    verdict = ("<p class=\"fail\">regressions:</p><ul>" + "".join(f"<li>{escape(x)}</li>" for x in c.regressions) + "</ul>") if c.regressions else '<p class="pass">no regression</p>'
    notes = "".join(f"<li>{escape(n)}</li>" for n in c.notes)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>edgekit compare</title><style>{CSS}</style></head><body>\n<h1>edgekit compare</h1><h2>Reports</h2><ul>{devices}</ul>"
            f"<h2>Verdict</h2>{verdict}<ul>{notes}</ul><h2>Side by side</h2><table><tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr>{body}</table>"
            f"<h2>Latency</h2><p>{legend}</p>{_svg('compare-latency', bars, y + 10)}\n<script>{PROBE}</script>\n</body></html>\n")


def label_for(path: Path) -> str:
    return path.parent.name if path.name == "report.json" else path.stem
