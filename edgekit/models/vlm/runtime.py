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


def context_length(run: Path, meta: dict | None = None) -> int | None:
    """The decoder's context in tokens: ``vlm.json``'s ``context``, else ``text_config.max_position_embeddings`` of the
    model config the run's report names, else the tokenizer's ``model_max_length`` when it is a real limit."""
    run = Path(run)
    if meta is None:
        try:
            meta = json.loads((run / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
    if isinstance(meta.get("context"), int) and meta["context"] > 0:
        return meta["context"]
    try:
        model = json.loads((run / "report.json").read_text(encoding="utf-8"))["recipe"]["content"]["model"]
        folder = Path(model.get("weights") or model.get("config"))
        folder = folder.parent if folder.name == "config.json" else folder
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        value = (config.get("text_config") or {}).get("max_position_embeddings") or config.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def check_context(input_ids, image_tokens: int, max_new_tokens: int, context: int | None, run: Path) -> None:
    """Refuse a prompt whose tokens (image tokens included) plus ``max_new_tokens`` exceed the decoder's context: past
    it the model was never trained, and the attention's memory grows with the square of the length (a 100,000-character
    prompt reached 22.8 GB before this check)."""
    tokens = int(input_ids.shape[1])
    if context is not None and tokens + max_new_tokens > context:
        raise EdgekitError(
            f"the prompt is {tokens:,} tokens ({image_tokens:,} of them image tokens) and --max-new-tokens {max_new_tokens:,} more: "
            f"{tokens + max_new_tokens:,} exceeds the model's context of {context:,} tokens", run,
            f"shorten the prompt or lower --max-new-tokens (at most {max(context - tokens, 0):,} with this prompt)")


def generate_in_run(run: Path, prompt: str, image: Path | None, target: str | None, max_new_tokens: int, threads: int = 2,
                    on_text: Callable[[str], None] | None = None) -> tuple[Generation, str]:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    if image is not None and not Path(image).is_file():
        raise EdgekitError("image not found", image, "pass --image with a JPEG or PNG file")
    name, paths = target_graphs(Path(run), target)
    if max_new_tokens < 1:
        raise EdgekitError(f"--max-new-tokens is {max_new_tokens}", None, "pass at least 1")
    family = VlmFamily.from_run(Path(run))
    input_ids, pixel_values = family.inputs(image, prompt)
    check_context(input_ids, int((input_ids[0] == family.image_token_id).sum()), max_new_tokens, context_length(Path(run)), Path(run))
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
