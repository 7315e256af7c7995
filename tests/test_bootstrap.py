"""Paired bootstrap intervals: the fast COCO re-accumulation equals COCOeval (identity resample and duplicated
images, on real YOLOv5n detections), intervals behave, and ``edgekit check --confidence`` gates on them."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
from conftest import ANNOTATIONS, COCO, edgekit

from edgekit.evaluators.bootstrap import (
    DEFAULT_SEED,
    MeanSamples,
    RatioSamples,
    paired_interval,
    resample_counts,
    samples_needed,
)
from edgekit.evaluators.coco import evaluate_coco
from edgekit.reports import evaluate_budgets
from edgekit.reports.budget import resolution_line

pytestmark = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason="real COCO subset not available")

N_IMAGES = 24


@pytest.fixture(scope="module")
def detections(fp32_onnx, yolo) -> tuple[list[dict], list[int]]:
    """Real YOLOv5n (ONNX Runtime, 640 px) detections on the first 24 COCO subset images."""
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.evaluators.detection import detect_dataset

    family, _ = yolo
    with OnnxRuntimeRunner(fp32_onnx, threads=2) as runner:
        return detect_dataset(runner, family, COCO / "images", ANNOTATIONS, max_images=N_IMAGES)


@pytest.fixture(scope="module")
def jittered(detections) -> list[dict]:
    """A real-looking variant: every box moved by ~1.5 px and every score scaled by ~2% (seeded)."""
    rng = np.random.default_rng(7)
    dets, _ = detections
    out = []
    for d in dets:
        x, y, w, h = d["bbox"]
        dx, dy = rng.normal(0, 1.5, 2)
        out.append(dict(d, bbox=[x + dx, y + dy, w, h], score=round(d["score"] * float(rng.uniform(0.98, 1.02)), 5)))
    return out


def _cocoeval_with_copies(detections: list[dict], image_ids: list[int], multiplicity) -> tuple[float, float, float]:
    """COCOeval on the dataset with image ``image_ids[i]`` listed ``multiplicity[i]`` times (new ids, copies of one
    image next to each other), ground truth and detections copied with it."""
    from pycocotools.coco import COCO as Coco
    from pycocotools.cocoeval import COCOeval

    gt = json.loads(ANNOTATIONS.read_text())
    anns, dets = {}, {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for d in detections:
        dets.setdefault(d["image_id"], []).append(d)
    images, annotations, results, ids = [], [], [], []
    info = {im["id"]: im for im in gt["images"]}
    for image_id, times in zip(image_ids, multiplicity):
        for c in range(int(times)):
            new = image_id * 64 + c
            ids.append(new)
            images.append(dict(info[image_id], id=new))
            annotations += [dict(a, id=len(annotations) + 1 + k, image_id=new) for k, a in enumerate(anns.get(image_id, []))]
            results += [dict(d, image_id=new) for d in dets.get(image_id, [])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = Coco()
        coco.dataset = dict(gt, images=images, annotations=annotations)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.imgIds = sorted(ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1]), float(ev.stats[2])


def test_identity_resample_reproduces_cocoeval(detections):
    dets, ids = detections
    result = evaluate_coco(dets, ANNOTATIONS, ids)
    records = result.records
    assert records.n == N_IMAGES and records.image_ids == sorted(ids)
    got = records.resample(np.ones((1, records.n), dtype=np.int64))
    for name in ("mAP50-95", "mAP50", "mAP75"):
        assert abs(float(got[name][0]) - result.metrics[name]) < 1e-9, name
        assert abs(records.metric(name).point() - result.metrics[name]) < 1e-9, name


@pytest.mark.parametrize("decimals", [5, 2])
def test_resamples_equal_cocoeval_on_duplicated_images(detections, decimals):
    """Each resample equals COCOeval run on the image list with the drawn images repeated, ties included: scores
    are rounded (5 decimals as edgekit writes them; 2 for many true-positive / false-positive ties), so one image's
    detections share scores and COCO's stable sort interleaves the copies of such an image."""
    dets, ids = detections
    dets = [dict(d, score=round(d["score"], decimals)) for d in dets]
    records = evaluate_coco(dets, ANNOTATIONS, ids).records
    assert any(c.tied.any() for c in records.categories), "the real detections should hold within-image score ties"
    counts = resample_counts(records.n, 4, seed=3)
    assert counts.max() >= 3 and (counts.sum(axis=1) == records.n).all()
    got = records.resample(counts)
    for b in range(counts.shape[0]):
        want = _cocoeval_with_copies(dets, records.image_ids, counts[b])
        for name, value in zip(("mAP50-95", "mAP50", "mAP75"), want):
            assert abs(float(got[name][b]) - value) < 1e-9, (b, name, float(got[name][b]), value)


