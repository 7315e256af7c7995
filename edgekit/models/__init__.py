"""Model families: each knows how to load, export, pre/post-process and which nodes stay float."""

from __future__ import annotations

from edgekit.errors import EdgekitError


def get_family(name: str, **settings):
    """Instantiate the detector family called ``name`` (CLIP and VLM jobs load theirs in ``edgekit.pipelines``)."""
    if name == "yolo":
        from edgekit.models.yolo.family import YoloFamily

        return YoloFamily(**settings)
    raise EdgekitError(f"unknown model family {name!r}", fix="use one of: yolo")
