"""CLIP zero-shot and retrieval metrics on hand-built cases with known answers, and the real prompt/label/caption assets."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from conftest import ASSETS, COCO

from edgekit.errors import EdgekitError
from edgekit.evaluators.retrieval import load_coco_captions, retrieval_recall
from edgekit.evaluators.zero_shot import (
    class_embeddings,
    prediction_agreement,
    topk_accuracy,
    topk_overlap,
    zero_shot_scores,
)
from edgekit.models.clip.prompts import load_labelled_images, load_section_classes, load_templates

PROMPTS = ASSETS / "clip_tokenizer" / "openai_clip_prompts.md"
IMAGENET_CSV = ASSETS / "imagenet_sample_1000" / "labels.csv"
CAPTIONS = COCO / "annotations" / "captions_val2017_subset.json"
needs_assets = pytest.mark.skipif(not CAPTIONS.is_file(), reason="real assets not available")


def _unit(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _reference_recall(img: np.ndarray, txt: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    """Brute force with the documented tie rule: argsort(-sim, kind="stable")."""
    sim = img @ txt.T
    i2t = [np.flatnonzero(owner[np.argsort(-sim[i], kind="stable")] == i)[0] < k for i in range(len(img))]
    t2i = [np.flatnonzero(np.argsort(-sim[:, j], kind="stable") == owner[j])[0] < k for j in range(len(txt))]
    return float(np.mean(i2t)), float(np.mean(t2i))


# ---------------------------------------------------------------- retrieval


def test_recall_known_values() -> None:
    # images are the axes, so sim[i, j] = text_emb[j, i]
    images = np.eye(2)
    texts = _unit([[0.6, 0.8], [1, 0], [0.8, 0.6], [0.96, 0.28]])
    owner = np.array([0, 0, 1, 1])
    # image 0: [0.6, 1, .8, .96] -> T1 (own) first; image 1: [.8, 0, .6, .28] -> T0 (other), then T2 (own)
    # T0 -> image 1 first (miss); T1 -> image 0 (hit); T2, T3 -> image 0 first (miss)
    r = retrieval_recall(images, texts, owner, ks=(1, 2))
    assert r == {"i2t_R@1": 0.5, "i2t_R@2": 1.0, "t2i_R@1": 0.25, "t2i_R@2": 1.0, "retrieval_mean_recall": 0.6875}


def test_i2t_counts_any_caption() -> None:
    # image 0 has three captions; only the LAST one is its top text (first-caption or all-captions rules give 0)
    images = np.eye(2)
    texts = _unit([[0, 1], [0, 1], [1, 0], [0.5, 0.75**0.5], [0.5, 0.75**0.5], [0.5, 0.75**0.5]])
    owner = np.array([0, 0, 0, 1, 1, 1])
    r = retrieval_recall(images, texts, owner, ks=(1, 3))
    # image 1: [1, 1, 0, .87, .87, .87] -> T0, T1 (image 0's) rank first, its own T3 at position 2
    assert r["i2t_R@1"] == 0.5 and r["i2t_R@3"] == 1.0
    # T0, T1 = [0, 1] are closer to image 1: t2i misses for them only
    assert r["t2i_R@1"] == pytest.approx(4 / 6)


def test_ties_earlier_index_wins() -> None:
    images = np.eye(2)
    s = 0.5**0.5
    texts = np.array([[1, 0], [1, 0], [0, 1], [s, s]])
    r = retrieval_recall(images, texts, np.array([1, 0, 1, 1]), ks=(1, 2))
    # image 0: T0 (image 1's) and T1 (own) tie at 1 -> T0 first: miss; T3 ties both images -> image 0 first: miss
    assert r["i2t_R@1"] == 0.5 and r["i2t_R@2"] == 1.0
    assert r["t2i_R@1"] == 0.5 and r["t2i_R@2"] == 1.0
    swapped = retrieval_recall(images, texts, np.array([0, 1, 1, 1]), ks=(1,))
    assert swapped["i2t_R@1"] == 1.0


def test_matches_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(-2, 3, size=(12, 4)).astype(float)
    owner = np.repeat(np.arange(12), 3)
    txt = rng.integers(-2, 3, size=(36, 4)).astype(float)
    for k in (1, 2, 5, 10):
        r = retrieval_recall(img, txt, owner, ks=(k,))
        assert (r[f"i2t_R@{k}"], r[f"t2i_R@{k}"]) == _reference_recall(img, txt, owner, k)


def test_permutation_invariant_and_perfect() -> None:
    rng = np.random.default_rng(1)
    img = _unit(rng.normal(size=(20, 8)).tolist())
    owner = np.repeat(np.arange(20), 5)
    txt = _unit((img[owner] + 0.9 * rng.normal(size=(100, 8))).tolist())
    r = retrieval_recall(img, txt, owner)
    assert 0.0 < r["t2i_R@1"] < 1.0 and set(r) == {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "retrieval_mean_recall"}
    assert r["retrieval_mean_recall"] == pytest.approx(np.mean([v for k, v in r.items() if "@" in k]))
    pi, pt = rng.permutation(20), rng.permutation(100)
    new_row = np.argsort(pi)  # old image i is now at row new_row[i]
    assert retrieval_recall(img[pi], txt[pt], new_row[owner[pt]]) == pytest.approx(r)
    perfect = retrieval_recall(img, img[owner], owner)
    assert all(v == 1.0 for v in perfect.values())


def test_recall_rejects_image_without_caption() -> None:
    with pytest.raises(ValueError, match="no caption"):
        retrieval_recall(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


# ---------------------------------------------------------------- zero-shot


def test_topk_accuracy_known_values() -> None:
    logits = np.array([
        [0, 0, 5, 0, 0, 0],  # label 2: top-1
        [3, 3, 0, 0, 0, 0],  # label 0: wins the tie (lower index)
        [3, 3, 0, 0, 0, 0],  # label 1: loses the tie -> rank 2
        [6, 5, 4, 3, 2, 1],  # label 5: rank 6 -> outside top-5
    ], dtype=float)
    labels = np.array([2, 0, 1, 5])
    assert topk_accuracy(logits, labels) == {"zero_shot_top1": 0.5, "zero_shot_top5": 0.75}
    assert topk_accuracy(logits, labels, ks=(2, 6)) == {"zero_shot_top2": 0.75, "zero_shot_top6": 1.0}


def test_agreement_and_overlap() -> None:
    a = np.array([[9, 8, 0, 0], [0, 9, 0, 0], [0, 0, 9, 0], [0, 0, 0, 9]], dtype=float)
    b = np.array([[9, 0, 8, 0], [0, 9, 0, 0], [9, 0, 0, 0], [9, 0, 0, 0]], dtype=float)
    assert prediction_agreement(a, b) == 0.5
    assert prediction_agreement(a, a) == 1.0
    # top-2 sets: a {0,1},{1,0},{2,0},{3,0}; b {0,2},{1,0},{0,1},{0,1} -> overlaps 1/2, 2/2, 1/2, 1/2
    assert topk_overlap(a, b, k=2) == pytest.approx(0.625)
    assert topk_overlap(a, b, k=4) == 1.0
    with pytest.raises(ValueError):
        topk_overlap(a, b, k=5)


def _fake_encoder(dim: int = 16):
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")).normal(size=dim) for t in texts]
        return _unit(rows).astype(np.float32)

    return encode, calls


def test_class_embeddings_is_mean_then_normalize() -> None:
    encode, calls = _fake_encoder()
    classes, templates = ["cat", "dog", "red panda"], ["a photo of a {}.", "a {} in the wild", "{}", "art of the {}"]
    seen: list[tuple[str, int]] = []

    def progress(label: str, n: int):
        seen.append((label, n))
        return range(n)

    emb = class_embeddings(encode, classes, templates, batch_size=5, progress=progress)
    assert calls == [5, 5, 2] and seen[0][1] == 3
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    for c, name in enumerate(classes):
        mean = encode([t.format(name) for t in templates]).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(emb[c], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(class_embeddings(encode, classes, templates, batch_size=1000), emb, atol=1e-7)
    # images equal to a class embedding classify as that class
    logits = zero_shot_scores(emb[[2, 0, 1]], emb)
    assert topk_accuracy(logits, np.array([2, 0, 1]), ks=(1,)) == {"zero_shot_top1": 1.0}


# ---------------------------------------------------------------- prompt templates and class names


@needs_assets
def test_templates_from_real_prompts_file() -> None:
    assert load_section_classes(PROMPTS, "CIFAR10") == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    cifar10 = load_templates(PROMPTS, "CIFAR10")
    assert len(cifar10) == 18 and cifar10[0] == "a photo of a {}." and cifar10[-1] == "a photo of the big {}."
    assert len(load_section_classes(PROMPTS, "CIFAR100")) == 100 and len(load_templates(PROMPTS, "CIFAR100")) == 18
    assert len(load_templates(PROMPTS, "UCF101")) == 48 and len(load_templates(PROMPTS, "Kinetics700")) == 28
    assert len(load_section_classes(PROMPTS, "Birdsnap")) == 500 and load_templates(PROMPTS, "Birdsnap") == ["a photo of a {}, a type of bird."]
    assert "Cote d'Ivoire" in load_section_classes(PROMPTS, "Country211")
    assert load_templates(PROMPTS, "GTSRB")[0] == 'a zoomed in photo of a "{}" traffic sign.'
    # several names per class: the first one is used
    assert load_section_classes(PROMPTS, "FacialEmotionRecognition2013") == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]


@needs_assets
def test_missing_section_lists_available() -> None:
    with pytest.raises(EdgekitError, match="ImageNet") as info:
        load_templates(PROMPTS, "ImageNet")
    assert "CIFAR10" in str(info.value) and "openai_clip_prompts.md" in str(info.value)


def test_prompt_lists_are_never_executed(tmp_path) -> None:
    marker = tmp_path / "ran"
    md = tmp_path / "p.md"
    md.write_text(f"## Evil\n\n```bash\nclasses = ['a']\n\ntemplates = [__import__('pathlib').Path({str(marker)!r}).touch()]\n```\n")
    assert load_section_classes(md, "Evil") == ["a"]
    with pytest.raises(EdgekitError, match="templates"):
        load_templates(md, "Evil")
    assert not marker.exists()


# ---------------------------------------------------------------- labelled images


@needs_assets
def test_imagenet_sample_labels() -> None:
    images, labels, names = load_labelled_images(IMAGENET_CSV)
    assert len(images) == 1000 and all(p.is_file() for p in images)
    assert labels.dtype == np.int64 and np.array_equal(labels, np.arange(1000))
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[2] == "great white shark"
    assert images[0].name == "0000_n01440764.jpg"


def test_plain_csv_and_errors(tmp_path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_index,name\na.jpg,1,great_white_shark\nb.jpg,0,tench\nc.jpg,1,great_white_shark\n")
    images, labels, names = load_labelled_images(csv)
    assert [p.name for p in images] == ["a.jpg", "b.jpg", "c.jpg"] and labels.tolist() == [1, 0, 1]
    assert names == ["tench", "great white shark"]
    csv.write_text("file,label\na.jpg,0\n")
    with pytest.raises(EdgekitError, match="missing columns"):
        load_labelled_images(csv)
    csv.write_text("file,class_index,name\nmissing.jpg,0,tench\n")
    with pytest.raises(EdgekitError, match="not in"):
        load_labelled_images(csv)
    csv.write_text("file,class_index,name\na.jpg,2,tench\n")
    with pytest.raises(EdgekitError, match="no row"):
        load_labelled_images(csv)


# ---------------------------------------------------------------- COCO captions


@needs_assets
def test_coco_captions_real_subset() -> None:
    raw = json.loads(CAPTIONS.read_text())
    by_file = {im["file_name"]: im["id"] for im in raw["images"]}
    expected = {}
    for a in sorted(raw["annotations"], key=lambda a: a["id"]):
        expected.setdefault(a["image_id"], []).append(a["caption"].strip())

    images, captions, owner = load_coco_captions(CAPTIONS, [COCO / "images"])
    assert len(images) == 158 and len(captions) == len(owner) == 790
    both, captions2, owner2 = load_coco_captions(CAPTIONS, [COCO / "images", COCO / "calib_images"])
    assert len(both) == 267 and len(captions2) == 1335
    for paths, caps, own in ((images, captions, owner), (both, captions2, owner2)):
        assert [p.name for p in paths] == sorted(p.name for p in paths) and all(p.is_file() for p in paths)
        assert own.dtype == np.int64 and np.all(np.diff(own) >= 0) and set(own.tolist()) == set(range(len(paths)))
        assert set(Counter(own.tolist()).values()) == {5}
        for i, path in enumerate(paths):
            assert [c for c, o in zip(caps, own) if o == i] == expected[by_file[path.name]]
    assert all(c == c.strip() for c in captions2)


def test_coco_captions_errors(tmp_path) -> None:
    with pytest.raises(EdgekitError, match="not found"):
        load_coco_captions(tmp_path / "none.json", [tmp_path])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgekitError, match="not valid JSON"):
        load_coco_captions(bad, [tmp_path])
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(EdgekitError, match="file_name"):
        load_coco_captions(bad, [tmp_path])
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"id": 3, "image_id": 1, "caption": " a cat "}]}))
    with pytest.raises(EdgekitError, match="none of its 1 captioned images"):
        load_coco_captions(good, [tmp_path])
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert load_coco_captions(good, [tmp_path])[1] == ["a cat"]
