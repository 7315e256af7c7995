"""The one image reader of edgekit: every image file (calibration, evaluation, samples, ``generate --image``) is
opened here, as 8-bit RGB, or refused with a one-line ``EdgekitError`` naming the file.

- Bit depth: 16-bit images (``I;16``, ``I;16B``, ``I;16L``, ``I``) are scaled to 8 bits (``v / 257``, rounded), not
  clipped to white; 32-bit float (``F``) images are refused (their value range is unknown).
- Modes: palette, grayscale, CMYK, YCbCr, LAB, HSV go to RGB by Pillow's conversion; an alpha channel (``RGBA``,
  ``LA``, ``PA``, a palette with transparency) is composited over the letterbox grey (114), so transparent pixels
  read as "no content" rather than whatever colour hides under alpha 0.
- Decompression bombs: Pillow's limit (``Image.MAX_IMAGE_PIXELS``, 89.5 megapixels) is kept, and an image above it
  is refused -- both above 2x the limit (Pillow's ``DecompressionBombError``) and between 1x and 2x (where Pillow
  only warns): no model here reads more than a few megapixels, and one rule is easier to state than two.
- Truncated, corrupt or non-image files: refused. EXIF orientation is not applied (COCO boxes are on the stored
  pixels, and no other edgekit path rotates images).
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekit.errors import EdgekitError

ALPHA_BACKGROUND = (114, 114, 114)  # the letterbox pad value: transparent pixels carry no content
_FIX = "remove the file or replace it with a valid 8- or 16-bit JPEG/PNG"
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, TypeError)


def _megapixels(message: str) -> str:
    found = re.search(r"\((\d+) pixels\)", message)
    return f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"


def _bomb(path: str | Path, exc: Exception) -> EdgekitError:
    limit = Image.MAX_IMAGE_PIXELS or 0
    side = int(limit**0.5)
    return EdgekitError(
        f"image of {_megapixels(str(exc))} is over Pillow's decompression-bomb limit ({limit / 1e6:.1f} megapixels)",
        path, f"resize it below {side}x{side} pixels (edgekit keeps Pillow's limit)",
    )


def _open(path: str | Path) -> Image.Image:
    """``Image.open`` with the bomb warning turned into an error (a lazy image: header read, pixels not yet)."""
    if not Path(path).is_file():
        raise EdgekitError("image file not found", path, "check the image path")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(path, exc) from None
        except UnidentifiedImageError:
            raise EdgekitError("not a readable image (unknown format)", path, _FIX) from None
        except _DECODE_ERRORS as exc:
            raise EdgekitError(f"not a readable image ({type(exc).__name__}: {exc})", path, _FIX) from None


def _refuse_float(mode: str, path: str | Path | None) -> None:
    if mode == "F":
        raise EdgekitError("32-bit float image: its value range is unknown", path, "save it as an 8- or 16-bit PNG or a JPEG")


def check_image(path: str | Path) -> tuple[int, int]:
    """Cheap header check (format, size under the bomb limit, a mode ``to_rgb`` converts): ``(width, height)``. Truncated
    pixel data is only found by ``open_rgb``."""
    with _open(path) as img:
        _refuse_float(img.mode, path)
        return img.size


def to_rgb(img: Image.Image, path: str | Path | None = None) -> Image.Image:
    """Any Pillow image as 8-bit RGB (see the module doc for bit depth and alpha)."""
    mode = img.mode
    if mode == "RGB":
        return img.convert("RGB")  # a loaded copy, independent of the file
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise EdgekitError(f"integer image values outside 0..65535 ({mode})", path, "save it as an 8- or 16-bit PNG")
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L").convert("RGB")
    _refuse_float(mode, path)
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Read an image file fully as 8-bit RGB, or raise ``EdgekitError`` naming the file (never a traceback)."""
    with _open(path) as img:
        try:
            img.load()
            return to_rgb(img, path)
        except EdgekitError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(path, exc) from None
        except _DECODE_ERRORS as exc:
            raise EdgekitError(f"not a readable image ({type(exc).__name__}: {exc})", path, _FIX) from None
