"""The VLM recipes end to end through the CLI: export, quantize, generate, report, gate; then `edgekit generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import COCO, REPO, edgekit

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smolvlm_run(tmp_path_factory) -> Path:
    """The shipped SmolVLM recipe, exactly as the README runs it."""
    out = tmp_path_factory.mktemp("runs") / "smolvlm"
    result = edgekit("export", "recipes/smolvlm.yaml", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_smolvlm_report_has_every_target_measured(smolvlm_run) -> None:
    report = json.loads((smolvlm_run / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int4", "onnxruntime:dynamic"]
    fp32 = report["variants"][0]
    check = fp32["manifest"]["settings"]["pytorch_generation_check"]
    assert check["prompts"] == 2 and check["identical_sequences"] == 2  # FP32 ONNX greedy == PyTorch generate
    for graph in ("vision", "embed", "decoder"):
        assert fp32["manifest"]["settings"]["export"][graph]["check"]["passed"]
        assert fp32["manifest"]["settings"]["passes"][graph]["onnxslim"] == "applied"
    assert fp32["metrics"]["token_agreement"] == 1 and fp32["metrics"]["logit_kl"] == 0
    for v in report["variants"]:
        m = v["metrics"]
        assert m["ttft_ms"] > 0 and m["decode_tokens_per_s"] > 0 and v["peak_memory_mb"] > 0
        assert set(v["components"]) == {"vision", "embed", "decoder"} and v["fidelity"]["steps"] == 8 * 2 * 24
        assert 0 <= m["token_agreement"] <= 1 and m["logit_kl"] >= 0
    sizes = {v["name"]: v["components"]["decoder"]["size_bytes"] for v in report["variants"]}
    assert sizes["onnxruntime:int4"] < sizes["onnxruntime:int8"] < sizes["onnxruntime:fp32"] / 3
    quant = report["variants"][2]["components"]["decoder"]["settings"]["quantization"]
    assert quant["mode"] == "weight_only_int4" and quant["quantized_matmuls"] == 29 and quant["accuracy_level"] == 4
    assert report["variants"][1]["components"]["vision"]["precision"] == "int8"
    md = (smolvlm_run / "report.md").read_text()
    assert "## Generation speed and memory" in md and "logit_kl: max value" in md


def test_check_gates_agreement_and_divergence(smolvlm_run, tmp_path) -> None:
    report = json.loads((smolvlm_run / "report.json").read_text())
    ok = edgekit("check", smolvlm_run / "report.json")
    verdicts = [b["passed"] for v in report["variants"][1:] for b in v["budget"]]
    assert ok.returncode == (0 if all(verdicts) else 1)
    assert "logit_kl is" in ok.stdout + ok.stderr and "token_agreement dropped" in ok.stdout + ok.stderr
    strict = dict(report, budgets={"token_agreement": {"max_drop": 0.0}, "logit_kl": {"max_value": 1e-9}})
    from edgekit.reports import Report, check_report

    passed, lines = check_report(Report.model_validate(strict))  # the gate on stricter budgets
    assert not passed and any(line.startswith("onnxruntime:int4: logit_kl is") and line.endswith("FAIL") for line in lines)
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    bad = edgekit("check", tmp_path / "strict.json")  # budgets edited into report.json: refused, not gated
    assert bad.returncode == 2 and "digest mismatch" in bad.stderr and "differ from the recipe's" in bad.stderr


def test_generate_on_exported_graphs_matches_the_report(smolvlm_run) -> None:
    """`edgekit generate` on the int4 graphs prints the same text the report recorded for that image and prompt."""
    image = sorted((COCO / "images").glob("*.jpg"))[0]
    result = edgekit("generate", smolvlm_run, "--image", image, "--prompt", "Describe the image.", "--target", "onnxruntime:int4", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((smolvlm_run / "report.json").read_text())
    note = next(n for n in report["variants"][2]["notes"] if n.startswith(f"{image.name} / 'Describe the image.'"))
    assert note.endswith(repr(result.stdout.strip()))
    assert "time to first token" in result.stderr and "tokens/s" in result.stderr


def test_generate_errors_are_one_line(smolvlm_run, tmp_path) -> None:
    missing = edgekit("generate", smolvlm_run, "--image", tmp_path / "nope.jpg", "--prompt", "hi")
    assert missing.returncode == 2 and "image not found" in missing.stderr and "Traceback" not in missing.stderr
    wrong = edgekit("generate", smolvlm_run, "--prompt", "hi", "--target", "tflite:int8")
    assert wrong.returncode == 2 and "have: onnxruntime:fp32" in wrong.stderr
    not_run = edgekit("generate", tmp_path, "--prompt", "hi")
    assert not_run.returncode == 2 and "not a VLM run folder" in not_run.stderr


def test_llava_recipe_runs_end_to_end(tmp_path) -> None:
    data = yaml.safe_load((REPO / "recipes" / "llava.yaml").read_text())
    data["targets"] = ["onnxruntime:fp32", "onnxruntime:int4", "tensorrt:int8"]
    data["vlm"].update(max_images=2, speed_rounds=1)
    # the decoder's weight-only int4 with MatMul groups float until at most 45% of the teacher-forced tokens of the
    # tuning prompts (calibration images, never the prompt set) differ from FP32's (random weights: int4 flips ~60%)
    data["quantization"]["search"] = {"max_loss_pt": 45.0, "time_limit_s": 60, "latency_runs": 5}
    recipe = tmp_path / "llava.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "llava"
    result = edgekit("export", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][0]["manifest"]["settings"]["pytorch_generation_check"]["identical_sequences"] == 2
    assert report["variants"][0]["manifest"]["settings"]["model"]["architecture"] == "llava"
    assert json.loads((out / "vlm.json").read_text())["targets"]["onnxruntime:int4"]["decoder"] == "decoder_int4.onnx"
    search = report["tuning"]["graphs"]["decoder"]["backend_searches"]["onnxruntime:int4"]
    assert search["met"] and search["loss_pt"] <= 45.0 < search["baseline_loss_pt"] and search["tuning_prompts"] == 4 * 2
    assert search["sensitivity"]["scorer"].startswith("token_agreement") and search["timed_on"].startswith("one decode step")
    assert 0 < len(search["float_groups"]) < len(search["sensitivity"]["rows"])  # some MatMul groups float, not all
    quant = report["variants"][1]["components"]["decoder"]["settings"]["quantization"]
    assert quant["float_matmuls"] == search["float_nodes"] and quant["quantized_matmuls"] == quant["candidate_matmuls"]
    md = (out / "report.md").read_text()
    assert "### Mixed-precision search of `decoder`, onnxruntime:int4" in md and "### Sensitivity of `decoder`, onnxruntime:int4" in md
    assert "(sensitivity_decoder_onnxruntime-int4.svg)" in md and (out / "sensitivity_decoder_onnxruntime-int4.svg").is_file()
    text = edgekit("generate", out, "--prompt", "Say something.", "--max-new-tokens", "5")
    assert text.returncode == 0 and text.stdout.strip()
    # tensorrt:int8 without TensorRT: the vision tower's Linear-only Q/DQ graph and the fp16 decoder, run on the CPU
    trt = next(v for v in report["variants"] if v["name"] == "tensorrt:int8")
    assert trt["status"] == "simulated" and "latency not measured" in trt["simulated_how"], trt["status"]
    assert trt["components"]["vision"]["precision"] == "int8" and trt["components"]["decoder"]["precision"] == "fp16"
    assert any("TensorRT-LLM" in n for n in trt["notes"]), trt["notes"]
    assert trt["budget"] and all(b["passed"] for b in trt["budget"]) and trt["metrics"]["token_agreement"] > 0.9, trt["metrics"]
    assert (out / "tensorrt" / "vision_build_int8.json").is_file() and not list((out / "tensorrt").glob("decoder_build_*.json"))
    assert edgekit("check", out / "report.json").returncode == 0


def test_bad_model_folder_is_a_user_error(tmp_path) -> None:
    data = yaml.safe_load((REPO / "recipes" / "smolvlm.yaml").read_text())
    cfg = json.loads((REPO / "recipes" / "models" / "smolvlm-tiny" / "config.json").read_text())
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("preprocessor_config.json", "processor_config.json"):
        (folder / name).write_text((REPO / "recipes" / "models" / "smolvlm-tiny" / name).read_text())
    cfg["image_token_id"] = 123
    (folder / "config.json").write_text(json.dumps(cfg))
    data["model"]["config"] = str(folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    result = edgekit("export", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2 and "<image> id is 49409 but the config's image token id is 123" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    data["model"] = {"family": "vlm", "weights": str(folder)}
    recipe.write_text(yaml.safe_dump(data))
    result = edgekit("export", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2 and "no *.safetensors" in result.stderr


def test_weights_folder_loads_like_a_real_checkpoint_and_scores_captions(vlm_export, tmp_path) -> None:
    """A Hugging Face folder with safetensors, tokenizer, processor and chat template (what a real SmolVLM-256M
    download holds) goes through `from_pretrained`; with weights given, BLEU and CIDEr-D are computed."""
    from edgekit.models.vlm.family import VlmFamily

    family, model, _ = vlm_export["idefics3"]
    folder = tmp_path / "SmolVLM-tiny"
    model.save_pretrained(folder, safe_serialization=True)
    family.processor.save_pretrained(folder)
    assert list(folder.glob("*.safetensors")) and (folder / "tokenizer.json").is_file()
    loaded_family, loaded = VlmFamily.load(folder)
    assert loaded_family.provenance["source"] == "hf_folder" and loaded_family.image_token_id == family.image_token_id
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(bool((sd_a[k] == sd_b[k]).all()) for k in sd_a)

    data = yaml.safe_load((REPO / "recipes" / "smolvlm.yaml").read_text())
    data["model"] = {"family": "vlm", "weights": str(folder)}
    data["targets"] = ["onnxruntime:fp32", "onnxruntime:dynamic"]
    data["vlm"].update(max_images=2, prompts=["Describe the image."], speed_rounds=1, pytorch_check=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    fp32 = report["variants"][0]
    assert fp32["manifest"]["settings"]["pytorch_generation_check"]["identical_sequences"] == 1
    assert {"bleu1", "bleu4", "cider"} <= set(fp32["metrics"])  # random weights: scores near 0, but computed
    assert all(0 <= fp32["metrics"][k] for k in ("bleu1", "bleu4", "cider"))
