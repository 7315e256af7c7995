"""Generation from a VLM run folder: pick a target's graphs from ``vlm.json``, load them, generate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.models.vlm.family import META_FILE, VlmFamily
from edgekit.models.vlm.generate import Generation, generate


def target_graphs(run: Path, target: str | None) -> tuple[str, dict[str, Path]]:
    """``(target name, {graph: path})``; the recipe's first target when ``target`` is None."""
    meta_path = Path(run) / META_FILE
    if not meta_path.is_file():
        raise EdgekitError("not a VLM run folder (no vlm.json)", run, "pass the --out folder of `edgekit export recipes/smolvlm.yaml`")
    targets = json.loads(meta_path.read_text(encoding="utf-8")).get("targets") or {}
    name = target or next(iter(targets), None)
    if name not in targets:
        raise EdgekitError(f"target {name!r} is not in this run (have: {', '.join(targets) or 'none'})", run, "pass --target with one of those")
    paths = {g: Path(run) / f for g, f in targets[name].items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise EdgekitError(f"graph file missing: {missing[0]}", run, "re-run `edgekit export` for this recipe")
    return name, paths


def generate_in_run(run: Path, prompt: str, image: Path | None, target: str | None, max_new_tokens: int, threads: int = 2,
                    on_text: Callable[[str], None] | None = None) -> tuple[Generation, str]:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    if image is not None and not Path(image).is_file():
        raise EdgekitError("image not found", image, "pass --image with a JPEG or PNG file")
    name, paths = target_graphs(Path(run), target)
    family = VlmFamily.from_run(Path(run))
    input_ids, pixel_values = family.inputs(image, prompt)
    runners = {g: OnnxRuntimeRunner(p, threads=threads) for g, p in paths.items()}
    tokens: list[int] = []

    def on_token(token: int) -> None:
        tokens.append(token)
        if on_text is not None and token not in family.eos_token_ids:
            on_text(family.decode(tokens))

    try:
        for runner in runners.values():
            runner.load()
        result = generate(runners, family.layout, input_ids, family.image_token_id, pixel_values, max_new_tokens, family.eos_token_ids, on_token=on_token)
    finally:
        for runner in runners.values():
            runner.close()
    return result, name
