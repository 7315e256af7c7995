"""Graph passes: each removes its pattern, keeps ONNX Runtime outputs (max abs err < 1e-4) and passes the checker."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.passes import (
    GraphPass,
    PassResult,
    available_passes,
    build_passes,
    fuse_graph,
    get_pass,
    register_pass,
    run_passes,
)
from edgekit.passes.base import _REGISTRY
from edgekit.recipe import ExportSpec

REPO = Path(__file__).resolve().parents[1]
ALL_PASSES = [
    "constant_folding", "eliminate_identity", "fuse_attention", "fuse_conv_affine", "fuse_conv_bn", "infer_shapes", "onnxslim", "remove_unused",
]


# ----------------------------------------------------------------------------------------------------- helpers


def export(module: torch.nn.Module, *shapes, fold: bool = True, dynamic: bool = False, outputs=None) -> onnx.ModelProto:
    """Legacy (TorchScript) export -- ``dynamo=False`` still works in torch 2.13 (with a DeprecationWarning)."""
    torch.manual_seed(0)
    args = tuple(torch.randn(*s) for s in shapes)
    names = [f"in{i}" for i in range(len(shapes))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, buf, dynamo=False, opset_version=17, input_names=names, output_names=outputs,
            do_constant_folding=fold, dynamic_axes={n: {0: "batch"} for n in names} if dynamic else None,
        )
    return onnx.load_from_string(buf.getvalue())


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "test", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def feeds_for(model: onnx.ModelProto, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check_pass(before: onnx.ModelProto, name: str, config=None, batch: int = 1) -> onnx.ModelProto:
    """Apply a pass; assert the input is untouched, IO names/order are kept, outputs agree and the checker passes."""
    snapshot = before.SerializeToString()
    after = get_pass(name, config).apply(before)
    assert before.SerializeToString() == snapshot, "the pass mutated its input"
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    onnx.checker.check_model(after, full_check=True)
    feeds = feeds_for(before, batch)
    for ref, got in zip(run(before, feeds), run(after, feeds), strict=True):
        assert ref.shape == got.shape and ref.dtype == got.dtype
        assert np.abs(ref.astype(np.float64) - got.astype(np.float64)).max(initial=0) < 1e-4
    return after


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ------------------------------------------------------------------------------------------------------ models


class ConvBnSiLU(torch.nn.Module):
    def __init__(self, c1, c2, k=3, s=1, g=1, bias=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=bias)
        self.bn = torch.nn.BatchNorm2d(c2, eps=1e-3)
        with torch.no_grad():  # non-trivial statistics
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.2, 3)
            self.bn.weight.uniform_(0.3, 1.7)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return torch.nn.functional.silu(self.bn(self.conv(x)))


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = ConvBnSiLU(3, 16, 3, 2, bias=True)
        self.b = ConvBnSiLU(16, 16, 3, 1, g=4)
        self.c = ConvBnSiLU(16, 8, 1)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x):
        y = self.b(self.a(x))
        return self.drop(self.c(y) + y[:, :8])


class ConvAffine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 1, bias=False)
        self.conv3 = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.rand(8, 1, 1) + 0.5)  # [C,1,1]
        self.shift = torch.nn.Parameter(torch.randn(1, 8, 1, 1))  # [1,C,1,1]
        self.row = torch.nn.Parameter(torch.randn(16))  # broadcasts along W: must not be fused

    def forward(self, x):
        y = self.conv1(x) * self.scale + self.shift
        y = torch.relu(self.conv2(y) / 2.0 - 0.25)
        return self.conv3(y) + self.row


class ConstSubgraph(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.rand(1, 4, 1, 1))
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        gain = torch.sqrt(self.w.exp() + 1.0) * 0.5  # only initializers: foldable
        return self.conv(x * gain).flatten(1)


# ------------------------------------------------------------------------------------------------- registry


def test_registry_and_configs():
    assert available_passes() == ALL_PASSES
    assert set(ExportSpec().passes) <= set(available_passes())
    for name in ALL_PASSES:
        p = get_pass(name)
        assert isinstance(p, GraphPass) and p.name == name and p.description
        assert p.Config.model_config["extra"] == "forbid"
    assert get_pass("constant_folding", {"size_limit_bytes": 10}).config.size_limit_bytes == 10
    with pytest.raises(EdgekitError, match="unknown option 'bogus' for pass 'fuse_conv_bn'"):
        get_pass("fuse_conv_bn", {"bogus": 1})
    with pytest.raises(EdgekitError, match="size_limit_bytes"):
        get_pass("constant_folding", {"size_limit_bytes": -1})
    with pytest.raises(ValueError, match="already registered"):

        @register_pass
        class Clash(GraphPass):
            name = "remove_unused"


def test_unknown_pass_lists_available():
    model = export(Stack(), (1, 3, 16, 16))
    with pytest.raises(EdgekitError) as info:
        run_passes(model, ["constant_folding", "fuse_conv_bnn"])
    msg = str(info.value)
    assert "unknown pass 'fuse_conv_bnn'" in msg and "\n" not in msg
    assert all(name in msg for name in ALL_PASSES)


# --------------------------------------------------------------------------------------------------- passes


def test_fuse_conv_bn():
    model = export(Stack(), (1, 3, 32, 32), fold=False)  # the exporter's own folding would fuse Conv+BN already
    assert ops(model).count("BatchNormalization") == 3
    fused = check_pass(model, "fuse_conv_bn")
    assert "BatchNormalization" not in ops(fused)
    assert ops(fused).count("Conv") == 3
    assert len(fused.graph.node) == len(model.graph.node) - 3
    assert len(fused.graph.initializer) < len(model.graph.initializer)  # BN params and old weights dropped


def test_fuse_conv_bn_leaves_shared_conv_output():
    x = tensor("x", [1, 2, 5, 5])
    w = const("w", np.random.default_rng(0).standard_normal((3, 2, 3, 3)))
    bn = [const(n, v) for n, v in (("g", [1.0, 2.0, 0.5]), ("b", [0.1, 0.2, 0.3]), ("m", [0.0, 1.0, -1.0]), ("v", [1.0, 0.5, 2.0]))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
        helper.make_node("Relu", ["c"], ["r"]),  # second reader of the Conv output: no fusion
    ]
    model = make_model(nodes, [x], [tensor("y", [1, 3, 3, 3]), tensor("r", [1, 3, 3, 3])], [w, *bn])
    assert ops(check_pass(model, "fuse_conv_bn")) == ["Conv", "BatchNormalization", "Relu"]


def test_fuse_conv_affine():
    model = export(ConvAffine(), (1, 3, 16, 16))
    before = ops(model)
    assert before.count("Mul") == 1 and before.count("Div") == 1 and before.count("Sub") == 1 and before.count("Add") == 2
    fused = check_pass(model, "fuse_conv_affine")
    assert ops(fused) == ["Conv", "Conv", "Relu", "Conv", "Add"]  # the row-broadcast Add stays


def test_fuse_conv_affine_graph_output_and_scalar():
    x = tensor("x", [1, 2, 4, 4])
    w = const("w", np.random.default_rng(1).standard_normal((3, 2, 1, 1)))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["k", "c"], ["m"]),  # constant first
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    model = make_model(nodes, [x], [tensor("y", [1, 3, 4, 4])], [w, const("k", 3.0), const("bias", [[[0.5]], [[-1.0]], [[2.0]]])])
    fused = check_pass(model, "fuse_conv_affine")
    assert ops(fused) == ["Conv"] and fused.graph.node[0].output[0] == "y"
    assert {t.name for t in fused.graph.initializer}.isdisjoint({"k", "bias", "w"})


def test_constant_folding_torch():
    model = export(ConstSubgraph(), (1, 4, 8, 8), fold=False)
    assert {"Exp", "Sqrt"} <= set(ops(model))
    folded = check_pass(model, "constant_folding")
    assert not {"Exp", "Sqrt", "Add"} & set(ops(folded))
    assert "Constant" not in ops(folded)


def test_constant_folding_static_shapes_only():
    def reshape_model(batch):
        x = tensor("x", [batch, 3, 4, 4])
        nodes = [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ]
        inits = [const("zero", 0, np.int64), const("axes", [0], np.int64), const("minus1", [-1], np.int64)]
        return make_model(nodes, [x], [tensor("y", [batch, 48])], inits)

    static = check_pass(reshape_model(2), "constant_folding")
    assert ops(static) == ["Reshape"]
    shape = {t.name: numpy_helper.to_array(t) for t in static.graph.initializer}[static.graph.node[0].input[1]]
    assert shape.tolist() == [2, -1]
    dynamic = check_pass(reshape_model("batch"), "constant_folding", batch=3)
    assert "Shape" in ops(dynamic) and "Reshape" in ops(dynamic)
    # a folded graph output stays produced by a node (and keeps its name)
    x = tensor("x", [2, 3])
    model = make_model(
        [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Relu", ["x"], ["y"])],
        [x], [tensor("shape", [2], TensorProto.INT64), tensor("y", [2, 3])],
    )
    out = check_pass(model, "constant_folding")
    assert ops(out) == ["Constant", "Relu"]


def test_constant_folding_castlike():
    # the dynamo exporter builds bias-free Conv biases as Expand(CastLike(0, x), Shape(x)): all foldable
    x = tensor("x", [1, 4, 3, 3])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("CastLike", ["zero", "x"], ["z"]),
        helper.make_node("Expand", ["z", "s"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"]),
    ]
    w = const("w", np.random.default_rng(3).standard_normal((4, 4, 1, 1)))
    model = make_model(nodes, [x], [tensor("y", [1, 4, 3, 3])], [w, const("zero", 0.0, np.float64)])
    out = check_pass(model, "constant_folding")
    assert ops(out) == ["Conv"]
    bias = {t.name: t for t in out.graph.initializer}[out.graph.node[0].input[2]]
    assert bias.data_type == TensorProto.FLOAT and list(bias.dims) == [4]


def test_constant_folding_keeps_big_expansions():
    x = tensor("x", [512, 1024])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Add", ["x", "big"], ["y"]),
        helper.make_node("Mul", ["two", "two"], ["four"]),
        helper.make_node("Mul", ["y", "four"], ["z"]),
    ]
    model = make_model(nodes, [x], [tensor("z", [512, 1024])], [const("shape", [512, 1024], np.int64), const("two", 2.0)])
    out = check_pass(model, "constant_folding")  # 2 MiB ConstantOfShape result > 1 MiB limit: kept
    assert ops(out) == ["ConstantOfShape", "Add", "Mul"]
    out = check_pass(model, "constant_folding", {"size_limit_bytes": 4 << 20})
    assert ops(out) == ["Add", "Mul"]


def test_eliminate_identity():
    x = tensor("x", [2, 3, 4])
    nodes = [
        helper.make_node("Identity", ["x"], ["i1"]),
        helper.make_node("Relu", ["i1"], ["r"]),
        helper.make_node("Identity", ["r"], ["i2"]),
        helper.make_node("Identity", ["i2"], ["i3"]),
        helper.make_node("Dropout", ["i3", "ratio", "training"], ["d", "mask"]),
        helper.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 2]),
        helper.make_node("Reshape", ["t", "same"], ["rs"]),
        helper.make_node("Identity", ["rs"], ["out1"]),  # graph output: its producer is renamed
        helper.make_node("Identity", ["x"], ["out2"]),  # graph input -> graph output: must stay
        helper.make_node("Sigmoid", ["i2"], ["s"]),
        helper.make_node("Identity", ["s"], ["out3"]),
        helper.make_node("Identity", ["s"], ["out4"]),  # second alias of the same tensor: must stay
        helper.make_node("Transpose", ["x"], ["swap"], perm=[0, 2, 1]),  # real transpose
        helper.make_node("Reshape", ["swap", "flat"], ["out5"]),  # real reshape
    ]
    inits = [
        const("ratio", 0.5), const("training", False, np.bool_),
        const("same", [2, 3, 4], np.int64), const("flat", [2, 12], np.int64),
    ]
    outs = [tensor(n, [2, 3, 4]) for n in ("out1", "out2", "out3", "out4")] + [tensor("out5", [2, 12])]
    model = make_model(nodes, [x], outs, inits)
    out = check_pass(model, "eliminate_identity")
    assert ops(out) == ["Relu", "Identity", "Sigmoid", "Identity", "Transpose", "Reshape"]
    assert {t.name for t in out.graph.initializer} == {"flat"}


def test_eliminate_identity_torch_export():
    # the TorchScript exporter emits Identity nodes for deduplicated parameters when folding is off
    model = export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5)), (1, 3, 8, 8), fold=False)
    assert "Identity" in ops(model)
    out = check_pass(model, "eliminate_identity")
    assert "Identity" not in ops(out) and "Dropout" not in ops(out)


def test_remove_unused():
    x = tensor("x", [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "dead_w"], ["dead1"]),  # dead branch, two levels deep
        helper.make_node("Exp", ["dead1"], ["dead2"]),
        helper.make_node("Add", ["r", "w"], ["y"]),
        helper.make_node("Split", ["y"], ["y1", "y2"], axis=1, num_outputs=2),  # one output read: node stays
        helper.make_node("Neg", ["y1"], ["z"]),
    ]
    model = make_model(
        nodes, [x, tensor("w", [1, 4])], [tensor("z", [1, 2])],
        [const("w", np.ones((1, 4))), const("dead_w", np.ones((1, 4))), const("orphan", 1.0)], opset=18,
    )
    model.graph.value_info.extend([tensor("dead2", [1, 4]), tensor("r", [1, 4])])
    out = check_pass(model, "remove_unused")
    assert ops(out) == ["Relu", "Add", "Split", "Neg"]
    assert [t.name for t in out.graph.initializer] == ["w"]  # also a graph input: kept
    assert [v.name for v in out.graph.value_info] == ["r"]


def test_onnxslim():
    model = export(Stack(), (1, 3, 16, 16), fold=False)
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    extra.graph.input.append(tensor("unused", [1, 3]))  # onnxslim drops unused inputs; the pass restores them
    slim = get_pass("onnxslim").apply(extra)
    assert [i.name for i in slim.graph.input] == [i.name for i in extra.graph.input]
    out = check_pass(model, "onnxslim")
    assert "BatchNormalization" not in ops(out) and "Identity" not in ops(out)
    assert len(out.graph.node) < len(model.graph.node)


def test_infer_shapes(monkeypatch):
    model = export(Stack(), (1, 3, 16, 16))
    assert len(model.graph.value_info) == 0
    out = check_pass(model, "infer_shapes")
    assert len(out.graph.value_info) > 0

    def boom(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("boom")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", boom)
    same = get_pass("infer_shapes").apply(model)
    assert same.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("name", ALL_PASSES)
def test_every_pass_keeps_io_on_dynamic_batch(name):
    model = export(Stack(), (1, 3, 16, 16), fold=False, dynamic=True, outputs=["out"])
    check_pass(model, name, batch=2)


def test_passes_on_dynamo_export():
    # torch 2.13's default exporter (dynamo=True, unoptimized) spells the same model differently
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Stack().eval(), (torch.randn(1, 3, 16, 16),), dynamo=True, opset_version=18, optimize=False, verbose=False)
    model = program.model_proto
    assert "BatchNormalization" in ops(model) and "CastLike" in ops(model)
    for name in ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused"]:
        model = check_pass(model, name)
    assert ops(model) == ["Conv", "Sigmoid", "Mul"] * 3 + ["Slice", "Add"]


# ---------------------------------------------------------------------------------------------- run_passes


def test_run_passes_default_list():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Stack()
            self.gain = torch.nn.Parameter(torch.rand(8, 1, 1))

        def forward(self, x):
            y = self.body(x) * (self.gain.exp() + 1)
            return y.reshape(y.shape[0], 8, -1).softmax(-1)

    model = export(Net(), (1, 3, 32, 32), fold=False, outputs=["scores"])
    snapshot = model.SerializeToString()
    names = ExportSpec().passes
    out, results = run_passes(model, names, progress=True)
    assert model.SerializeToString() == snapshot
    assert [r.name for r in results] == names
    assert all(isinstance(r, PassResult) and r.seconds >= 0 for r in results)
    assert results[0].nodes_before == len(model.graph.node) and results[-1].nodes_after == len(out.graph.node)
    for prev, cur in zip(results, results[1:]):
        assert prev.nodes_after == cur.nodes_before and prev.initializers_after == cur.initializers_before
    assert not {"BatchNormalization", "Identity", "Dropout", "Exp", "Shape"} & set(ops(out))
    assert results[1].nodes_after < results[1].nodes_before  # fuse_conv_bn did work
    onnx.checker.check_model(out, full_check=True)
    feeds = feeds_for(model)
    for ref, got in zip(run(model, feeds), run(out, feeds), strict=True):
        assert np.abs(ref - got).max() < 1e-4
    # empty list: a copy, unchanged
    same, none = run_passes(model, [])
    assert none == [] and same is not model and same.SerializeToString() == snapshot


# ---------------------------------------------------------------------------------------------- fuse_graph


class TinyYolo(torch.nn.Module):
    """A YOLO-shaped toy: Conv/BN/SiLU backbone with a residual bottleneck, SPPF, upsample + concat neck, sigmoid head."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(3)
        self.stem = ConvBnSiLU(3, 8, 3, 2)
        self.down = ConvBnSiLU(8, 16, 3, 2)
        self.b1, self.b2 = ConvBnSiLU(16, 8, 1), ConvBnSiLU(8, 16, 3)
        self.sppf_in, self.sppf_out = ConvBnSiLU(16, 8, 1), ConvBnSiLU(32, 16, 1)
        self.pool = torch.nn.MaxPool2d(5, 1, 2)
        self.lateral = ConvBnSiLU(16 + 8, 16, 3)
        self.head = torch.nn.Conv2d(16, 3 * (5 + classes), 1)

    def forward(self, x):
        p1 = self.stem(x)
        p2 = self.down(p1)
        p2 = p2 + self.b2(self.b1(p2))
        y = self.sppf_in(p2)
        y1 = self.pool(y)
        y2 = self.pool(y1)
        p2 = self.sppf_out(torch.cat([y, y1, y2, self.pool(y2)], 1))
        up = torch.nn.functional.interpolate(p2, scale_factor=2.0, mode="nearest")
        out = self.head(self.lateral(torch.cat([up, p1], 1))).sigmoid()
        return out.flatten(2).transpose(1, 2)


