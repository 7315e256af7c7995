"""Zero-shot label embeddings for on-device classification, from a run's exported text tower.

The device then needs only the vision tower: ``logits = image_embeds @ class_embeddings.T``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def read_labels(path: str | Path) -> list[str]:
    """One class name per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("labels file not found", path, "pass a text file with one class name per line")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise EdgekitError("labels file holds no class names", path, "write one class name per line")
    return labels


def embed_labels(run: str | Path, labels: list[str], templates: list[str] | None = None, target: str = "onnxruntime:fp32") -> np.ndarray:
    """(C, E) unit-length class embeddings (OpenAI's prompt ensembling) from ``target``'s text tower in ``run``."""
    from edgekit.evaluators.zero_shot import class_embeddings
    from edgekit.models.clip.family import ClipFamily
    from edgekit.models.clip.tokenizer import load_tokenizer
    from edgekit.reports import load_report
    from edgekit.runners import runner_for_file

    run = Path(run)
    report = load_report(run / "report.json")
    variant = report.variant(target)
    if variant is None or "text" not in variant.components:
        names = ", ".join(v.name for v in report.variants if "text" in v.components) or "none"
        raise EdgekitError(f"no CLIP text tower for target {target!r} in this run (have: {names})", run / "report.json", "pass --target with one of those")
    model = report.recipe["content"]["model"]
    context = (report.recipe["content"].get("clip") or {}).get("context_length", 77)
    tokenizer = load_tokenizer(variant.manifest["settings"]["model"].get("tokenizer") or model.get("tokenizer"), context)
    templates = list(templates or DEFAULT_TEMPLATES)
    if any("{}" not in t for t in templates):
        raise EdgekitError("every template needs one '{}' for the class name", fix="e.g. --template 'a photo of a {}.'")
    family = ClipFamily(context_length=context, tokenizer=tokenizer)
    with runner_for_file(run / variant.components["text"].model_path) as runner:
        return class_embeddings(lambda texts: runner.infer(family.text_feed(texts))["text_embeds"], labels, templates, batch_size=64)
