"""Golden outputs of an ``edgekit export`` run: save one, then compare a fresh run against it.

    python benchmarks/golden.py save RUN_DIR OUT.json [--ignore-files GLOB] [--ignore-fields GLOB]
    python benchmarks/golden.py compare RUN_DIR GOLDEN.json

The golden holds RUN_DIR/report.json normalized (volatile keys dropped, absolute paths replaced by placeholders)
and the sha256 of every other file in RUN_DIR. ``compare`` prints each difference and exits 1 if there is any.
Globs: ``*`` matches anything (``/`` and ``.`` included), everything else is literal, e.g. ``variants[*].notes``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# Keys dropped wherever they occur in report.json: they change between runs of the same code.
VOLATILE_ANYWHERE: dict[str, str] = {
    "created_utc": "wall-clock time of the run (also in TensorRT engine manifests)",
    "timings_s": "stage durations",
    "seconds": "duration of each graph pass (manifest.settings.export *.passes[*])",
    "latency_ms": "measured latency, per variant and per component",
    "throughput_per_s": "measured throughput, per variant and per component",
    "peak_memory_mb": "measured peak RSS",
    "ttft_ms": "VLM time to first token (metrics)",
    "decode_tokens_per_s": "VLM decode speed (metrics)",
    "peak_memory_delta_mb": "VLM peak memory over the session's baseline (metrics)",
    "from_cache": "calibration cache hit: depends on EDGEKIT_CACHE's state, not on the code",
}
# Keys dropped only at the top level of report.json.
VOLATILE_TOP: dict[str, str] = {
    "device": "fingerprint of the machine (CPU, memory, OS, library versions)",
}
# Budget entries on these metrics are dropped too (their value is a measured speed or memory).
VOLATILE_METRICS: frozenset[str] = frozenset(
    {"ttft_ms", "decode_tokens_per_s", "peak_memory_delta_mb", "latency_ms", "throughput_per_s", "peak_memory_mb"}
)
# ``versions`` dicts keep only these keys: the other library versions belong to the machine, not the code.
KEPT_VERSIONS: frozenset[str] = frozenset({"edgekit"})
# Files not hashed: report.json is stored normalized instead, report.md renders it with the volatile values.
SKIPPED_FILES: frozenset[str] = frozenset({"report.json", "report.md", "report.html"})  # report.html carries timings and latency samples


def _glob(pattern: str) -> re.Pattern[str]:
    """A glob where only ``*`` is special (matches any run of characters)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


def _matches(path: str, patterns: list[str]) -> bool:
    return any(_glob(p).match(path) for p in patterns)


