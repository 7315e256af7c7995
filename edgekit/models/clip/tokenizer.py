"""CLIP text tokenizer: OpenAI's BPE (``bpe_simple_vocab_16e6.txt.gz``), a tokenizer folder or a hub id, run by Hugging
Face's ``CLIPTokenizer`` (the Rust ``tokenizers`` backend) and laid out the OpenAI way.

Output per text: ``<|startoftext|>`` + BPE ids + ``<|endoftext|>``, padded with 0 to ``context_length``; longer texts
are cut keeping ``<|endoftext|>`` last (open_clip's ``truncate=True``). Text is cleaned as OpenAI's ``basic_clean`` /
``whitespace_clean`` / ``lower`` do, with a fixed stand-in for ``ftfy.fix_text`` (no ftfy dependency): HTML unescaping
(twice), curly quotes, Latin ligatures, full-width forms, control characters, NFC. Mojibake repair is not done.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifacts import sha256_file, write_text_atomic
from edgekit.errors import EdgekitError

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
#: OpenAI's SimpleTokenizer keeps merges ``lines[1 : 49152 - 256 - 2 + 1]`` (48894 merges) -> 49408 ids.
N_MERGES = 49152 - 256 - 2
HF_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_FIX = "point model.tokenizer at OpenAI's bpe_simple_vocab_16e6.txt.gz, a folder with vocab.json+merges.txt or tokenizer.json, or a hub id"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _clean_table() -> dict[int, str | None]:
    """The parts of ``ftfy.fix_text`` (defaults) that matter for CLIP, as one ``str.translate`` table."""
    table: dict[int, str | None] = {}
    # remove_control_chars (whitespace controls are left to the whitespace cleanup)
    for start, stop in ((0x00, 0x09), (0x0B, 0x0C), (0x0E, 0x20), (0x7F, 0x80), (0x206A, 0x2070), (0xFEFF, 0xFF00),
                        (0xFFF9, 0xFFFD)):
        table.update(dict.fromkeys(range(start, stop)))
    # fix_latin_ligatures
    table.update({ord(k): v for k, v in {"Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ",
                                          "ǅ": "Dž", "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj",
                                          "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl",
                                          "ﬅ": "ſt", "ﬆ": "st"}.items()})
    # fix_character_width
    table[0x3000] = " "
    for code in range(0xFF01, 0xFFF0):
        alternate = unicodedata.normalize("NFKC", chr(code))
        if alternate != chr(code):
            table[code] = alternate
    # uncurl_quotes (after width, as in ftfy)
    table.update(dict.fromkeys([0x02BC, *range(0x2018, 0x201C)], "'"))
    table.update(dict.fromkeys(range(0x201C, 0x2020), '"'))
    return table


_TABLE = _clean_table()


def clean_text(text: str) -> str:
    """OpenAI's ``basic_clean`` (ftfy stand-in, ``html.unescape`` twice) then ``lower``; whitespace is collapsed by the
    tokenizer's normalizer. Lower-casing here (not only in Rust) keeps Python's final-sigma rule and lets
    ``<|EndOfText|>`` match the special token, as in OpenAI's code."""
    text = html.unescape(html.unescape(text)).translate(_TABLE)
    return unicodedata.normalize("NFC", text).strip().lower()


