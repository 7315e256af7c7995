"""Write ``report.json`` and ``report.md`` side by side, atomically: both are rendered before either is written."""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edgekit.artifacts import atomic_path, sha256_file
from edgekit.reports.budget import budget_cell, recomputed_verdicts, resolution_line
from edgekit.reports.plots import most_sensitive, plot_name, report_plots, sensitivity_tables
from edgekit.reports.schema import SCHEMA_VERSION, Integrity, Report
from edgekit.reports.verify import canonical_digest, manifest_hashes, named_files

TOP_CLASS_DROPS = 10
_ISA_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx512_bf16", "amx_int8", "amx_tile", "avx2", "asimd", "asimddp", "i8mm", "sve")


def report_json(report: Report) -> str:
    """The JSON text of a report (NaN stays NaN so it reads back as a float)."""
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def file_hashes(report: Report, out_dir: Path) -> dict[str, str]:
    """sha256 of every file the report names that is in ``out_dir`` (a model's hash is reused from its manifest)."""
    known = {rel: pairs[0][1] for rel, pairs in manifest_hashes(report).items()}
    out = {}
    for rel in sorted(named_files(report)):
        if (out_dir / rel).is_file():
            out[rel] = known.get(rel) or sha256_file(out_dir / rel)
    return out


def sealed_json(report: Report, out_dir: Path) -> tuple[str, Integrity]:
    """The JSON text of ``report`` with its integrity record: the hashes of the files it names in ``out_dir`` and
    a digest over the rest (computed on the JSON as it will be read back)."""
    data = report.model_dump(mode="json", exclude={"integrity"})
    data["schema_version"] = SCHEMA_VERSION
    data["integrity"] = {"algorithm": "sha256", "files": file_hashes(report, out_dir)}
    data = json.loads(json.dumps(data, ensure_ascii=False))  # exactly what a reader gets back
    data["integrity"]["digest"] = canonical_digest(data)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n", Integrity.model_validate(data["integrity"])


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` (sealed with its integrity record, see ``edgekit.reports.verify``) and
    ``out_dir/report.md`` (and the SVG plots it shows, ``edgekit.reports.plots``) and ``out_dir/report.html``
    (``edgekit.reports.html``); on any failure none is touched. On success ``report`` carries the record."""
    out_dir = Path(out_dir)
    json_text, integrity = sealed_json(report, out_dir)
    md_text = render_markdown(report)
    from edgekit.reports.html import render_html

    html_text = render_html(report)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    with ExitStack() as stack:
        for name, svg in report_plots(report).items():  # plots first: report.md names them
            stack.enter_context(atomic_path(out_dir / name)).write_text(svg, encoding="utf-8")
        stack.enter_context(atomic_path(out_dir / "report.html")).write_text(html_text, encoding="utf-8")
        tmp_json = stack.enter_context(atomic_path(json_path))
        tmp_md = stack.enter_context(atomic_path(md_path))
        tmp_json.write_text(json_text, encoding="utf-8")
        tmp_md.write_text(md_text, encoding="utf-8")
    report.schema_version, report.integrity = SCHEMA_VERSION, integrity
    return json_path, md_path


# --- markdown ---------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _num(value: float | None, fmt: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def device_summary(device: dict[str, Any]) -> str:
    """One line from ``edgekit.profiling.device.device_fingerprint``: cpu, cores, ISA flags, OS, onnxruntime."""
    parts = [str(device.get("cpu_model", "unknown CPU"))]
    physical, logical = device.get("physical_cores"), device.get("logical_cores")
    if physical and logical and physical != logical:
        parts.append(f"{physical} cores / {logical} threads")
    elif logical:
        parts.append(f"{logical} cores")
    flags = [f for f in device.get("isa_flags", []) if f in _ISA_FLAGS]
    if flags:
        parts.append("ISA " + " ".join(flags))
    if device.get("os"):
        parts.append(str(device["os"]))
    ort = device.get("versions", {}).get("onnxruntime")
    if ort:
        parts.append(f"onnxruntime {ort}")
    for gpu in device.get("gpus", []):
        parts.append(f"GPU {gpu.get('name')} (sm {gpu.get('compute_capability')})")
    if device.get("jetson_model"):
        parts.append(f"{device['jetson_model']} {device.get('power_mode') or ''}".strip())
    return ", ".join(parts)


def _budget_text(budget: dict[str, Any]) -> str:
    if budget.get("max_drop") is not None:
        return f"max drop {float(budget['max_drop']):.4f}"
    if budget.get("max_relative_drop") is not None:
        return f"max relative drop {float(budget['max_relative_drop']):.2%}"
    if budget.get("max_value") is not None:
        return f"max value {float(budget['max_value']):.4f}"
    return str(budget)


def engine_lines(report: Report) -> list[str]:
    """Per target: its files, how it was built or compiled (read back from the backend), or why it was not built."""
    lines = []
    for v in report.variants:
        backend = (v.manifest.get("settings") or {}).get("backend") or {}
        lines.append(f"- `{v.name}`: " + ", ".join(f"`{f}`" for f in v.files or [v.model_path]))
        if v.status != "measured":
            lines.append(f"  - **not built:** {v.not_built_reason}")
        if v.status == "simulated":
            lines.append(f"  - **{v.simulated_how}**")
        if v.simulated_metrics:  # a real engine and its CPU simulation, both measured
            shown = [m for m in v.simulated_metrics if m in v.metrics and m in report.budgets] or list(v.simulated_metrics)[:3]
            lines.append("  - engine vs CPU simulation: " + ", ".join(f"{m} {v.metrics.get(m, float('nan')):.4f} vs {v.simulated_metrics[m]:.4f}" for m in shown))
        if backend.get("compiled"):
            lines.append("  - compiled: " + ", ".join(f"{k}={val}" for k, val in backend["compiled"].items()))
        if backend.get("interpreter"):
            lines.append("  - interpreter: " + ", ".join(f"{k}={val}" for k, val in backend["interpreter"].items()))
        if backend.get("lint"):
            lint = backend["lint"]
            lines.append("  - TensorRT Q/DQ lint: " + ("clean" if lint.get("passed") else f"{len(lint.get('issues', []))} issue(s)"))
        if backend.get("trtexec"):
            lines.append(f"  - build: `{backend['trtexec']}`")
    return lines


def _sha_text(sha: str | dict | None) -> str:
    """First 12 hex digits of an artifact's sha256, or of each graph's (``vision abc… text def…``)."""
    if not sha:
        return "-"
    if isinstance(sha, dict):
        return " ".join(f"{k} `{str(h)[:12]}`" for k, h in sha.items() if h) or "-"
    return f"`{str(sha)[:12]}`"


def component_lines(report: Report) -> list[str]:
    """Per-graph latency (when timed per graph, as CLIP towers are) and size, against the reference's same graph."""
    names = list(dict.fromkeys(c for v in report.variants for c in v.components))
    if not names:
        return []
    ref = report.variant(report.reference)
    timed = any(c.latency_ms for v in report.variants for c in v.components.values())
    columns = ("precision", "median ms", "speed-up", "MB") if timed else ("precision", "MB")
    header = ["variant"] + [f"{n} {col}" for n in names for col in columns]
    rows = []
    for v in report.variants:
        row = [v.name]
        for n in names:
            c, r = v.components.get(n), ref.components.get(n) if ref else None
            lat, ref_lat = (c.latency_ms if c else None), (r.latency_ms if r else None)
            cells = {"precision": c.precision if c else "-", "median ms": f"{lat.median:.2f}" if lat else "-",
                     "speed-up": f"{ref_lat.median / lat.median:.2f}x" if lat and ref_lat and lat.median > 0 else "-",
                     "MB": f"{c.size_bytes / 1e6:.2f}" if c else "-"}
            row += [cells[col] for col in columns]
        rows.append(row)
    return ["## Per-graph latency and size" if timed else "## Per-graph size", "", *_table(header, rows), ""]


GENERATION_METRICS = ("ttft_ms", "decode_tokens_per_s")


def generation_lines(report: Report) -> list[str]:
    """VLM targets: time to first token, decode speed and peak memory, each against the reference."""
    rows, ref = [], report.variant(report.reference)
    if not any(all(m in v.metrics for m in GENERATION_METRICS) for v in report.variants):
        return []
    rm = ref.metrics if ref else {}
    for v in report.variants:
        m = v.metrics
        if not all(k in m for k in GENERATION_METRICS):
            continue
        ttft_ratio = f"{rm['ttft_ms'] / m['ttft_ms']:.2f}x" if rm.get("ttft_ms") and m["ttft_ms"] > 0 else "-"
        tps_ratio = f"{m['decode_tokens_per_s'] / rm['decode_tokens_per_s']:.2f}x" if rm.get("decode_tokens_per_s") else "-"
        rows.append([v.name, f"{m['ttft_ms']:.1f}", ttft_ratio, f"{m['decode_tokens_per_s']:.1f}", tps_ratio, _num(v.peak_memory_mb, ".0f"),
                     _num(m.get("peak_memory_delta_mb"), ".0f"), f"{v.size_bytes / 1e6:.2f}", _num(m.get("exact_match"), ".3f")])
    speed = ((ref.manifest.get("settings") or {}).get("speed") or {}) if ref else {}
    what = f" ({speed.get('prompt_tokens')}-token prompt, {speed.get('generated_tokens')} tokens, {speed.get('rounds')} interleaved rounds, medians)" if speed else ""
    return [f"## Generation speed and memory{what}", "",
            *_table(["variant", "TTFT ms", "TTFT speed-up", "decode tokens/s", "decode speed-up", "peak MB", "peak over baseline MB", "size MB", "exact match"], rows),
            "", "TTFT covers embedding, vision encoder and prefill; the main table's latency column is TTFT and throughput is decode tokens/s. "
            "Peak memory is measured per target in a fresh process.", ""]


def budget_lines(report: Report) -> list[str]:
    """Each verdict, a table of the bootstrap intervals (schema 1.3) and a line per budget the set cannot resolve."""
    ref = report.variant(report.reference)
    gated = [(v, recomputed_verdicts(report, v)) for v in report.variants if v is not ref and v.status in ("measured", "simulated")]
    checks = [f"- `{v.name}`: {b.message}" for v, verdicts in gated for b in verdicts]
    if not checks:
        return []
    lines = ["## Budget checks", "", *checks, ""]
    rows, unresolved = [], []
    for v, verdicts in gated:
        for b in verdicts:
            if b.interval is None and not b.interval_note:
                continue
            point = b.value if b.kind == "ceiling" else (b.relative_drop if b.kind == "relative" else b.drop)
            shown = (f"{point:.2%}" if b.kind == "relative" else f"{point:.4f}") if point is not None else "-"
            if b.interval is not None:
                low, high = b.interval
                cell = f"{low:.2%} to {high:.2%}" if b.kind == "relative" else f"{low:.4f} to {high:.4f}"
                resolves = "yes" if b.resolvable else f"no (~{b.samples_needed} {b.sample_unit})" if b.samples_needed else "no"
            else:
                cell, resolves = b.interval_note or "no interval", "-"
            limit = f"{b.limit:.2%}" if b.kind == "relative" else f"{b.limit:.4f}"
            rows.append([v.name, b.metric, {"absolute": "drop", "relative": "relative drop", "ceiling": "value"}[b.kind], shown, cell, limit, resolves])
            if line := resolution_line(b):
                unresolved.append(f"- `{v.name}`: {line}")
    if rows:
        first = next((b for _, vs in gated for b in vs if b.interval is not None), None)
        what = (f"{first.confidence:.0%} paired bootstrap interval ({first.resamples} resamples of the {first.sample_count} {first.sample_unit}, seed {first.seed})"
                if first else "bootstrap interval")
        lines += [f"### Intervals: {what}", "",
                  *_table(["variant", "metric", "gated", "point", "interval", "budget", "set resolves the budget"], rows, ["l", "l", "l", "r", "r", "r", "l"]), ""]
        lines += [*unresolved, ""] if unresolved else []
    return lines


def tuning_lines(report: Report) -> list[str]:
    """Which images chose the settings and which measured them; per graph, the range candidates and the search trace."""
    t = report.tuning
    if not t:
        return []
    sets = t.get("sets", {})
    def folders(key: str) -> str:
        return ", ".join(f"`{f}`" for f in sets.get(key, [])) or "-"

    evaluated = sets.get("evaluation_images")
    lines = ["## Tuning (what chose the settings)", "",
             f"- settings chosen on **{sets.get('tuning_images', '?')} tuning samples** in {folders('tuning_folders')} "
             f"(labels: {sets.get('labels', 'none')}" + (f"; sha256 {sets['tuning_sha256'][:12]}" if sets.get("tuning_sha256") else "") + ")",
             f"- accuracy measured on {f'**{evaluated} evaluation images**' if evaluated else 'the evaluation set'} ({folders('evaluation_folders')}), "
             "never used for a choice" + (f" (disjoint by {sets['disjoint_by']})" if sets.get("disjoint_by") else ""), ""]
    for graph, record in t.get("graphs", {}).items():
        where = "" if graph == "model" else f" of `{graph}`"
        for key, title in (("ranges", "Range method"), ("bias_correction", "Bias correction")):
            if key not in record:
                continue
            r = record[key]
            rows = [[row["candidate"] + (" **(chosen)**" if row["candidate"] == r["chosen"] else ""), f"{row['score']:.4f}",
                     f"{row['loss_pt']:.3g}", _num(row.get("gain_se"), ".2f"), f"{row['seconds']:.1f}"] for row in r["candidates"]]
            lines += [f"### {title}{where}: {r['metric']}", "", *_table(["candidate", "score", "loss pt", "gain / SE", "s"], rows), ""]
            if r.get("rule"):
                lines += [f"Rule: {r['rule']}.", ""]
        for search, table in sensitivity_tables(record):
            ranked = most_sensitive(table)
            rows = [[r["group"], r["kind"], str(r["nodes"]), _num(r.get("loss_float_only_pt"), ".2f"), _num(r.get("recovered_pt"), "+.2f"),
                     _num(r.get("latency_cost_ms"), "+.3f"), r.get("method", "")] for r in ranked]
            label = f"{where}, {search}" if search else where
            lines += [f"### Sensitivity{label}: the {len(rows)} groups whose float form recovers most tuning loss "
                      f"(all {search.split(':')[-1] if search else 'int8'} {_num(table.get('baseline_loss_pt'), '.2f')} pt, "
                      f"{len(table.get('rows', []))} groups ranked)", "",
                      f"![sensitivity{label}]({plot_name(graph, search)})", "",
                      *_table(["group", "kind", "nodes", "loss if float pt", "recovered pt", "latency cost ms", "cost from"], rows), ""]
        searches = ([("onnxruntime", record["search"])] if "search" in record else []) + list(record.get("backend_searches", {}).items())
        for backend, sr in searches:
            chosen_groups = list(sr.get("float_groups", []))
            rows = [[c.get("step", ""), (", ".join(c.get("float_groups", [])) or "(all int8)") + (" **(chosen)**" if list(c.get("float_groups", [])) == chosen_groups else ""),
                     _num(c.get("loss_pt"), ".2f"), _num(c.get("latency_ms"), ".2f"), _num(c.get("delta_ms"), "+.2f") + (f" ± {2 * c['se_ms']:.2f}" if c.get("se_ms") else ""),
                     "yes" if c.get("met") else "no", _num(c.get("seconds"), ".1f")] for c in sr.get("trace", [])]
            chosen = ", ".join(sr.get("float_groups", [])) or "nothing"
            priced = ("ONNX Runtime" if backend == "onnxruntime" else f"{backend}, each candidate built by its own quantizer" +
                      (" and its tuning loss scored on it" if str(sr.get("scored_on", "")).startswith(backend) else ""))
            how = (f"Every candidate's latency priced by a {sr['priced_by']} (tuning loss scored on {sr.get('scored_on')})"
                   if str(sr.get("priced_by", "")).startswith("cost model") else
                   f"Every candidate's latency measured on this machine ({priced}, paired with the all-int8 model; ± two standard "
                   "errors: a candidate replaces all int8 only when its confirmation run is faster beyond them)")
            lines += [f"### Mixed-precision search{where}, {backend}: groups left float: {chosen} "
                      f"({'meets' if sr.get('met') else 'does NOT meet'} the tuning budget {_num(sr.get('max_loss_pt'), '.2f')} pt)", "",
                      *_table(["step", "float groups", "loss pt", "latency ms", "vs all-int8 ms", "meets", "s"], rows), "",
                      f"{how}; search {sr.get('seconds', 0):.0f} s ({sr.get('stopped', '')})."
                      + (f" Applied: {sr['applied']}." if sr.get("applied") else ""), ""]
        lines += [f"- {note}" for note in record.get("search_notes", [])] + ([""] if record.get("search_notes") else [])
    return lines


def render_markdown(report: Report) -> str:
    """A readable summary: main table, fidelity, worst per-class AP drops, timings."""
    ref = report.variant(report.reference)
    lines = [f"# edgekit report: {report.recipe.get('name', '?')}", ""]
    lines.append(f"**Device:** {device_summary(report.device)}  ")
    meta = f"**Reference:** `{report.reference}`" + ("" if ref else " (missing from the report)")
    lines.append(f"{meta} · edgekit {report.edgekit_version} · {report.created_utc}  ")
    if report.recipe.get("path"):
        sha = str(report.recipe.get("sha256", ""))[:12]
        lines.append(f"**Recipe:** `{report.recipe['path']}`" + (f" (sha256 {sha})" if sha else "") + "  ")
    if report.budgets:
        lines.append("**Budgets:** " + "; ".join(f"{m}: {_budget_text(b)}" for m, b in report.budgets.items()))
    else:
        lines.append("**Budgets:** none defined")
    lines.append("")

    metrics = list(report.budgets) or sorted({m for v in report.variants for m in v.metrics})
    ref_median = ref.latency_ms.median if ref and ref.latency_ms else None
    header = ["variant", "precision", *metrics, "median / p90 ms", "speed-up", "size MB", "budget"]
    rows = []
    for v in report.variants:
        row = [v.name, v.precision]
        for m in metrics:
            value = v.metrics.get(m)
            text = _num(value)
            if ref is not None and v is not ref and value is not None and ref.metrics.get(m) is not None:
                text += f" ({(value - ref.metrics[m]) * 100:+.2f} pt)"
            row.append(text)
        lat = v.latency_ms
        row.append(f"{lat.median:.2f} / {lat.p90:.2f}" if lat else "-")
        row.append(f"{ref_median / lat.median:.2f}x" if ref_median and lat and lat.median > 0 else "-")
        row.append(f"{v.size_bytes / 1e6:.2f}" if v.size_bytes else "-")
        cell = budget_cell(report, v)
        text = {"not built": "not built (see Engines)", "reference": "reference", "none": "-", "PASS": "PASS"}.get(cell.state)
        row.append((text or "**FAIL** (" + ", ".join(cell.failed) + ")") + (" (simulated, engine not built)" if cell.simulated else ""))
        rows.append(row)
    lines += ["## Variants", "", *_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 3) + ["l"]), ""]

    if report.budgets and ref is not None:
        lines += budget_lines(report)

    detail_rows = [
        [v.name, _num(v.throughput_per_s, ".1f"), v.batch, v.threads if v.threads is not None else "-", _num(v.peak_memory_mb, ".0f"),
         f"{v.latency_ms.p99:.2f}" if v.latency_ms else "-", _sha_text(v.manifest.get("artifact_sha256"))]
        for v in report.variants
    ]
    lines += ["## Runtime details", "", *_table(["variant", "throughput/s", "batch", "threads", "peak MB", "p99 ms", "sha256"], detail_rows), ""]

    lines += generation_lines(report)
    lines += component_lines(report)
    lines += ["## Engines", "", *engine_lines(report), ""]

    fid = [v for v in report.variants if v.fidelity]
    if fid:
        keys = list(dict.fromkeys(k for v in fid for k in v.fidelity))
        rows = [[v.name, *[_num(v.fidelity.get(k), ".4g") for k in keys]] for v in fid]
        lines += [f"## Fidelity vs `{report.reference}`", "", *_table(["variant", *keys], rows), ""]

    if ref is not None and ref.per_class_ap:
        sections = []
        for v in report.variants:
            if v is ref or not v.per_class_ap:
                continue
            common = [c for c in ref.per_class_ap if c in v.per_class_ap]
            drops = sorted(common, key=lambda c: ref.per_class_ap[c] - v.per_class_ap[c], reverse=True)[:TOP_CLASS_DROPS]
            rows = [[c, f"{ref.per_class_ap[c]:.4f}", f"{v.per_class_ap[c]:.4f}", f"{(v.per_class_ap[c] - ref.per_class_ap[c]) * 100:+.2f} pt"] for c in drops]
            if rows:
                sections += [f"### `{v.name}`: {len(rows)} largest drops of {len(common)} classes", "", *_table(["class", "reference AP", "AP", "change"], rows), ""]
        if sections:
            lines += ["## Per-class AP (largest drops vs reference)", "", *sections]

    lines += tuning_lines(report)

    notes = [(v.name, n) for v in report.variants for n in v.notes]
    if notes:
        lines += ["## Notes", "", *[f"- `{name}`: {note}" for name, note in notes], ""]

    if report.timings_s:
        rows = [[stage, f"{seconds:.2f}"] for stage, seconds in report.timings_s.items()]
        lines += ["## Timings", "", *_table(["stage", "seconds"], rows), ""]
    return "\n".join(lines).rstrip() + "\n"