def test_paired_interval_of_a_real_variant(detections, jittered):
    dets, ids = detections
    ref = evaluate_coco(dets, ANNOTATIONS, ids)
    var = evaluate_coco(jittered, ANNOTATIONS, ids)
    same = paired_interval(ref.records.metric("mAP50-95"), ref.records.metric("mAP50-95"))
    assert same.low == 0.0 and same.high == 0.0 and same.seed == DEFAULT_SEED and same.resamples == 1000
    start = time.perf_counter()
    iv = paired_interval(ref.records.metric("mAP50-95"), var.records.metric("mAP50-95"))
    seconds = time.perf_counter() - start
    drop = ref.metrics["mAP50-95"] - var.metrics["mAP50-95"]
    assert iv.low < drop < iv.high and iv.width > 0 and iv.n == N_IMAGES and iv.unit == "images"
    assert iv.quantiles["0.025"] == pytest.approx(iv.low) and iv.quantiles["0.975"] == pytest.approx(iv.high)
    assert seconds < 30, seconds  # 24 images x 1000 resamples, reference and variant
    # paired: the same images drawn for both, so the drop's interval is narrower than the variant's own spread
    alone = paired_interval(None, var.records.metric("mAP50-95"), "ceiling")
    assert iv.width < alone.width


def test_mean_and_ratio_samples():
    values = np.arange(10, dtype=float)
    counts = resample_counts(10, 200, seed=1)
    assert counts.shape == (200, 10) and (counts.sum(axis=1) == 10).all() and not counts.flags.writeable
    assert resample_counts(10, 200, seed=1) is counts  # one array per (n, resamples, seed): every metric pairs on it
    assert MeanSamples(values).point() == pytest.approx(4.5)
    np.testing.assert_allclose(MeanSamples(values).resample(counts), counts @ values / 10)
    ratio = RatioSamples([1, 2, 3], [2, 2, 2])
    assert ratio.point() == pytest.approx(1.0)
    iv = paired_interval(MeanSamples(values), MeanSamples(values - 1.0))  # a constant shift: the drop is exactly 1
    assert iv.low == pytest.approx(1.0) and iv.high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different samples"):
        paired_interval(MeanSamples(values), MeanSamples(values[:5]))
    assert samples_needed(160, 0.015, 0.005) == 360 and samples_needed(160, 0.01, 0.005) == 160 and samples_needed(10, 0.1, 0.0) is None


def test_budget_verdicts_carry_intervals_and_resolution(detections, jittered):
    dets, ids = detections
    ref, var = evaluate_coco(dets, ANNOTATIONS, ids), evaluate_coco(jittered, ANNOTATIONS, ids)
    ref_samples = {k: ref.records.metric(k) for k in ("mAP50-95", "mAP50")}
    var_samples = {k: var.records.metric(k) for k in ("mAP50-95", "mAP50")}
    budgets = {"mAP50-95": {"max_drop": 0.0001}, "mAP50": {"max_relative_drop": 0.5}, "mAP_small": {"max_drop": 0.5}}
    tight, loose, small = evaluate_budgets(ref.metrics, var.metrics, budgets, ref_samples, var_samples)
    assert tight.interval and tight.confidence == 0.95 and tight.resamples == 1000 and tight.seed == DEFAULT_SEED
    assert tight.sample_count == N_IMAGES and tight.sample_unit == "images"
    width = tight.interval[1] - tight.interval[0]
    assert tight.resolvable is False and tight.samples_needed == samples_needed(N_IMAGES, width, 0.0001) > N_IMAGES
    assert resolution_line(tight) == (f"mAP50-95: the evaluation set ({N_IMAGES} images) cannot resolve a 0.0001 budget "
                                      f"(95% interval width {width:.3g}); about {tight.samples_needed} images would")
    assert loose.kind == "relative" and loose.resolvable is True and resolution_line(loose) is None
    assert loose.interval[0] <= loose.relative_drop <= loose.interval[1]
    assert small.interval is None and "no per-sample values" in small.interval_note
    # without samples: the verdicts of before, no interval fields
    plain = evaluate_budgets(ref.metrics, var.metrics, budgets)
    assert all(b.interval is None and b.interval_note is None for b in plain)
    assert [b.passed for b in plain] == [tight.passed, loose.passed, small.passed]