class ClipTokenizer:
    """Callable: ``texts -> {"input_ids", "attention_mask"}``, both int64 ``(N, context_length)``.

    ``hf`` is the underlying ``transformers.CLIPTokenizer``; ``vocab_sha256`` the SHA-256 of the source file(s) (the
    ``.txt.gz`` itself, or ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``); ``source`` what was asked for.
    """

    def __init__(self, hf: Any, context_length: int, vocab_sha256: str, source: str) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.hf = hf
        self.context_length = int(context_length)
        self.vocab_sha256 = vocab_sha256
        self.source = source
        self.sot_id = _token_id(hf, SOT, source)
        self.eot_id = _token_id(hf, EOT, source)
        self.pad_id = 0
        self.vocab_size = len(hf)
        backend = hf.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend

    def __repr__(self) -> str:
        return (f"ClipTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"context_length={self.context_length}, vocab_sha256={self.vocab_sha256[:12]}...)")

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens or truncation."""
        return self._backend.encode(clean_text(text), add_special_tokens=False).ids

    def __call__(self, texts: list[str] | str) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        if not texts:
            return {"input_ids": ids, "attention_mask": mask}
        encodings = self._backend.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        for row, encoding in enumerate(encodings):
            body = encoding.ids[: length - 2]
            n = len(body) + 2
            ids[row, 0] = self.sot_id
            ids[row, 1 : n - 1] = body
            ids[row, n - 1] = self.eot_id
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _token_id(hf: Any, token: str, source: str) -> int:
    index = hf.get_vocab().get(token)
    if index is None:
        raise EdgekitError(f"tokenizer has no {token} token, so it is not a CLIP tokenizer", source, _FIX)
    return int(index)


def cache_root() -> Path:
    """``$EDGEKIT_CACHE/tokenizers`` (default ``~/.cache/edgekit/tokenizers``)."""
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "tokenizers"


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable unicode character map (the 256 base symbols of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_openai_bpe(path: Path) -> list[tuple[str, str]]:
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise EdgekitError(f"cannot read OpenAI BPE file ({type(exc).__name__}: {exc})", path, _FIX) from exc
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise EdgekitError(f"not OpenAI's CLIP BPE file (expected a header and {N_MERGES} 'a b' merge lines)", path, _FIX)
    return merges  # type: ignore[return-value]


def convert_openai_bpe(path: str | Path, out_dir: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face layout, OpenAI's id order) for OpenAI's ``.txt.gz``."""
    path, out_dir = Path(path), Path(out_dir)
    merges = _read_openai_bpe(path)
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    if len(set(vocab)) != len(vocab):
        raise EdgekitError("BPE file has duplicate merges", path, _FIX)
    write_text_atomic(out_dir / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_text_atomic(out_dir / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    return out_dir


def _from_folder(folder: Path) -> tuple[Any, str]:
    from transformers import CLIPTokenizerFast

    if (folder / "tokenizer.json").is_file():
        digest = sha256_file(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        h = hashlib.sha256()
        for name in ("vocab.json", "merges.txt"):
            h.update(bytes.fromhex(sha256_file(folder / name)))
        digest = h.hexdigest()
    else:
        raise EdgekitError("folder has neither tokenizer.json nor vocab.json + merges.txt", folder, _FIX)
    try:
        hf = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for bad files
        raise EdgekitError(f"cannot load tokenizer ({type(exc).__name__}: {exc})", folder, _FIX) from exc
    return hf, digest


TOKENIZER_CACHE_VERSION = 1


def _manifest(folder: Path, digest: str) -> dict:
    files = {name: sha256_file(folder / name) for name in ("merges.txt", "vocab.json")}
    body = {"key": digest, "files": files, "version": TOKENIZER_CACHE_VERSION}
    return {**body, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def _verify_entry(folder: Path, digest: str) -> str | None:
    """None when the cached conversion in ``folder`` verifies against its manifest ``<folder>.json``; "" for a miss
    (no manifest: never written, or written by an older edgekit); else why it does not verify."""
    manifest = folder.with_name(folder.name + ".json")
    try:
        data = json.loads(manifest.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as exc:
        return f"cannot read {manifest.name} ({type(exc).__name__}: {exc.strerror or exc})"
    except (UnicodeDecodeError, ValueError, RecursionError):
        return f"{manifest.name} is not valid JSON"
    if not isinstance(data, dict) or data.get("version") != TOKENIZER_CACHE_VERSION:
        return ""
    if data.get("key") != digest:
        return f"{manifest.name} holds the entry of another key"
    try:
        actual = _manifest(folder, digest)
    except OSError as exc:
        return f"cannot read its files ({type(exc).__name__}: {exc.strerror or exc})"
    if data != actual:
        return "its files' sha256 do not match its manifest"
    return None


def _from_openai_bpe(path: Path) -> tuple[Any, str]:
    """Convert OpenAI's BPE once into ``$EDGEKIT_CACHE/tokenizers/<sha256>/`` (manifest ``<sha256>.json``): an entry
    that does not verify is one warning and a fresh conversion; an unusable cache folder is one warning and a
    conversion into a temporary folder. The conversion is deterministic, so concurrent runs write identical bytes."""
    import tempfile
    import warnings

    from edgekit.quantization.calibration import CacheWarning

    digest = sha256_file(path)
    folder = cache_root() / digest
    problem = _verify_entry(folder, digest)
    if problem is None:
        try:
            return _from_folder(folder)[0], digest
        except EdgekitError as exc:  # verified bytes transformers cannot load: rebuild once
            problem = str(exc)
    if problem:
        warnings.warn(f"tokenizer cache entry {folder} does not verify ({problem}): recomputing it", CacheWarning, stacklevel=3)
    try:
        convert_openai_bpe(path, folder)
        write_text_atomic(folder.with_name(folder.name + ".json"), json.dumps(_manifest(folder, digest), indent=2) + "\n")
    except OSError as exc:
        warnings.warn(f"tokenizer cache {cache_root()} is not writable ({type(exc).__name__}: {exc.strerror or exc}): running "
                      "without a cache", CacheWarning, stacklevel=3)
        with tempfile.TemporaryDirectory(prefix="edgekit-tokenizer-") as tmp:
            return _from_folder(convert_openai_bpe(path, Path(tmp)))[0], digest
    return _from_folder(folder)[0], digest


def _from_hub(repo_id: str) -> tuple[Any, str]:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=list(HF_FILES))
    except Exception as exc:
        raise EdgekitError(f"not a local file and cannot fetch it from the Hugging Face Hub ({type(exc).__name__}: {exc})",
                           repo_id, _FIX) from exc
    return _from_folder(Path(folder))


def load_tokenizer(source: str | Path, context_length: int = 77) -> ClipTokenizer:
    """A :class:`ClipTokenizer` from OpenAI's ``.txt.gz`` (converted once into the cache), a Hugging Face tokenizer
    folder (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``, e.g. a CLIP model folder) or a hub id."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        bpe = sorted(path.glob("bpe_simple_vocab*.txt.gz"))
        if not any((path / n).is_file() for n in ("tokenizer.json", "vocab.json")) and len(bpe) == 1:
            hf, digest = _from_openai_bpe(bpe[0])
        else:
            hf, digest = _from_folder(path)
    elif path.is_file():
        if path.name == "tokenizer.json":
            hf, digest = _from_folder(path.parent)
        else:
            hf, digest = _from_openai_bpe(path)
    elif _HUB_ID.match(text) and not text.endswith((".gz", ".json", ".txt")) and not isinstance(source, Path):
        hf, digest = _from_hub(text)
    else:
        raise EdgekitError("tokenizer file not found", path, _FIX)
    return ClipTokenizer(hf, context_length, digest, text)
