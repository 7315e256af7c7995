"""SmolVLM at SmolVLM-256M's sizes (random weights): what each decoder quantization saves and keeps, on ORT CPU.

No VLM weights exist here, so this builds SmolVLM-256M-Instruct's architecture from its published sizes (SigLIP
vision 768 wide, 12 layers, 512 px tiles of 16 px patches, pixel shuffle 4 -> 64 tokens per tile; Llama decoder
576 wide, 30 layers, 9 query / 3 key-value heads, tied embeddings) with random weights (seed 0). Two deliberate
differences: the vocabulary is 49,472 rather than 49,280 (the CLIP BPE tokenizer from the assets plus the Idefics3
special tokens must fit), and images are resized to one 512 px tile (SmolVLM's own processor may split larger
images into up to 4x4 tiles plus a global view, multiplying the vision time). It runs the ``recipes/smolvlm.yaml``
job on that config: export, PyTorch checks, quantization, fidelity on a fixed prompt set over COCO images, TTFT and
decode tokens/s from interleaved rounds, peak memory per target in a fresh process.

    python benchmarks/smolvlm_shape.py [--images 4] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.job import run_recipe  # noqa: E402
from edgekit.recipe import load_recipe  # noqa: E402

TINY = HERE.parent / "recipes" / "models" / "smolvlm-tiny"
SMOLVLM_256M = {
    "scale_factor": 4,
    "tie_word_embeddings": True,
    "vision_config": {"model_type": "idefics3_vision", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
    "text_config": {"model_type": "llama", "vocab_size": 49472, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
                    "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 49406, "eos_token_id": 49410, "pad_token_id": 49407},
}


def model_folder(root: Path) -> Path:
    """The tiny recipe folder with SmolVLM-256M's sizes: config.json and the tile size are the only changes."""
    folder = root / "smolvlm-256m-shape"
    folder.mkdir()
    config = json.loads((TINY / "config.json").read_text()) | SMOLVLM_256M
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    pre = json.loads((TINY / "preprocessor_config.json").read_text()) | {"size": {"longest_edge": 512}, "max_image_size": {"longest_edge": 512}}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Idefics3Processor", "image_seq_len": 64}))
    (folder / "chat_template.jinja").write_text((TINY / "chat_template.jinja").read_text())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "smolvlm_shape.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-smolvlm-") as tmp:
        root = Path(tmp)
        data = yaml.safe_load((HERE.parent / "recipes" / "smolvlm.yaml").read_text())
        data["name"] = "smolvlm-256m-shape"
        data["model"]["config"] = str(model_folder(root))
        data["quantization"]["calibration"].update(count=16, warn_below=8)
        data["vlm"].update(max_images=args.images, prompts=["Describe the image."], speed_rounds=args.rounds)
        recipe_path = root / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(data))
        report = run_recipe(load_recipe(recipe_path), recipe_path, root / "run")
    rows = []
    ref = report.variants[0]
    for v in report.variants:
        m = v.metrics
        rows.append({
            "target": v.name, "size_mb": {k: round(c.size_bytes / 1e6, 1) for k, c in v.components.items()}, "total_mb": round(v.size_bytes / 1e6, 1),
            "ttft_ms": m["ttft_ms"], "ttft_speedup": round(ref.metrics["ttft_ms"] / m["ttft_ms"], 3),
            "decode_tokens_per_s": m["decode_tokens_per_s"], "decode_speedup": round(m["decode_tokens_per_s"] / ref.metrics["decode_tokens_per_s"], 3),
            "peak_memory_mb": v.peak_memory_mb, **{k: v.fidelity[k] for k in ("token_agreement", "logit_cosine", "logit_cosine_min", "logit_kl", "logit_kl_max", "exact_match", "prefix_agreement", "steps")},
        })
    table = Table(title=f"SmolVLM-256M shape (random weights), {report.device.get('cpu_model')}, {ref.threads} threads")
    for col in ("target", "MB vision+embed+decoder", "TTFT ms", "decode tok/s", "peak MB", "token agree", "logit cos", "KL nats", "exact"):
        table.add_column(col)
    for r in rows:
        s = r["size_mb"]
        table.add_row(r["target"], f"{s['vision']}+{s['embed']}+{s['decoder']}", f"{r['ttft_ms']:.0f} ({r['ttft_speedup']:.2f}x)",
                      f"{r['decode_tokens_per_s']:.1f} ({r['decode_speedup']:.2f}x)", f"{r['peak_memory_mb']:.0f}", f"{r['token_agreement']:.3f}",
                      f"{r['logit_cosine']:.4f}", f"{r['logit_kl']:.4f}", f"{r['exact_match']:.2f}")
    Console().print(table)
    speed = ref.manifest["settings"]["speed"]
    write_json_atomic(args.out, {
        "benchmark": "smolvlm_shape", "device": report.device, "settings": {"images": args.images, "rounds": args.rounds, **speed},
        "model": ref.manifest["settings"]["model"], "pytorch_generation_check": ref.manifest["settings"]["pytorch_generation_check"],
        "timings_s": report.timings_s, "rows": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
