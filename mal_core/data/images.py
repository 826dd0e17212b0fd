"""One way to read an image everywhere (training crops, labelling, overlays, review page, pretraining, baselines).

Conventions:

* **EXIF orientation is applied.** Annotation tools (and image viewers) show a photo rotated by its EXIF
  ``Orientation`` tag, and the boxes are drawn on that view, so the pixels are transposed the same way before any
  box is cut out; the COCO ``height``/``width`` of such an image are those of the rotated view.
* **16-bit images are scaled to 8 bits** (value / 257, i.e. 65535 -> 255), not clipped: PIL's own conversion of a
  16-bit grey image to RGB saturates every value above 255, which turns a normal 16-bit image into a 0/255 one.
* **Decompression bombs are refused**: an image over PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``, about 89
  million pixels) is a :class:`~mal_core.errors.DataError` naming the file, as is any unreadable file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mal_core.errors import DataError

#: The EXIF tag of the orientation.
_ORIENTATION = 0x0112
#: PIL modes holding 16 (or more) bits per grey value.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _WIDE_GREY_MODES:
        grey = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":  # floating-point grey: taken as already in 0..255
        grey = np.clip(np.rint(np.nan_to_num(np.asarray(im))), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as an ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied and 16-bit values
    scaled; :class:`DataError` naming the file when it cannot be read or is a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.getexif().get(_ORIENTATION, 1) not in (1, None):
                    return _to_rgb(ImageOps.exif_transpose(im))
                return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {str(path)!r} is refused as a possible decompression bomb: {exc}", field=str(path),
                        hint="shrink the image, or remove it from the annotation file / image folder") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}", field=str(path)) from exc