def feed_list(model: onnx.ModelProto, n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds_for(model).items()} for _ in range(n)]


def test_pass_options_from_recipe_dict():
    spec = ExportSpec.model_validate(yaml.safe_load("passes: [{constant_folding: {size_limit_bytes: 4194304}}, {remove_unused: }, eliminate_identity]"))
    assert spec.passes == [{"constant_folding": {"size_limit_bytes": 4 << 20}}, {"remove_unused": {}}, "eliminate_identity"]
    configured = build_passes(spec.passes)
    assert [p.name for p in configured] == ["constant_folding", "remove_unused", "eliminate_identity"]
    assert configured[0].config.size_limit_bytes == 4 << 20
    # the option has its effect: the 2 MiB ConstantOfShape is folded only with the raised limit
    x = tensor("x", [512, 1024])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    model = make_model(nodes, [x], [tensor("y", [512, 1024])], [const("shape", [512, 1024], np.int64)])
    fused, record = fuse_graph(model, spec.passes, simplify=False, feeds=feed_list(model, 1), tolerance=1e-4)
    assert ops(fused) == ["Add"]
    assert record["applied"][0]["options"] == {"size_limit_bytes": 4 << 20} and record["applied"][1]["options"] == {}
    assert record["onnxslim"] == "off" and record["verified"]["max_abs_error"] == 0.0
    assert ops(run_passes(model, ["constant_folding"])[0]) == ["ConstantOfShape", "Add"]  # default limit: kept
    assert ops(run_passes(model, spec.passes)[0]) == ["Add"]