# --- edgekit check --confidence on real tiny runs ---------------------------------------------------------------


def _tiny_run(folder, **changes):
    from faults.tiny import tiny_recipe

    result = edgekit("export", tiny_recipe(folder, **changes), "--out", folder / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="module")
def tight_run(tmp_path_factory):
    """(run, mAP50-95 budget, mAP50 budget): the faults' tiny recipe (real YOLOv5n, 128 px, 8 evaluation images) with
    budgets 8 images cannot back, taken from a first run of the same recipe, since the int8 drop depends on the CPU
    (7-bit weights without VNNI): mAP50-95 halfway between the point drop and the upper bound of its interval (the
    point passes, the bound does not); mAP50 below both its drop and a quarter of its interval's width."""
    pilot = _tiny_run(tmp_path_factory.mktemp("pilot"), budgets={"mAP50-95": {"max_drop": 1.0}, "mAP50": {"max_drop": 1.0}})
    _, v = _verdicts(pilot)
    a, b = v["mAP50-95"], v["mAP50"]
    assert a["interval"][1] > a["drop"] and b["drop"] > 0, (a, b)
    b95 = round((max(a["drop"], 0.0) + a["interval"][1]) / 2, 4)
    b50 = round(min(b["drop"], (b["interval"][1] - b["interval"][0]) / 2) / 2, 4)
    run = _tiny_run(tmp_path_factory.mktemp("tight"), budgets={"mAP50-95": {"max_drop": b95}, "mAP50": {"max_drop": b50}})
    return run, b95, b50