def _placeholders(run_dir: Path, repo: Path, assets: Path) -> list[tuple[str, str]]:
    """(absolute path, placeholder) pairs, longest path first, each also under its resolved form."""
    pairs: dict[str, str] = {}
    for path, name in ((assets, "${EDGEKIT_ASSETS}"), (run_dir, "${RUN_DIR}"), (repo, "${REPO}")):
        for form in (str(path.absolute()).rstrip("/"), str(path.resolve()).rstrip("/")):
            if form:  # never "/" (a cwd of / would otherwise replace every path's root)
                pairs.setdefault(form, name)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _replace(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, name in pairs:
        text = re.sub(re.escape(path) + r"(?![\w-])", name, text)  # placeholders hold no backslash
    return text


def normalize(value: Any, pairs: list[tuple[str, str]], top: bool = True) -> Any:
    """report.json without its volatile keys, with absolute paths replaced by placeholders."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in VOLATILE_ANYWHERE or (top and key in VOLATILE_TOP):
                continue
            if key == "versions" and isinstance(item, dict):
                item = {k: v for k, v in item.items() if k in KEPT_VERSIONS}
            if key == "budget" and isinstance(item, list):
                item = [b for b in item if not (isinstance(b, dict) and b.get("metric") in VOLATILE_METRICS)]
            out[_replace(key, pairs)] = normalize(item, pairs, top=False)
        return out
    if isinstance(value, list):
        return [normalize(item, pairs, top=False) for item in value]
    if isinstance(value, str):
        return _replace(value, pairs)
    return value


def file_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under run_dir (relative POSIX path -> hex), sorted, report.json/report.md left out."""
    hashes: dict[str, str] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if rel in SKIPPED_FILES:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        hashes[rel] = digest.hexdigest()
    return hashes


def snapshot(run_dir: Path, repo: Path, assets: Path) -> dict[str, Any]:
    """The normalized report and the file hashes of one run."""
    report = json.loads((run_dir / "report.json").read_text())
    return {"report": normalize(report, _placeholders(run_dir, repo, assets)), "files": file_hashes(run_dir)}


def diff(old: Any, new: Any, path: str, ignore: list[str]) -> list[str]:
    """Every difference between two JSON values, as 'path: old -> new' lines."""
    if path and _matches(path, ignore):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else key
            if key not in new:
                lines += [] if _matches(sub, ignore) else [f"{sub}: {json.dumps(old[key])} -> (missing)"]
            elif key not in old:
                lines += [] if _matches(sub, ignore) else [f"{sub}: (missing) -> {json.dumps(new[key])}"]
            else:
                lines += diff(old[key], new[key], sub, ignore)
        return lines
    if isinstance(old, list) and isinstance(new, list):
        lines = [line for i, (a, b) in enumerate(zip(old, new)) for line in diff(a, b, f"{path}[{i}]", ignore)]
        lines += [f"{path}[{i}]: {json.dumps(a)} -> (missing)" for i, a in enumerate(old[len(new) :], len(new))]
        lines += [f"{path}[{i}]: (missing) -> {json.dumps(b)}" for i, b in enumerate(new[len(old) :], len(old))]
        return lines
    if old != new or type(old) is not type(new):
        return [f"{path}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


def compare(
    golden: dict[str, Any], fresh: dict[str, Any], ignore_files: list[str], ignore_fields: list[str]
) -> list[str]:
    """Report and file differences of a fresh run against a golden; nondeterministic hashes are not compared."""
    lines = ["report." + line for line in diff(golden["report"], fresh["report"], "", ignore_fields)]
    old, new = golden["files"], fresh["files"]
    lines += [f"file removed: {f}" for f in sorted(set(old) - set(new))]
    lines += [f"file added: {f}" for f in sorted(set(new) - set(old))]
    lines += [
        f"file changed: {f}: {old[f]} -> {new[f]}"
        for f in sorted(set(old) & set(new))
        if old[f] != new[f] and not _matches(f, ignore_files)
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, target in (("save", "OUT.json"), ("compare", "GOLDEN.json")):
        p = sub.add_parser(name)
        p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
        p.add_argument("golden", type=Path, metavar=target)
        p.add_argument(
            "--ignore-files",
            action="append",
            default=[],
            metavar="GLOB",
            help="files whose hashes are nondeterministic (save: recorded in the golden; repeatable)",
        )
        p.add_argument(
            "--ignore-fields",
            action="append",
            default=[],
            metavar="GLOB",
            help="report fields that are nondeterministic, e.g. 'variants[*].notes' (repeatable)",
        )
        p.add_argument("--repo", type=Path, default=Path.cwd(), help="repository the run was made from (default: cwd)")
        p.add_argument(
            "--assets",
            type=Path,
            help="assets folder (default: $EDGEKIT_ASSETS, else REPO/../shared/assets, as edgekit resolves it)",
        )
    args = parser.parse_args(argv)
    if not (args.run_dir / "report.json").is_file():
        parser.error(f"{args.run_dir} has no report.json: not a finished edgekit export run")
    assets = args.assets or Path(os.environ.get("EDGEKIT_ASSETS") or args.repo / ".." / "shared" / "assets")
    fresh = snapshot(args.run_dir, args.repo, assets.expanduser().resolve())
    if args.command == "save":
        fresh["nondeterministic_files"] = sorted(set(args.ignore_files))
        fresh["nondeterministic_fields"] = sorted(set(args.ignore_fields))
        args.golden.parent.mkdir(parents=True, exist_ok=True)
        args.golden.write_text(json.dumps(fresh, indent=1) + "\n")
        print(
            f"saved {args.golden}: {len(fresh['files'])} files, "
            f"{len(fresh['nondeterministic_files'])} nondeterministic file globs, "
            f"{len(fresh['nondeterministic_fields'])} nondeterministic field globs"
        )
        return 0
    golden = json.loads(args.golden.read_text())
    ignore_files = golden.get("nondeterministic_files", []) + args.ignore_files
    ignore_fields = golden.get("nondeterministic_fields", []) + args.ignore_fields
    lines = compare(golden, fresh, ignore_files, ignore_fields)
    for line in lines:
        print(line)
    skipped = sorted(f for f in golden["files"] if f in fresh["files"] and _matches(f, ignore_files))
    print(f"{len(lines)} difference(s); {len(skipped)} nondeterministic file(s) not hash-compared", file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
