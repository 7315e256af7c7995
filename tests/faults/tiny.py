"""The fault tests' tiny real YOLOv5n recipe (128 px, 8 calibration and 8 evaluation images, ~8 s a run) that the
fault cases bend one key at a time, and one finished run folder shared by the tests that only read or copy it."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import ANNOTATIONS, COCO, WEIGHTS_ST

TINY = {
    "name": "tiny",
    "model": {"family": "yolo", "weights": str(WEIGHTS_ST), "input_size": 128},
    "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 1}},
    "targets": ["onnxruntime:fp32", "onnxruntime:int8"],
    "evaluation": {"dataset": {"images": str(COCO / "images"), "annotations": str(ANNOTATIONS)}, "max_images": 8},
    "benchmark": {"warmup": 1, "runs": 3},
    "budgets": {"mAP50-95": {"max_drop": 0.05}},
}


def tiny_recipe(folder: Path, name: str = "tiny.yaml", **changes) -> Path:
    """Write the tiny recipe into ``folder`` with ``section__key=value`` changes (``None`` removes the key)."""
    import copy

    data = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def assert_one_line_error(result, *needles: str, code: int = 2) -> None:
    """Exit ``code``, one ``error:`` line on stderr naming every needle, no traceback."""
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