def test_unknown_pass_option_is_one_clear_error(tmp_path):
    from pydantic import ValidationError

    from edgekit.recipe import load_recipe

    with pytest.raises(ValidationError, match="unknown option 'bogus' for pass 'fuse_conv_bn'"):
        ExportSpec(passes=["constant_folding", {"fuse_conv_bn": {"bogus": 1}}])
    with pytest.raises(ValidationError, match="bad value for option 'size_limit_bytes' of pass 'constant_folding'"):
        ExportSpec(passes=[{"constant_folding": {"size_limit_bytes": -1}}])
    with pytest.raises(ValidationError, match="bad pass entry"):
        ExportSpec(passes=[{"constant_folding": {}, "fuse_conv_bn": {}}])
    data = yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())
    data["export"]["passes"] = ["constant_folding", {"fuse_conv_bn": {"bogus": 1}}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgekitError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "export.passes" in msg and "unknown option 'bogus' for pass 'fuse_conv_bn'" in msg and "\n" not in msg
    model = export(Stack(), (1, 3, 16, 16))
    with pytest.raises(EdgekitError, match="unknown option 'bogus' for pass 'fuse_conv_bn'"):
        fuse_graph(model, [{"fuse_conv_bn": {"bogus": 1}}], simplify=False, feeds=feed_list(model), tolerance=1e-3)


def test_fuse_graph_names_the_pass_that_changes_outputs():
    class BreakWeight(GraphPass):
        name = "test_break_weight"
        description = "test only: scales the first Conv weight"

        def transform(self, model):
            init = {t.name: t for t in model.graph.initializer}[next(n for n in model.graph.node if n.op_type == "Conv").input[1]]
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
            return model

    register_pass(BreakWeight)
    try:
        model = export(Stack(), (1, 3, 16, 16), fold=False)
        feeds = feed_list(model)
        with pytest.raises(EdgekitError) as info:
            fuse_graph(model, ["fuse_conv_bn", "test_break_weight", "remove_unused"], simplify=True, feeds=feeds, tolerance=1e-3, graph="tiny")
        msg = str(info.value)
        assert "tiny: pass 'test_break_weight' changed the outputs" in msg and "max abs error" in msg and "\n" not in msg
        assert "fuse_conv_bn" not in msg.split(" -- fix")[0]
    finally:
        _REGISTRY.pop("test_break_weight")


def test_fuse_graph_keeps_unslimmed_model_when_onnxslim_fails(monkeypatch):
    import onnxslim

    from edgekit import progress

    lines: list[str] = []
    monkeypatch.setattr(progress, "log", lines.append)
    model = export(Stack(), (1, 3, 16, 16), fold=False)
    feeds = feed_list(model)
    passes = ExportSpec().passes
    expected, _ = run_passes(model, passes)

    def boom(*args, **kwargs):
        raise RuntimeError("slim exploded\nsecond line")

    monkeypatch.setattr(onnxslim, "slim", boom)
    fused, record = fuse_graph(model, passes, simplify=True, feeds=feeds, tolerance=1e-3)
    assert fused.SerializeToString() == expected.SerializeToString()
    assert record["onnxslim"] == "kept unslimmed: onnxslim raised RuntimeError: slim exploded"
    assert [r["name"] for r in record["applied"]] == passes and record["verified"]["feeds"] == 2
    assert lines == ["[yellow]onnxslim skipped: onnxslim raised RuntimeError: slim exploded[/yellow]"]

    def wrong(model, **kwargs):  # "succeeds" with different numbers
        for t in model.graph.initializer:
            if t.data_type == TensorProto.FLOAT and len(t.dims) == 4:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * -1.0, t.name))
                break
        return model

    lines.clear()
    monkeypatch.setattr(onnxslim, "slim", wrong)
    fused, record = fuse_graph(model, passes, simplify=True, feeds=feeds, tolerance=1e-3, graph="detector")
    assert fused.SerializeToString() == expected.SerializeToString()
    assert record["onnxslim"].startswith("kept unslimmed: its output failed verification: output ")
    assert record["verified"]["max_error_ratio"] <= 1.0
    assert len(lines) == 1 and lines[0].startswith("[yellow]onnxslim skipped (detector): ")


