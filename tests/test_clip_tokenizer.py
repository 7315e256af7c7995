"""CLIP tokenizer: known OpenAI ids, parity with an independent re-implementation of OpenAI's SimpleTokenizer on COCO
captions and edge cases, layout (truncation, padding, mask), sources, cache reuse and errors."""

from __future__ import annotations

import gzip
import html
import json
import os
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import regex

from edgekit.assets import assets_dir
from edgekit.errors import EdgekitError
from edgekit.models.clip import tokenizer as tk

BPE_GZ = assets_dir() / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
CAPTIONS = assets_dir() / "coco_val2017_subset" / "annotations" / "captions_val2017_subset.json"

pytestmark = pytest.mark.skipif(not BPE_GZ.is_file(), reason=f"OpenAI BPE file not found at {BPE_GZ}")

KNOWN = {  # clip.tokenize(text)[0] from OpenAI's CLIP
    "a diagram": [49406, 320, 22697, 49407],
    "a dog": [49406, 320, 1929, 49407],
    "a cat": [49406, 320, 2368, 49407],
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
}
EDGE = [
    "Hello, World!!! (test) -- ok?", "a #hashtag @user e-mail: x@y.com ... ;-)", "3.14159 and 1,000,000 and 42nd",
    "don't", "DON'T you've I'm we'll they'd it's she's", "rock'n'roll 'quoted'", "  extra   spaces\t\tand\nnewlines  ",
    "", "   ", "café naïve résumé Über", "e\u0301 composed later", "日本語のテキスト", "Привет мир", "ΟΔΟΣ ΟΔΟΣ.",
    "İstanbul straße", "🐶 dog emoji 👍🏽", "नमस्ते दुनिया", "مرحبا بالعالم", "x² ½ ⅓ ①", "&amp; fish &lt;b&gt; &#39;",
    "<|startoftext|> special <|endoftext|> in text", "<|EndOfText|>", "a\u00a0non-breaking\u2003space",
    "word " * 100, "supercalifragilisticexpialidocious " * 30,
]


# --- compact independent reference: OpenAI CLIP's simple_tokenizer.py ----------------------------------------------

def ref_bytes_to_unicode() -> dict[int, str]:
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in bs]
    return dict(zip(bs + extra, map(chr, bs + [256 + i for i in range(len(extra))])))


def ref_fix_text(text: str) -> str:
    """ftfy.fix_text when installed; otherwise only the parts the edge cases above need (curly quotes, NFC)."""
    try:
        import ftfy
    except ImportError:
        text = regex.sub("[\u02bc\u2018-\u201b]", "'", regex.sub("[\u201c-\u201f]", '"', text))
        return unicodedata.normalize("NFC", text)
    return ftfy.fix_text(text)


class RefTokenizer:
    def __init__(self, path: Path) -> None:
        merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = ref_bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ref_fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokenize(self, texts: list[str], context_length: int = 77) -> np.ndarray:
        """open_clip's ``tokenize(..., truncate=True)``."""
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [49406] + self.encode(text) + [49407]
            tokens = tokens[:context_length]
            tokens[-1] = 49407
            out[row, : len(tokens)] = tokens
        return out


# --- fixtures ------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _ref() -> RefTokenizer:
    return RefTokenizer(BPE_GZ)


@pytest.fixture(scope="module")
def tok() -> tk.ClipTokenizer:
    return tk.load_tokenizer(BPE_GZ)


