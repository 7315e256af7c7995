"""TensorRT's cost model (edgekit.backends.tensorrt.cost) on the real YOLOv5n graph, and the budget search it prices
(TensorRT placement, ONNX Runtime scoring the TensorRT Q/DQ candidates) at 320 px on 16 real calibration images."""

from __future__ import annotations

import pytest
from test_sensitivity_search import setup  # noqa: F401 (the module fixture)

from edgekit.quantization.placement import TENSORRT_PLACEMENT, matches, quantized_nodes


@pytest.fixture(scope="module")
def trt(setup):  # noqa: F811
    from edgekit.backends.tensorrt.cost import TensorRTCostModel, group_estimator
    from edgekit.tuning.groups import quantizer_groups

    _, model, _, _, _, decode, _ = setup
    groups = quantizer_groups(model, TENSORRT_PLACEMENT, decode, [])
    quantized = [n.name for n in quantized_nodes(model, TENSORRT_PLACEMENT, decode, [])]
    scope = [n.name for n in model.graph.node if matches(n.name, decode)]
    cost = TensorRTCostModel(model, "jetson-orin-nano-8gb")
    return model, cost, groups, quantized, scope, group_estimator(cost, quantized, scope, groups)


def test_cost_model_prices_int8_below_fp16_and_charges_reformats(trt):
    from edgekit.backends.tensorrt.cost import TensorRTCostModel, group_estimator

    model, cost, groups, quantized, scope, estimate = trt
    all_int8, all_fp16 = estimate(()), estimate([g.name for g in groups])
    assert 0 < all_int8 < all_fp16 < 2.5 * all_int8  # int8 halves bytes and doubles the Tensor Core rate, no more
    first = next(lay for lay in cost.layers if lay.node == "/model.0/conv/Conv")
    assert first.macs["int8"] == 2 * first.macs["fp16"]  # 3 input channels padded to 16 in int8, to 8 in fp16
    middle = groups[len(groups) // 2]
    prec = cost.precisions(set(quantized) - set(middle.nodes), set(scope) | set(middle.nodes))
    edges = [(s, d) for s, d, _ in cost.edges if prec[s] != prec[d]]
    assert any(d in middle.nodes for _, d in edges)  # entering the float island is a reformat
    assert estimate([middle.name]) > all_int8 and estimate([middle.name]) == estimate([middle.name])
    t4 = group_estimator(TensorRTCostModel(model, "t4"), quantized, scope, groups)
    assert t4(()) < all_int8  # a T4 has 6.5x the int8 peak and 4.7x the bandwidth of an Orin Nano
    with pytest.raises(ValueError, match="unknown TensorRT cost-model device"):
        TensorRTCostModel(model, "orin")


def test_search_priced_by_the_cost_model_keeps_the_cheapest_float_set_within_budget(setup, trt, tmp_path):  # noqa: F811
    """With a budget all int8 misses, the search floats groups in the TensorRT placement, each candidate's loss scored by
    ONNX Runtime on its TensorRT Q/DQ form and its latency the model's (no timing, no confirmation runs)."""
    from edgekit.tuning.search import search
    from edgekit.tuning.sensitivity import sensitivity

    _, model, _, ranges, settings, decode, scorer = setup
    _, _, groups, _, _, estimate = trt
    table = sensitivity(model, TENSORRT_PLACEMENT, ranges, decode, [], settings, scorer, groups[:8], tmp_path / "t", quantized_only=False,
                        latency_runs=3)
    base = table.baseline_loss_pt
    best = min(table.rows, key=lambda r: r.loss_float_only_pt)
    budget = (base + best.loss_float_only_pt) / 2  # met by floating the best group, missed by all int8
    result = search(model, TENSORRT_PLACEMENT, ranges, decode, [], settings, scorer, groups[:8], max_loss_pt=budget, workdir=tmp_path / "s",
                    sensitivity=table, time_limit_s=120, estimate=estimate, backend="tensorrt")
    assert result.met and result.float_groups and result.loss_pt <= budget < result.baseline_loss_pt
    assert result.table.latency_method == "cost model" and all(r.method == "cost model" for r in result.table.rows)
    assert all(t.se_ms == 0.0 and t.step != "confirm" for t in result.trace)
    assert result.latency_ms == pytest.approx(estimate(result.float_groups)) and result.baseline_latency_ms == pytest.approx(estimate(()))
    met = [t for t in result.trace if t.met]
    assert result.delta_ms == min(t.delta_ms for t in met)  # no noise to tie within: the cheapest set within budget
    assert "latency priced by a cost model, not measured" in result.notes