def _verdicts(run) -> tuple[dict, dict]:
    report = json.loads((run / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["name"] == "onnxruntime:int8")
    return report, {b["metric"]: b for b in int8["budget"]}


def test_check_confidence_gates_on_the_upper_bound(tight_run):
    tight_run, b95, _ = tight_run
    report, verdicts = _verdicts(tight_run)
    assert report["schema_version"] == "1.6" and "bootstrap intervals" in report["timings_s"]
    v = verdicts["mAP50-95"]
    assert v["interval"][0] <= v["drop"] <= v["interval"][1] and v["sample_count"] == 8 and v["sample_unit"] == "images"
    assert v["resamples"] == 1000 and v["seed"] == DEFAULT_SEED and v["confidence"] == 0.95
    assert v["passed"] and v["quantiles"]["0.975"] == v["interval"][1] > b95  # the point holds, the upper bound does not
    plain = edgekit("check", tight_run / "report.json")
    point = next(line for line in plain.stdout.splitlines() if "mAP50-95 dropped" in line)
    assert point.endswith(f"budget {b95:.4f} (absolute): PASS")  # the point verdict's line is as before
    interval = f"onnxruntime:int8: mAP50-95: 95% interval of the drop {v['interval'][0]:.4f} to {v['interval'][1]:.4f} (1000 paired resamples of 8 images)"
    assert f"{interval}\n" in plain.stdout, plain.stdout
    strict = edgekit("check", tight_run / "report.json", "--confidence", "0.95")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert f"{interval}; upper bound of the drop {v['interval'][1]:.4f} > {b95:.4f} at 95% confidence: FAIL" in strict.stderr
    odd = edgekit("check", tight_run / "report.json", "--confidence", "0.97")
    assert odd.returncode == 2 and "0.8, 0.9, 0.95, 0.99" in odd.stderr and "Traceback" not in odd.stderr


def test_check_and_report_say_the_set_cannot_resolve(tight_run):
    tight_run, _, b50 = tight_run
    _, verdicts = _verdicts(tight_run)
    v = verdicts["mAP50"]
    width = v["interval"][1] - v["interval"][0]
    assert v["resolvable"] is False and width > 2 * b50
    assert v["samples_needed"] == samples_needed(8, width, b50)
    line = f"mAP50: the evaluation set (8 images) cannot resolve a {b50:g} budget (95% interval width {width:.3g}); about {v['samples_needed']} images would"
    result = edgekit("check", tight_run / "report.json")
    assert result.returncode == 1 and f"onnxruntime:int8: {line}" in result.stdout, result.stdout + result.stderr
    md = (tight_run / "report.md").read_text()
    assert "### Intervals: 95% paired bootstrap interval (1000 resamples of the 8 images" in md and line in md
    assert "| onnxruntime:int8 | mAP50 | drop |" in md and f"no (~{v['samples_needed']} images)" in md


def test_check_confidence_passes_a_budget_the_interval_clears(tmp_path):
    run = _tiny_run(tmp_path, budgets={"mAP50-95": {"max_drop": 0.1}, "mAP50": {"max_relative_drop": 0.5}})
    result = edgekit("check", run, "--confidence", "0.95")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("at 95% confidence: PASS") == 2 and "cannot resolve" not in result.stdout
    assert "95% interval of the relative drop" in result.stdout
    also = edgekit("check", run, "--confidence", "0.99")
    assert also.returncode == 0 and also.stdout.count("at 99% confidence: PASS") == 2


# --- the families' per-sample data reproduces their metrics on the identity resample ---------------------------


def test_family_samples_reproduce_their_metrics():
    from edgekit.evaluators.bootstrap import clip_samples, generation_samples, output_fidelity_samples
    from edgekit.evaluators.generation import generation_fidelity
    from edgekit.evaluators.retrieval import retrieval_recall
    from edgekit.evaluators.zero_shot import topk_accuracy
    from edgekit.families.clip import fidelity as clip_fidelity
    from edgekit.families.onnx import fidelity as onnx_fidelity
    from edgekit.models.vlm.generate import Generation

    rng = np.random.default_rng(0)

    def unit(*shape):
        x = rng.normal(size=shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    classes = unit(20, 16)
    ref = {"zs_image": unit(30, 16), "class": classes, "caption": unit(24, 16), "rt_image": unit(12, 16)}
    ref["logits"] = ref["zs_image"] @ classes.T
    ours = {k: v + rng.normal(scale=0.05, size=v.shape) for k, v in ref.items() if k != "logits"}
    ours = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in ours.items()}
    ours["logits"] = ours["zs_image"] @ ours["class"].T
    labels, owner = rng.integers(0, 20, 30), np.repeat(np.arange(12), 2)
    want = {**topk_accuracy(ours["logits"], labels), **retrieval_recall(ours["rt_image"], ours["caption"], owner), **clip_fidelity(ref, ours)}
    got = clip_samples(ref, ours, labels, owner)
    assert "image_embedding_cosine" not in got  # two image sets: a mean of two means, no interval
    for name, samples in got.items():
        assert samples.point() == pytest.approx(want[name], abs=1e-12), name
    assert clip_samples({k: v for k, v in ref.items() if k != "rt_image"}, ours, labels, None)["image_embedding_cosine"].point() == pytest.approx(
        float(np.mean(np.sum(ref["zs_image"] * ours["zs_image"], axis=1))))

    def gen(n, vocab=50):
        return Generation(list(rng.integers(0, vocab, n)), 0.0, 0.0, rng.normal(size=(n, vocab)).astype(np.float32))

    reference = [gen(n) for n in (5, 8, 3, 6)]
    forced = [Generation(r.tokens[:-1] + [0], 0.0, 0.0, r.logits + rng.normal(scale=0.3, size=r.logits.shape).astype(np.float32)) for r in reference]
    free = [reference[0], gen(8), reference[2], gen(2)]
    fid = generation_fidelity(reference, forced, free)
    for name, samples in generation_samples(reference, forced, free).items():
        assert samples.point() == pytest.approx(fid[name], abs=1e-12) and samples.unit == "prompts", name

    outs_ref = [{"logits": rng.normal(size=(2, 12)).astype(np.float32), "feat": rng.normal(size=(1, 4, 3)).astype(np.float32)} for _ in range(6)]
    outs = [{k: v + rng.normal(scale=0.5, size=v.shape).astype(np.float32) for k, v in o.items()} for o in outs_ref]
    fid = onnx_fidelity(outs_ref, outs)
    got = output_fidelity_samples(outs_ref, outs)
    assert set(got) == {"output_cosine", "top1_agreement", "top5_overlap"}
    for name, samples in got.items():
        assert samples.point() == pytest.approx(fid[name], abs=1e-12), name