@pytest.fixture(scope="module")
def coco_captions() -> list[str]:
    annotations = json.loads(CAPTIONS.read_text())["annotations"]
    return [a["caption"] for a in annotations[:: max(1, len(annotations) // 30)][:30]]


# --- tests ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", list(KNOWN))
def test_known_openai_ids(tok: tk.ClipTokenizer, text: str) -> None:
    expected = KNOWN[text] + [0] * (77 - len(KNOWN[text]))
    feed = tok([text])
    assert feed["input_ids"].dtype == np.int64 and feed["attention_mask"].dtype == np.int64
    assert feed["input_ids"][0].tolist() == expected
    assert _ref().tokenize([text])[0].tolist() == expected


def test_vocab_layout(tok: tk.ClipTokenizer) -> None:
    assert tok.vocab_size == 49408 and (tok.sot_id, tok.eot_id, tok.pad_id) == (49406, 49407, 0)
    assert tok.vocab_sha256 == tk.sha256_file(BPE_GZ)
    assert tok.hf.get_vocab() == _ref().encoder


def test_matches_reference_on_coco_and_edge_cases(tok: tk.ClipTokenizer, coco_captions: list[str]) -> None:
    assert len(coco_captions) == 30
    texts = coco_captions + EDGE
    got = tok(texts)
    want = _ref().tokenize(texts)
    mismatches = [t for t, a, b in zip(texts, got["input_ids"], want) if a.tolist() != b.tolist()]
    assert not mismatches
    assert (got["attention_mask"] == (want != 0)).all()


def test_ftfy_stand_in(tok: tk.ClipTokenizer) -> None:
    """What ftfy.fix_text does for OpenAI: curly quotes, ligatures, full-width forms, control characters."""
    pairs = [("don\u2019t \u201cquoted\u201d", "don't \"quoted\""), ("\ufb01sh \ufb02ower", "fish flower"),
             ("\uff21\uff22\uff23\u3000\uff11\uff12", "ABC 12"), ("a\x00b\x7f c\ufeff", "ab c")]
    for messy, clean in pairs:
        assert tok([messy])["input_ids"].tolist() == tok([clean])["input_ids"].tolist(), messy


def test_truncation_keeps_eot_last(tok: tk.ClipTokenizer) -> None:
    long = "a photo of a very long caption " * 40
    feed = tok([long, "a cat"])
    assert feed["input_ids"].shape == feed["attention_mask"].shape == (2, 77)
    assert feed["input_ids"][0, 0] == 49406 and feed["input_ids"][0, -1] == 49407
    assert (feed["attention_mask"][0] == 1).all() and (feed["input_ids"][0, 1:-1] != 49407).all()
    assert feed["input_ids"][0, 1:-1].tolist() == tok.encode(long)[:75]
    short = tk.load_tokenizer(BPE_GZ, context_length=8)(["a photo of a cat on a sofa", "a cat"])
    assert short["input_ids"].tolist() == [[49406, 320, 1125, 539, 320, 2368, 525, 49407],
                                           [49406, 320, 2368, 49407, 0, 0, 0, 0]]
    # exactly context_length tokens is not cut
    fits = tk.load_tokenizer(BPE_GZ, context_length=7)(["a photo of a cat"])["input_ids"]
    assert fits[0].tolist() == KNOWN["a photo of a cat"]


def test_padding_and_mask(tok: tk.ClipTokenizer) -> None:
    feed = tok(["a dog", "", "a photo of a cat"])
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert ids[1, :3].tolist() == [49406, 49407, 0]
    assert mask.sum(axis=1).tolist() == [4, 2, 7]
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] != 0).all()
    assert tok("a dog")["input_ids"].tolist() == ids[:1].tolist()
    assert tok([])["input_ids"].shape == (0, 77)


def test_hf_folders_give_same_ids(tok: tk.ClipTokenizer, tmp_path: Path, coco_captions: list[str]) -> None:
    texts = coco_captions[:10] + EDGE
    expected = tok(texts)["input_ids"]
    vocab_merges = tk.convert_openai_bpe(BPE_GZ, tmp_path / "vm")
    assert tk.load_tokenizer(vocab_merges)(texts)["input_ids"].tolist() == expected.tolist()
    tok.hf.save_pretrained(tmp_path / "saved")
    json_only = tmp_path / "json_only"
    json_only.mkdir()
    (json_only / "tokenizer.json").write_bytes((tmp_path / "saved" / "tokenizer.json").read_bytes())
    from_json = tk.load_tokenizer(json_only)
    assert from_json(texts)["input_ids"].tolist() == expected.tolist()
    assert from_json.vocab_sha256 == tk.sha256_file(json_only / "tokenizer.json")
    assert tk.load_tokenizer(json_only / "tokenizer.json").vocab_sha256 == from_json.vocab_sha256


def test_hub_id_goes_through_snapshot_download(tok: tk.ClipTokenizer, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    tok.hf.save_pretrained(tmp_path)
    calls: list[str] = []

    def fake(repo_id: str, **kwargs) -> str:
        calls.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert tk.load_tokenizer("openai/clip-vit-base-patch32")(["a cat"])["input_ids"][0, :4].tolist() == KNOWN["a cat"]
    assert calls == ["openai/clip-vit-base-patch32"]

    def offline(repo_id: str, **kwargs) -> str:
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(EdgekitError, match="Hugging Face Hub"):
        tk.load_tokenizer("openai/clip-vit-base-patch32")


def test_cache_written_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    first = tk.load_tokenizer(BPE_GZ)
    folder = tmp_path / "tokenizers" / tk.sha256_file(BPE_GZ)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["merges.txt", "vocab.json"]
    assert (folder / "merges.txt").read_text().startswith("#version")
    stats = {name: os.stat(folder / name) for name in files}

    def no_rewrite(*args, **kwargs):
        raise AssertionError("cache rewritten")

    monkeypatch.setattr(tk, "convert_openai_bpe", no_rewrite)
    second = tk.load_tokenizer(str(BPE_GZ))
    for name, before in stats.items():
        after = os.stat(folder / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second(["a dog"])["input_ids"].tolist() == first(["a dog"])["input_ids"].tolist()
    assert second.vocab_sha256 == first.vocab_sha256


def test_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(EdgekitError, match="not found") as info:
        tk.load_tokenizer(missing)
    assert info.value.path == missing and info.value.fix
    with pytest.raises(EdgekitError, match="not found"):
        tk.load_tokenizer("no/such/bpe.txt.gz")
    corrupt = tmp_path / "corrupt.txt.gz"
    corrupt.write_bytes(b"not gzip at all")
    with pytest.raises(EdgekitError, match="cannot read OpenAI BPE file") as info:
        tk.load_tokenizer(corrupt)
    assert info.value.path == corrupt
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    with pytest.raises(EdgekitError, match="not OpenAI's CLIP BPE file"):
        tk.load_tokenizer(short)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(EdgekitError, match="neither tokenizer.json"):
        tk.load_tokenizer(empty)
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "tokenizer.json").write_text("{ not json")
    with pytest.raises(EdgekitError, match="cannot load tokenizer"):
        tk.load_tokenizer(bad_json)
