"""Zero-shot inputs: OpenAI's class names and prompt templates (``openai_clip_prompts.md``) and labelled images."""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

_SECTION = re.compile(r"^## +(.+?)\s*$", re.MULTILINE)
_CODE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _section_lists(path: Path, section: str) -> dict[str, list]:
    """The list literals assigned in ``section``'s code block, by name (parsed with ``ast``, never executed)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("prompts file not found", path, "pass OpenAI's openai_clip_prompts.md")
    text = path.read_text(encoding="utf-8")
    heads = list(_SECTION.finditer(text))
    names = [h.group(1) for h in heads]
    if section not in names:
        raise EdgekitError(f"no section {section!r}; available: {', '.join(names) or 'none'}", path, "pick one of the listed sections")
    i = names.index(section)
    body = text[heads[i].end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
    block = _CODE.search(body)
    try:
        tree = ast.parse(block.group(1) if block else "")
    except SyntaxError as exc:
        raise EdgekitError(f"section {section!r} has an unparsable code block ({exc.msg}, line {exc.lineno})", path) from None
    out: dict[str, list] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, list):
                out[node.targets[0].id] = value
    return out


def _strings(path: Path, section: str, key: str) -> list:
    values = _section_lists(path, section).get(key)
    if not values:
        raise EdgekitError(f"section {section!r} has no non-empty `{key} = [...]` list", path)
    return values


def load_templates(path: Path, section: str) -> list[str]:
    """The ``templates`` of one ``## section`` (each holds ``{}`` for the class name)."""
    templates = _strings(path, section, "templates")
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise EdgekitError(f"section {section!r}: every template must be a string containing '{{}}'", path)
    return templates


def load_section_classes(path: Path, section: str) -> list[str]:
    """The ``classes`` of one ``## section``. Where a class lists several names (FacialEmotionRecognition2013,
    e.g. ``['happy', 'smiling']``), the first one is used."""
    classes = _strings(path, section, "classes")
    out = [c[0] if isinstance(c, list) and c else c for c in classes]
    if not all(isinstance(c, str) for c in out):
        raise EdgekitError(f"section {section!r}: classes must be strings or lists of strings", path)
    return out


def load_labelled_images(labels_csv: Path, image_folder: Path | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Read a labels csv with columns ``file``, ``class_index`` and ``name_from_filename`` (or ``name``).

    Images are looked up in ``image_folder``, else beside the csv, else in its ``images/`` subfolder. Returns
    image paths (csv order), class indices (int64) and class names indexed by class index (underscores become
    spaces); every index from 0 to the largest must name one class.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise EdgekitError("labels csv not found", path, "pass a csv with columns file,class_index,name")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    name_col = next((c for c in ("name_from_filename", "name") if c in columns), None)
    missing = [c for c in ("file", "class_index") if c not in columns] + ([] if name_col else ["name"])
    if missing:
        raise EdgekitError(f"missing columns {missing} (has {columns})", path, "use columns file,class_index,name")
    if not rows:
        raise EdgekitError("no rows", path, "list one image per row")
    try:
        labels = np.array([int(r["class_index"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise EdgekitError(f"class_index must be an integer ({exc})", path) from None
    if labels.min() < 0:
        raise EdgekitError("class_index must not be negative", path)
    names: dict[int, str] = {}
    for index, row in zip(labels.tolist(), rows):
        name = (row[name_col] or "").replace("_", " ").strip()
        if names.setdefault(index, name) != name:
            raise EdgekitError(f"class {index} is named both {names[index]!r} and {name!r}", path, "give each class index one name")
    gaps = [i for i in range(int(labels.max()) + 1) if i not in names]
    if gaps:
        raise EdgekitError(f"class indices {gaps[:10]} have no row, so their names are unknown", path,
                           "list every class from 0 to the largest index at least once")
    if image_folder is not None:
        folder = Path(image_folder)
    else:
        candidates = [path.parent, path.parent / "images"]
        folder = next((c for c in candidates if (c / rows[0]["file"]).is_file()), path.parent)
    images = [folder / r["file"] for r in rows]
    absent = [p.name for p in images if not p.is_file()]
    if absent:
        raise EdgekitError(f"{len(absent)} of {len(images)} images are not in {folder} (e.g. {absent[:3]})", path,
                           "pass image_folder, the folder that holds the listed files")
    return images, labels, [names[i] for i in range(len(names))]
