"""Quantizer groups: the placement's quantized nodes partitioned into the units a user keeps float together.

Sensitivity analysis and the budget search decide per group, not per node: leaving a Conv float but its SiLU
int8 would only add a Q/DQ round trip, and a transformer block's q/k/v projections share one input.

* CNN placements (Conv and friends): each Conv (ConvTranspose, weight Gemm/MatMul) anchors a group with its SiLU
  (the Sigmoid reading the conv's output and the Mul reading both). Every other quantized node (Add, Concat,
  MaxPool, Resize, a lone Sigmoid/Mul) joins the group of its *latest* quantized producer in graph order: the
  residual Add joins the bottleneck's second conv, a C3 block's Concat the conv computed just before it, SPPF's
  pools and Concat its first conv, a Resize its conv. So a group left float is one contiguous float island (no
  Q -> DQ round trip between a float conv and the junction it feeds last), and YOLOv5n has one group per Conv
  (60) instead of ~90. A node with no quantized producer (reading the graph input) is a group of its own.
* Weight-only placements (``TRANSFORMER_PLACEMENT``): the weight MatMuls/Gemms of one block grouped by node-name
  prefix up to the layer index (``layer.0``, ``layers.3``, ``resblocks.1``, ``h.2``...), split into the block's
  attention (q/k/v/out projections) and its MLP; a weight MatMul outside any block (a pooler, a projection) is a
  group of its own.

Groups come in graph order (of their first node), their names are short module paths (``model.2.cv1``,
``bert.encoder.layer.0.attn``), unique, and the result is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from edgekit.quantization.placement import Placement, quantized_nodes

ANCHOR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ATTENTION_WORDS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "out_proj", "query", "key", "value", "qkv")
_LAYER = re.compile(r"^[A-Za-z_]*[._]?\d+$")  # a path component that ends in a layer index: layer.0, layers_3, h.2


@dataclass(frozen=True)
class Group:
    """Nodes left float (or quantized) together: ``nodes`` are node names in graph order; ``kind`` is
    ``conv`` / ``attention`` / ``mlp`` / ``linear`` or the lower-case op type of a group without an anchor."""

    name: str
    nodes: tuple[str, ...]
    kind: str


def _path(name: str) -> list[str]:
    """Module path components of an exporter node name (``/model.2/m/m.0/cv1/conv/Conv`` -> model.2, m.0, cv1, conv)."""
    parts = [p for p in name.strip("/").split("/") if p]
    parts = parts[:-1] if len(parts) > 1 else parts
    # the TorchScript exporter writes a ModuleList item as /m/m.0/: keep the module path model.2.m.0
    return [p for p, nxt in zip(parts, parts[1:] + [""]) if not nxt.startswith(p + ".")]


def conv_group_name(name: str) -> str:
    """``/model.2/cv1/conv/Conv`` -> ``model.2.cv1``; ``/model.24/m.0/Conv`` -> ``model.24.m.0``."""
    parts = _path(name)
    if len(parts) > 1 and parts[-1] in ("conv", "linear", "fc"):
        parts = parts[:-1]
    return ".".join(parts) or name


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _silu(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], quantized: set[str]) -> list[onnx.NodeProto]:
    """The Sigmoid and Mul of a SiLU reading ``node``'s output (quantized ones only), else nothing."""
    out = node.output[0]
    for sig in consumers.get(out, []):
        if sig.op_type != "Sigmoid" or sig.name not in quantized:
            continue
        for mul in consumers.get(sig.output[0], []):
            if mul.op_type == "Mul" and mul.name in quantized and set(mul.input) == {out, sig.output[0]}:
                return [sig, mul]
    return []


def cnn_groups(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[Group]:
    """Conv anchored groups (see the module docstring); ``nodes`` are the quantized nodes in graph order."""
    quantized = {n.name for n in nodes}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
        for t in n.output:
            producer[t] = n
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    owner: dict[str, int] = {}  # node name -> group index
    members: list[list[str]] = []
    kinds: list[str] = []
    for node in nodes:
        if node.name in owner:
            continue
        if node.op_type in ANCHOR_OPS:
            owner[node.name] = len(members)
            members.append([node.name] + [s.name for s in _silu(node, consumers, quantized)])
            kinds.append("conv")
            for s in members[-1][1:]:
                owner[s] = owner[node.name]
            continue
        producers = [producer[t] for t in node.input if t in producer and producer[t].name in owner]
        if producers:
            latest = max(producers, key=lambda p: order[p.name])
            owner[node.name] = owner[latest.name]
            members[owner[node.name]].append(node.name)
        else:
            owner[node.name] = len(members)
            members.append([node.name])
            kinds.append(node.op_type.lower())
    names = _unique([conv_group_name(m[0]) if k == "conv" else conv_group_name(m[0]) + "." + k for m, k in zip(members, kinds)])
    return [Group(n, tuple(sorted(m, key=order.__getitem__)), k) for n, m, k in zip(names, members, kinds)]


def block_key(name: str) -> tuple[str, str] | None:
    """(block prefix, ``attention`` or ``mlp``) of a transformer weight MatMul's node name, or None outside a block."""
    parts = _path(name)
    for i, part in enumerate(parts):
        if _LAYER.match(part) and any(c.isalpha() for c in part):
            rest = "/".join(parts[i + 1:]).lower()
            return ".".join(parts[: i + 1]), "attention" if any(w in rest for w in ATTENTION_WORDS) else "mlp"
    return None


def block_groups(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[Group]:
    """One group per (block, attention | MLP) and one per weight MatMul outside a block, in graph order."""
    keyed: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        key = block_key(node.name)
        keyed.setdefault(key or (conv_group_name(node.name), "linear"), []).append(node.name)
    suffix = {"attention": ".attn", "mlp": ".mlp", "linear": ""}
    names = _unique([prefix + suffix[kind] for prefix, kind in keyed])
    return [Group(n, tuple(m), kind) for n, (( _, kind), m) in zip(names, keyed.items())]


def quantizer_groups(model: onnx.ModelProto, placement: Placement, float_nodes: list[str], float_ops: list[str]) -> list[Group]:
    """The placement's quantized nodes as groups: every quantized node in exactly one group, graph order."""
    nodes = quantized_nodes(model, placement, list(float_nodes), list(float_ops))
    for i, n in enumerate(nodes):
        if not n.name:
            raise ValueError(f"quantized node {i} ({n.op_type}) has no name: groups are addressed by node name")
    return block_groups(model, nodes) if placement.weighted_only else cnn_groups(model, nodes)


def node_patterns(names: list[str] | tuple[str, ...]) -> list[str]:
    """``float_nodes`` patterns matching exactly these node names (fnmatch's ``[``, ``*`` and ``?`` escaped)."""
    return [re.sub(r"([\[\]*?])", r"[\1]", n) for n in names]
