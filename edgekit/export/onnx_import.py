"""An existing ONNX model as a graph's raw export (the ``onnx`` family): no PyTorch module, so no PyTorch check; the
job still fuses and verifies it like any export."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.artifacts import sha256_file
from edgekit.errors import EdgekitError
from edgekit.onnx_io import load_onnx, save_onnx


@dataclass(frozen=True)
class ImportRecord:
    """How an existing ONNX model became a graph's raw export (an imported graph's export ``check`` record)."""

    source: str
    sha256: str
    source_opset: int
    opset: int

    def to_dict(self) -> dict:
        return {"imported": True, "pytorch_check": "none (no PyTorch module)", **asdict(self)}


def import_onnx(source: Path, raw: Path, opset: int) -> ImportRecord:
    """An existing ONNX model as a graph's raw export (``GraphExport.onnx``): copied byte for byte, or, when its opset
    is below ``export.opset`` (Q/DQ needs >= 13), it lists initializers as graph inputs (IR < 4 files) or has unnamed
    or repeated node names, upgraded with onnx's version converter, its initializers dropped from the inputs and its
    nodes named (``<op_type>_<index>``)."""
    from onnx import helper, version_converter

    model = load_onnx(source)
    found = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    weights = {i.name for i in model.graph.initializer}
    names = [n.name for n in model.graph.node]
    named = all(names) and len(set(names)) == len(names)  # Q/DQ and NNCF's ignored scope address nodes by name
    if found >= opset and named and not any(i.name in weights for i in model.graph.input):
        shutil.copyfile(source, raw)
        return ImportRecord(str(source), sha256_file(source), found, found)
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    if not named:
        seen: set[str] = set()
        for i, node in enumerate(model.graph.node):
            if not node.name or node.name in seen:
                node.name = f"{node.name or node.op_type}_{i}"
            seen.add(node.name)
    model.ir_version = max(model.ir_version, 4)  # IR 3 requires initializers among the inputs
    if found < opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # onnx's converter raises its own C++ error types
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            fix = f"set export.opset: {found} (imported as is), or convert the model yourself" if found >= 13 else "convert the model to opset >= 13 yourself"
            raise EdgekitError(f"cannot convert the model from opset {found} to {opset} ({why})", source, fix) from exc
        model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    save_onnx(model, raw, {"edgekit_imported_from": source.name, "edgekit_source_opset": found})
    return ImportRecord(str(source), sha256_file(source), found, max(found, opset))
