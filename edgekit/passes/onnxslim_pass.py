"""``onnxslim``: run onnxslim's optimizer (folding, fusion, dead-code and common-subexpression elimination)."""

from __future__ import annotations

import onnx
from pydantic import Field

from edgekit.passes.base import GraphPass, PassConfig, io_names, register_pass


@register_pass
class OnnxSlim(GraphPass):
    name = "onnxslim"
    description = "onnxslim.slim: constant folding, pattern fusion, dead code and duplicate elimination"

    class Config(PassConfig):
        skip_optimizations: list[str] | None = Field(
            None, description="any of constant_folding, graph_fusion, dead_node_elimination, subexpression_elimination, weight_tying"
        )
        skip_fusion_patterns: list[str] | None = Field(None, description="onnxslim fusion pattern names to skip")
        size_threshold: int | None = Field(None, ge=0, description="constants larger than this many bytes are not folded")
        no_shape_infer: bool = False

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        from edgekit.optional import require

        onnxslim = require("onnxslim", "export", "the onnxslim pass")  # a core dependency: only a broken install lacks it
        saved_inputs = {}
        for vi in model.graph.input:
            saved_inputs[vi.name] = onnx.ValueInfoProto()
            saved_inputs[vi.name].CopyFrom(vi)
        input_order = io_names(model.graph.input)
        output_order = io_names(model.graph.output)
        kwargs = {k: v for k, v in self.config.model_dump().items() if v not in (None, False)}
        out = onnxslim.slim(model, **kwargs)  # edits its argument (our private copy)
        if out is None:
            raise RuntimeError("onnxslim returned no model")
        g = out.graph
        # onnxslim drops unused inputs: put them back, in their original order
        if io_names(g.input) != input_order:
            have = {i.name: i for i in g.input}
            ordered = [have.get(n) or saved_inputs[n] for n in input_order]
            del g.input[:]
            g.input.extend(ordered)
        # outputs keep their names: bridge a renamed output with an Identity
        if len(g.output) != len(output_order):
            raise RuntimeError(f"onnxslim changed the graph outputs: {output_order} -> {io_names(g.output)}")
        for vi, name in zip(g.output, output_order):
            if vi.name != name:
                g.node.append(onnx.helper.make_node("Identity", [vi.name], [name], name=f"{name}_keep_name"))
                vi.name = name
        return out