def test_fuse_graph_yolo_like(monkeypatch):
    import json

    from edgekit import progress
    from edgekit.passes import verify

    lines: list[str] = []
    monkeypatch.setattr(progress, "log", lines.append)
    model = export(TinyYolo(), (1, 3, 64, 64), fold=False, outputs=["preds"])
    assert ops(model).count("BatchNormalization") == 7
    snapshot = model.SerializeToString()
    feeds = feed_list(model, 3)
    sessions: list[int] = []
    real = verify._session
    monkeypatch.setattr(verify, "_session", lambda m: sessions.append(1) or real(m))
    fused, record = fuse_graph(model, ExportSpec().passes, simplify=True, feeds=feeds, tolerance=1e-3)
    assert len(sessions) == 2  # the normal path: one session for the reference, one for the fused model, all feeds
    assert model.SerializeToString() == snapshot
    assert not {"BatchNormalization", "Identity"} & set(ops(fused)) and ops(fused).count("Conv") == 8
    onnx.checker.check_model(fused, full_check=True)
    assert [o.name for o in fused.graph.output] == ["preds"]
    assert record["onnxslim"] == "applied" and lines == []
    assert [r["name"] for r in record["applied"]] == ExportSpec().passes
    assert record["applied"][1]["nodes_after"] < record["applied"][1]["nodes_before"]
    verified = record["verified"]
    assert verified["feeds"] == 3 and verified["tolerance"] == 1e-3 and set(verified["outputs"]) == {"preds"}
    assert 0 <= verified["max_abs_error"] < 1e-4 and verified["max_error_ratio"] < 1
    json.dumps(record)
    for feed in feeds:
        ref, got = run(model, feed)[0], run(fused, feed)[0]
        assert np.abs(ref - got).max() < 1e-4
