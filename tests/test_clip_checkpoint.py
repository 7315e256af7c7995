"""CLIP loading: random TinyCLIP, Hugging Face folders, open_clip weights checked against an independent OpenAI-CLIP
forward, OpenAI's TorchScript release, and files that must fail clearly (pickles that would run code among them)."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import TINYCLIP_CONFIG as TINY_CONFIG
from safetensors.torch import save_file
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.models.clip.checkpoint import load_clip
from edgekit.models.clip.open_clip import config_from_open_clip, state_dict_from_open_clip

EOT = 49407
# Small but shaped to expose mistakes: text width != vision width != embed dim, several heads, head width 16 / 12.
SMALL = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
}


# --- an independent OpenAI-CLIP forward (open_clip parameter names, nn.MultiheadAttention) ---------------------------


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, act: nn.Module) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=act, c_proj=nn.Linear(width * 4, width)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x: (L, N, D)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act: nn.Module) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, act) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, embed: int, act: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act)
        self.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).permute(0, 2, 1)  # (N, grid**2, W)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class ReferenceCLIP(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        act = QuickGELU() if cfg.get("quick_gelu") else nn.GELU()
        self.visual = Visual(v["image_size"], v["patch_size"], v["width"], v["layers"], v["width"] // v.get("head_width", 64), cfg["embed_dim"], act)
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.positional_embedding = nn.Parameter(torch.randn(t["context_length"], t["width"]) * 0.1)
        self.transformer = Transformer(t["width"], t["layers"], t["heads"], act)
        self.ln_final = nn.LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.randn(t["width"], cfg["embed_dim"]) * t["width"] ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(3.5))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        causal = torch.full((length, length), float("-inf")).triu_(1)
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x.permute(1, 0, 2), causal).permute(1, 0, 2))
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def _reference(cfg: dict, seed: int = 0) -> ReferenceCLIP:
    torch.manual_seed(seed)
    ref = ReferenceCLIP(cfg).eval()
    with torch.no_grad():  # no parameter left at its default (LayerNorm 1/0, zero in_proj bias): swaps must show
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


def _inputs(cfg: dict, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size, length = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    pixels = torch.randn(3, 3, size, size, generator=g)
    ids = torch.randint(1, EOT - 1, (3, length), generator=g)
    mask = torch.ones_like(ids)
    for row, end in enumerate((length - 1, 5, 9)):  # one full row, two padded ones
        ids[row, end], ids[row, end + 1 :], mask[row, end + 1 :] = EOT, 0, 0
    return pixels, ids, mask


def _hf_features(model, pixels, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids, attention_mask=mask).pooler_output)
    return image, text


def _ref_features(ref: ReferenceCLIP, pixels, ids) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return ref.visual(pixels), ref.encode_text(ids)


def _write_json(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- random TinyCLIP -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return load_clip(None, TINY_CONFIG, seed=0)


def test_tinyclip_architecture_from_open_clip_config(tiny):
    model, provenance = tiny
    vision = sum(p.numel() for p in model.vision_model.parameters())
    assert vision == 8_145_920  # "ViT-8M": the vision transformer without its 256x512 projection
    assert sum(p.numel() for p in model.text_model.encoder.parameters()) == 3 * 789_760
    assert model.visual_projection.weight.shape == (512, 256) and model.text_projection.weight.shape == (512, 256)
    vc, tc = model.config.vision_config, model.config.text_config
    assert (vc.num_attention_heads, tc.num_attention_heads) == (4, 4)  # head width 64 (open_clip default)
    assert (vc.hidden_act, tc.hidden_act) == ("gelu", "gelu")  # the config has no quick_gelu
    assert not model.training
    assert model.config._attn_implementation == "eager" and vc._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert provenance["source"] == "random" and provenance["seed"] == 0 and provenance["config_format"] == "open_clip"
    assert provenance["parameters"]["vision"] == vision


def test_random_weights_are_seeded(tiny):
    before = torch.random.get_rng_state()
    again, _ = load_clip(None, TINY_CONFIG, seed=0)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG stream is left alone
    a, b = tiny[0].state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = load_clip(None, TINY_CONFIG, seed=1)[0].state_dict()
    assert not torch.equal(a["vision_model.encoder.layers.0.self_attn.q_proj.weight"], other["vision_model.encoder.layers.0.self_attn.q_proj.weight"])


# --- Hugging Face folders -----------------------------------------------------------------------------------------


def test_hf_folder_round_trip(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    loaded, provenance = load_clip(tmp_path / "hf")
    assert provenance["source"] == "hf_folder" and provenance["files"] == [str(tmp_path / "hf" / "model.safetensors")]
    cfg = json.loads(TINY_CONFIG.read_text())
    pixels, ids, mask = _inputs({"vision_cfg": cfg["vision_cfg"], "text_cfg": cfg["text_cfg"]})
    for x, y in zip(_hf_features(model, pixels[:1], ids, mask), _hf_features(loaded, pixels[:1], ids, mask)):
        assert torch.equal(x, y)
    with pytest.raises(EdgekitError, match="disagrees with config.json"):  # an explicit config must describe the folder
        load_clip(tmp_path / "hf", _write_json(tmp_path / "other.json", {**cfg, "quick_gelu": True}))
    load_clip(tmp_path / "hf", TINY_CONFIG)  # an agreeing one is fine


def test_hf_folder_bin_and_sharded(tmp_path):
    model, _ = load_clip(None, _write_json(tmp_path / "small.json", SMALL), seed=3)
    state = model.state_dict()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="2MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    # older checkpoints stored the position_ids buffers; they are dropped, not reported as unknown
    torch.save({**state, "text_model.embeddings.position_ids": torch.arange(16)[None]}, tmp_path / "bin" / "pytorch_model.bin")
    for folder in ("sharded", "bin"):
        loaded, provenance = load_clip(tmp_path / folder)
        assert provenance["source"] == "hf_folder"
        assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items()), folder
    assert len(load_clip(tmp_path / "sharded")[1]["files"]) > 1


# --- open_clip weights against the reference --------------------------------------------------------------------


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_mapping_matches_reference_forward(tmp_path, quick_gelu):
    cfg = {**SMALL, "quick_gelu": quick_gelu}
    ref = _reference(cfg)
    sd = ref.state_dict()
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd and "text_projection" in sd
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "open_clip.safetensors")
    model, provenance = load_clip(tmp_path / "open_clip.safetensors", _write_json(tmp_path / "cfg.json", cfg))
    assert provenance["source"] == "open_clip" and provenance["hidden_act"]["text"] == ("quick_gelu" if quick_gelu else "gelu")
    pixels, ids, mask = _inputs(cfg)
    image, text = _hf_features(model, pixels, ids, mask)
    ref_image, ref_text = _ref_features(ref, pixels, ids)
    assert image.shape == (3, 24) and text.shape == (3, 24)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=1e-5)
    assert model.logit_scale.item() == pytest.approx(ref.logit_scale.item())


def test_reference_comparison_catches_swapped_q_k(tmp_path):
    ref = _reference(SMALL)
    config = config_from_open_clip(SMALL)
    mapped = state_dict_from_open_clip(ref.state_dict(), config)
    for tower in ("vision_model", "text_model"):
        q, k = (f"{tower}.encoder.layers.0.self_attn.{n}_proj.weight" for n in "qk")
        mapped[q], mapped[k] = mapped[k], mapped[q]
    from transformers import CLIPModel

    model = CLIPModel._from_config(config, attn_implementation="eager").eval()
    model.load_state_dict(mapped)
    pixels, ids, mask = _inputs(SMALL)
    for got, want in zip(_hf_features(model, pixels, ids, mask), _ref_features(ref, pixels, ids)):
        assert (got - want).abs().max() > 1e-3
    wrong = dict(ref.state_dict(), **{"visual.proj": ref.visual.proj.detach().t()})  # stored as Linear weight
    with pytest.raises(EdgekitError, match="config does not match the weights"):
        state_dict_from_open_clip(wrong, config)


def test_wrapped_pt_checkpoint(tmp_path):
    """A training checkpoint: {"state_dict": ...} with DDP ``module.`` keys (and TinyCLIP's encoder wrappers)."""
    ref = _reference(SMALL)
    cfg_path = _write_json(tmp_path / "cfg.json", SMALL)
    pixels, ids, mask = _inputs(SMALL)
    want = _ref_features(ref, pixels, ids)
    tinyclip = {"visual.": "_image_encoder.module.visual.", "logit_scale": "_logit_scale.module.logit_scale"}
    for name, rename in (("ddp.pt", lambda k: f"module.{k}"), ("tinyclip.pth", lambda k: next((k.replace(a, b, 1) for a, b in tinyclip.items() if k.startswith(a)), f"_text_encoder.module.{k}"))):
        checkpoint = {"epoch": 3, "name": "run", "state_dict": {rename(k): v for k, v in ref.state_dict().items()}}
        torch.save(checkpoint, tmp_path / name)
        model, provenance = load_clip(tmp_path / name, cfg_path)
        assert provenance["source"] == "open_clip"
        for got, ref_out in zip(_hf_features(model, pixels, ids, mask), want):
            torch.testing.assert_close(got, ref_out, atol=1e-5, rtol=1e-5)


class _ScriptableCLIP(nn.Module):
    """OpenAI's release layout (open_clip names) as a TorchScript module; half precision like the original."""

    def __init__(self, ref: ReferenceCLIP) -> None:
        super().__init__()
        self.visual, self.transformer, self.token_embedding, self.ln_final = ref.visual, ref.transformer, ref.token_embedding, ref.ln_final
        self.positional_embedding, self.text_projection, self.logit_scale = ref.positional_embedding, ref.text_projection, ref.logit_scale
        self.register_buffer("input_resolution", torch.tensor(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale.exp()


def test_openai_torchscript_archive_is_read_without_running_it(tmp_path):
    cfg = {**SMALL, "quick_gelu": True}
    ref = _reference(cfg)
    torch.jit.script(_ScriptableCLIP(_reference(cfg)).half()).save(str(tmp_path / "ViT-tiny.pt"))
    plain_cfg = _write_json(tmp_path / "cfg.json", SMALL)  # no quick_gelu: OpenAI weights get it anyway
    model, provenance = load_clip(tmp_path / "ViT-tiny.pt", plain_cfg)
    assert provenance["source"] == "openai_torchscript" and provenance["hidden_act"] == {"vision": "quick_gelu", "text": "quick_gelu"}
    ref.half().float()  # the same rounding as the archive
    pixels, ids, mask = _inputs(cfg)
    for got, want in zip(_hf_features(model, pixels, ids, mask), _ref_features(ref, pixels, ids)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --- pickles that would run code ----------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    cfg_path = _write_json(tmp_path / "cfg.json", SMALL)
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "payload": _Exploit(marker)}, tmp_path / "zip.pt")
    (tmp_path / "legacy.bin").write_bytes(pickle.dumps({"payload": _Exploit(marker)}, protocol=2))
    (tmp_path / "protocol4.bin").write_bytes(pickle.dumps({"payload": _Exploit(marker)}, protocol=4))
    with zipfile.ZipFile(tmp_path / "torchscript.pth", "w") as archive:  # looks like a TorchScript archive
        archive.writestr("m/data.pkl", pickle.dumps(_Exploit(marker), protocol=2))
        archive.writestr("m/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("m/code/__torch__.py", "")
    for name, detail in (("zip.pt", "posix.system"), ("legacy.bin", "posix.system"), ("protocol4.bin", "operand"), ("torchscript.pth", "posix.system")):
        with pytest.raises(EdgekitError, match="refusing") as info:
            load_clip(tmp_path / name, cfg_path)
        assert str(tmp_path / name) in str(info.value) and detail in str(info.value) and "fix:" in str(info.value)
    assert not marker.exists()
    (tmp_path / "hf").mkdir()  # the same through a Hugging Face folder
    _write_json(tmp_path / "hf" / "config.json", config_from_open_clip(SMALL).to_dict())
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes((tmp_path / "zip.pt").read_bytes())
    with pytest.raises(EdgekitError, match="refusing"):
        load_clip(tmp_path / "hf")
    assert not marker.exists()


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    return _reference(SMALL).state_dict()


def _expect(match: str, weights, config=None) -> EdgekitError:
    with pytest.raises(EdgekitError, match=match) as info:
        load_clip(weights, config)
    assert "fix:" in str(info.value)
    return info.value


def test_path_errors(tmp_path, small_sd):
    cfg_path = _write_json(tmp_path / "cfg.json", SMALL)
    _expect("weights not found", tmp_path / "missing.safetensors", cfg_path)
    _expect("weights not found", str(tmp_path / "missing.pt"), cfg_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    _expect("unsupported weights format '.onnx'", tmp_path / "model.onnx", cfg_path)
    save_file({k: v.contiguous() for k, v in small_sd.items()}, tmp_path / "w.safetensors")
    _expect("need their model config", tmp_path / "w.safetensors")
    _expect("model config not found", tmp_path / "w.safetensors", tmp_path / "nope.json")
    _expect("neither model.weights nor model.config", None, None)
    (tmp_path / "empty").mkdir()
    _expect("holds no CLIP model", tmp_path / "empty")
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    _expect("corrupt or truncated", tmp_path / "broken.safetensors", cfg_path)
    torch.save(small_sd, tmp_path / "full.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    _expect("cannot read PyTorch checkpoint", tmp_path / "trunc.pt", cfg_path)
    (tmp_path / "junk.bin").write_bytes(b"hello, not a checkpoint")
    _expect("cannot read PyTorch checkpoint", tmp_path / "junk.bin", cfg_path)
    _expect("not a CLIP config", None, _write_json(tmp_path / "siglip.json", {"model_type": "siglip", "vision_config": {}, "text_config": {}}))
    _expect("init_logit_bias", None, _write_json(tmp_path / "siglip_oc.json", {**SMALL, "init_logit_bias": -10}))
    _expect("ls_init_value", None, _write_json(tmp_path / "ls.json", {**SMALL, "vision_cfg": {**SMALL["vision_cfg"], "ls_init_value": 1e-5}}))


def test_key_and_shape_errors(tmp_path, small_sd):
    cfg_path = _write_json(tmp_path / "cfg.json", SMALL)
    config = config_from_open_clip(SMALL)
    cases = {
        "unknown": ({**small_sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(64), "foo.bar": torch.ones(1)}, "not OpenAI/open_clip CLIP ViT weights: foo.bar, visual.transformer"),
        "missing": ({k: v for k, v in small_sd.items() if not k.startswith("transformer.resblocks.1.")}, r"weight\(s\) missing: text_model.encoder.layers.1"),
    }
    for name, (sd, match) in cases.items():
        with pytest.raises(EdgekitError, match=match):
            state_dict_from_open_clip(sd, config, name)
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / f"{name}.safetensors")
        _expect(match.split(":")[0], tmp_path / f"{name}.safetensors", cfg_path)
    save_file({k: v.contiguous() for k, v in small_sd.items()}, tmp_path / "ok.safetensors")
    wider = {**SMALL, "text_cfg": {**SMALL["text_cfg"], "width": 64}}
    error = _expect("config does not match the weights", tmp_path / "ok.safetensors", _write_json(tmp_path / "wider.json", wider))
    assert "text_model.embeddings.position_embedding.weight (16, 48) != (16, 64)" in str(error)
    deeper = {**SMALL, "vision_cfg": {**SMALL["vision_cfg"], "layers": 3}}
    _expect(r"missing: vision_model.encoder.layers.2", tmp_path / "ok.safetensors", _write_json(tmp_path / "deeper.json", deeper))


def test_hub_id_fails_clearly_when_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # "openai/clip-vit-base-patch32" is not a local path here
    error = _expect("Hugging Face Hub failed", "openai/clip-vit-base-patch32")
    assert "pass its local path" in str(error)
