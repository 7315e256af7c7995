"""Per-tensor range selection (``method: mse``): on real YOLOv5n activations (the fp32 ONNX run on 4 calibration
images) the MSE range quantizes with less error than MinMax and than the percentiles; its thresholds stay inside the
observed range; the method round-trips through the recipe and the calibration cache key; identical inputs give
identical ranges. ``entropy`` (vectorised) still picks what the chunk-by-chunk loop picked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import yaml
from conftest import COCO

from edgekit.quantization.calibration import cache_key, collect_ranges
from edgekit.quantization.observers import Histogram, MinMax, final_range
from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes, tensors_to_quantize
from edgekit.quantization.spec import QParams, Range


def int8_mse(x: np.ndarray, rng: Range, dtype: str = "uint8") -> float:
    """The measured mean squared error of fake-quantizing ``x`` with the parameters ``QParams.from_range`` builds."""
    qp = QParams.from_range(rng, dtype)
    lo, hi = (-127, 127) if dtype == "int8" else (0, 255)
    q = np.clip(np.rint(x.astype(np.float64) / qp.scale) + qp.zero_point, lo, hi)
    return float(np.mean(((q - qp.zero_point) * qp.scale - x) ** 2))


def observe(x: np.ndarray) -> tuple[MinMax, Histogram]:
    mm = MinMax()
    mm.update(x)
    hist = Histogram(mm.low, mm.high)
    hist.update(x)
    return mm, hist


@pytest.fixture(scope="module")
def activations(fp32_onnx, yolo) -> dict[str, np.ndarray]:
    """Every tensor whose range ONNX Runtime's placement takes from calibration (head decode kept float), over 4 real
    calibration images. Left out: Sigmoid outputs (fixed [0, 1]), pool/resize outputs (their input's parameters) and
    the graph input (pixels / 255: a lattice the MinMax grid hits exactly, where no clipping can help)."""
    import onnxruntime as ort

    from edgekit.quantization.calibration import observe_model
    from edgekit.quantization.graph import GraphIndex

    family, _ = yolo
    model = onnx.load(fp32_onnx)
    index, inputs = GraphIndex(model), {i.name for i in model.graph.input}
    own = ORT_PLACEMENT.fixed_ranges.keys() | ORT_PLACEMENT.shared_io
    tensors = [t for t in tensors_to_quantize(model, quantized_nodes(model, ORT_PLACEMENT, family.float_nodes(model), []))
               if t not in inputs and index.producer[t].op_type not in own]
    session = ort.InferenceSession(observe_model(model, tensors), providers=["CPUExecutionProvider"])
    images = sorted((COCO / "calib_images").iterdir())[:4]
    values: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for image in images:
        for name, value in zip(tensors, session.run(tensors, family.preprocess(image)[0])):
            values[name].append(value.ravel())
    return {name: np.concatenate(v) for name, v in values.items()}


def test_mse_range_quantizes_real_activations_better_than_minmax_and_percentiles(activations):
    totals = {"minmax": 0.0, "p99.9": 0.0, "p99.99": 0.0, "p99.999": 0.0, "mse": 0.0}
    worse_than_minmax = []
    for name, x in activations.items():
        mm, hist = observe(x)
        ranges = {"minmax": mm.range(), "p99.9": hist.percentile(99.9), "p99.99": hist.percentile(99.99),
                  "p99.999": hist.percentile(99.999), "mse": hist.mse()}
        errors = {k: int8_mse(x, r) for k, r in ranges.items()}
        scale = float(np.var(x)) or 1.0  # each tensor's error relative to its own variance: every tensor counts alike
        for k, e in errors.items():
            totals[k] += e / scale
        if errors["mse"] > errors["minmax"] * 1.02:
            worse_than_minmax.append((name, errors["mse"], errors["minmax"]))
        r = ranges["mse"]  # the chosen thresholds lie inside the observed range, zero inside the grid
        assert mm.low <= r.low <= r.high <= mm.high, (name, r, mm.range())
        assert r.low <= 0.0 or r.low == mm.low
    assert len(activations) > 50
    assert not worse_than_minmax, worse_than_minmax[:3]
    worst_percentile = max(totals["p99.9"], totals["p99.99"], totals["p99.999"])
    best_other = min(v for k, v in totals.items() if k != "mse")
    assert totals["mse"] < totals["minmax"] and totals["mse"] < worst_percentile and totals["mse"] <= best_other, totals


def test_model_error_tracks_measured_error(activations):
    """The histogram's error model (clipping + d^2/12 rounding noise) predicts the measured fake-quant error."""
    for x in list(activations.values())[::10]:
        mm, hist = observe(x)
        for r in (mm.range(), hist.mse(), hist.percentile(99.9)):
            predicted, measured = float(hist.quantization_mse(r.low, r.high)), int8_mse(x, r)
            assert predicted == pytest.approx(measured, rel=0.35), (r, predicted, measured)


def test_symmetric_mse_beats_symmetric_minmax(activations):
    """TensorRT's form (symmetric int8, 255 levels): less error than the symmetric MinMax bound over the tensors, and
    never much more on one (the uniform-noise model is approximate where the density is steep near zero)."""
    ours, minmax = 0.0, 0.0
    for x in list(activations.values())[::7]:
        mm, hist = observe(x)
        r = hist.mse(symmetric=True)
        bound = max(abs(mm.low), abs(mm.high))
        assert r.low == -r.high and 0 < r.high <= bound
        e, e_minmax = int8_mse(x, r, "int8"), int8_mse(x, Range(-bound, bound), "int8")
        assert e <= e_minmax * 1.1
        scale = float(np.var(x)) or 1.0
        ours, minmax = ours + e / scale, minmax + e_minmax / scale
    assert ours < minmax


def test_mse_matches_the_analytical_optimum_clips():
    """Banner et al. (ACIQ): the 8-bit MSE-optimal clip of Laplace(0, b) is ~9.89 b, of N(0, 1) ~3.92; a tensor with
    no tail (uniform) keeps its whole range; a few huge outliers are kept (clipping them costs more than the noise)."""
    rng = np.random.default_rng(0)
    for x, optimum in [(rng.laplace(0, 1, size=1_000_000), 9.89), (rng.normal(size=1_000_000), 3.92)]:
        mm, hist = observe(x)
        for r in (hist.mse(), hist.mse(symmetric=True)):
            assert r.high == pytest.approx(optimum, rel=0.06) and r.low == pytest.approx(-optimum, rel=0.06)
            assert r.high < mm.high and r.low > mm.low
        assert int8_mse(x, hist.mse()) < 0.7 * int8_mse(x, mm.range())
    light = rng.uniform(0, 6, size=200_000)
    _, hist = observe(light)
    assert hist.mse().high > 5.95 and hist.mse().low == pytest.approx(light.min())
    spiked = rng.laplace(0, 1, size=200_000)
    spiked[:5] = 80.0
    assert observe(spiked)[1].mse().high > 70


def test_identical_inputs_give_identical_ranges(activations):
    for x in list(activations.values())[:5]:
        a, b = observe(x.copy())[1], observe(x.copy())[1]
        assert a.mse() == b.mse() and a.entropy() == b.entropy() and a.mse(symmetric=True) == b.mse(symmetric=True)


def _entropy_loop(hist: Histogram, levels: int = 256) -> Range:
    """The original chunk-by-chunk KL search the vectorised ``Histogram.entropy`` replaced."""
    counts = hist.counts.astype(np.float64)
    best, best_kl = len(counts), np.inf
    for stop in range(levels, len(counts) + 1, 16):
        ref = counts[:stop].copy()
        ref[stop - 1] += counts[stop:].sum()
        if ref.sum() == 0:
            continue
        q = np.zeros(stop)
        for chunk in np.array_split(np.arange(stop), levels):
            nonzero = counts[chunk] > 0
            if nonzero.any():
                q[chunk[nonzero]] = counts[chunk].sum() / nonzero.sum()
        p_, q_ = ref / ref.sum(), q / max(q.sum(), 1e-12)
        mask = p_ > 0
        kl = float(np.sum(p_[mask] * np.log(p_[mask] / np.maximum(q_[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = stop, kl
    return Range(hist.low, hist.edge(best))


def test_vectorised_entropy_matches_the_loop(activations):
    for x in list(activations.values())[::12]:
        _, hist = observe(x)
        assert hist.entropy() == _entropy_loop(hist)


def test_method_round_trips_through_recipe_and_cache_key(tmp_path):
    from faults.tiny import tiny_recipe

    from edgekit.errors import EdgekitError
    from edgekit.recipe import load_recipe

    recipe = load_recipe(tiny_recipe(tmp_path, quantization__method="mse"))
    assert recipe.quantization.method == "mse"
    assert yaml.safe_load(yaml.safe_dump(recipe.quantization.model_dump(mode="json")))["method"] == "mse"
    with pytest.raises(EdgekitError):
        load_recipe(tiny_recipe(tmp_path, "bad.yaml", quantization__method="mse2"))
    model = onnx.ModelProto()
    keys = {m: cache_key(model, ["a"], ["t"], {"method": m, "percentile": None, "version": 2}) for m in ("mse", "entropy", "minmax")}
    assert len(set(keys.values())) == 3
    with pytest.raises(ValueError):
        final_range("mse2", MinMax(), Histogram(0.0, 1.0), 99.99)


def test_collect_ranges_mse_is_cached_and_deterministic():
    from faults.test_cache import SAMPLES, TENSORS, feed, small_model

    first = collect_ranges(small_model(), TENSORS, SAMPLES, feed, method="mse", threads=1)
    again = collect_ranges(small_model(), TENSORS, SAMPLES, feed, method="mse", threads=1)
    fresh = collect_ranges(small_model(), TENSORS, SAMPLES, feed, method="mse", threads=1, use_cache=False)
    other = collect_ranges(small_model(), TENSORS, SAMPLES, feed, method="percentile", threads=1, use_cache=False)
    assert again.from_cache and not fresh.from_cache and first.key == again.key == fresh.key != other.key
    assert first.ranges == again.ranges == fresh.ranges
    minmax = collect_ranges(small_model(), TENSORS, SAMPLES, feed, method="minmax", threads=1, use_cache=False)
    for t in TENSORS:
        assert minmax.ranges[t].low <= first.ranges[t].low <= first.ranges[t].high <= minmax.ranges[t].high
