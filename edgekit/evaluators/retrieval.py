"""Image-text retrieval recall (COCO protocol) on L2-normalized embeddings, and the COCO captions loader.

Ties: items are ranked by descending similarity with a stable rule -- among equal similarities the
earlier index ranks first, exactly as ``np.argsort(-sim, kind="stable")``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def stable_rank(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row of ``scores`` (R x M), the 0-based position of the first ``True`` of ``targets`` (R x M) in the
    stable descending order (ties: earlier column first). Every row needs at least one target."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    if not targets.any(axis=1).all():
        raise ValueError("every row needs at least one target")
    best = np.where(targets, scores, -np.inf).max(axis=1, keepdims=True)
    first = np.argmax(targets & (scores == best), axis=1)[:, None]
    before_tie = (scores == best) & (np.arange(scores.shape[1])[None, :] < first)
    return (scores > best).sum(axis=1) + before_tie.sum(axis=1)


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways, as fractions: ``i2t_R@k`` (an image hits if ANY of its captions is in its top-k
    texts), ``t2i_R@k`` (a caption hits if its image is in its top-k images), ``retrieval_mean_recall``.

    ``text_to_image[j]`` is the image row of caption ``j``; every image needs at least one caption.
    """
    img = np.asarray(image_emb, dtype=np.float64)
    txt = np.asarray(text_emb, dtype=np.float64)
    owner = np.asarray(text_to_image)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"need 2-D embeddings of equal width (got {img.shape} and {txt.shape})")
    if owner.shape != (txt.shape[0],) or not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"text_to_image must hold one integer per caption ({txt.shape[0]}), got {owner.dtype} {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise ValueError(f"text_to_image indices must lie in [0, {img.shape[0]})")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive (got {tuple(ks)})")
    sim = img @ txt.T  # (N_img, N_txt)
    own = owner[None, :] == np.arange(img.shape[0])[:, None]  # own[i, j]: caption j describes image i
    if not own.any(axis=1).all():
        raise ValueError(f"images {np.flatnonzero(~own.any(axis=1))[:10].tolist()} have no caption")
    i2t = stable_rank(sim, own)
    t2i = stable_rank(sim.T, own.T)
    out = {f"i2t_R@{k}": float((i2t < k).mean()) for k in ks}
    out.update({f"t2i_R@{k}": float((t2i < k).mean()) for k in ks})
    out["retrieval_mean_recall"] = float(np.mean(list(out.values())))
    return out


def load_coco_captions(annotations_json: Path, image_folders: list[Path]) -> tuple[list[Path], list[str], np.ndarray]:
    """Read a COCO captions json and keep the images found in ``image_folders`` (first folder wins).

    Returns image paths sorted by file name, their captions (stripped; ordered by image, then annotation
    id) and ``text_to_image`` (int64, one image row per caption). Images with no caption are dropped.
    """
    path = Path(annotations_json)
    if not path.is_file():
        raise EdgekitError("captions file not found", path, "pass a COCO captions json (e.g. captions_val2017.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = [(int(a["image_id"]), int(a["id"]), str(a["caption"]).strip()) for a in data["annotations"]]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"not valid JSON ({exc})", path, "pass a COCO captions json") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgekitError(f"not a COCO captions json (bad or missing field {exc})", path,
                           "it needs 'images' (id, file_name) and 'annotations' (image_id, id, caption)") from None
    captioned = {image_id for image_id, _, _ in anns}
    found: dict[str, tuple[int, Path]] = {}
    for image_id, name in files.items():
        if image_id not in captioned or name in found:
            continue
        for folder in image_folders:
            if (Path(folder) / name).is_file():
                found[name] = (image_id, Path(folder) / name)
                break
    if not found:
        raise EdgekitError(f"none of its {len(files)} captioned images is in {[str(f) for f in image_folders]}", path,
                           "pass the folders that hold the images named in the json")
    names = sorted(found)
    row = {found[name][0]: i for i, name in enumerate(names)}
    kept = sorted((row[image_id], ann_id, caption) for image_id, ann_id, caption in anns if image_id in row)
    return [found[name][1] for name in names], [c for _, _, c in kept], np.array([r for r, _, _ in kept], dtype=np.int64)
