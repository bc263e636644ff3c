"""Open an image file exactly one way, for the up-front record check, for training and for evaluation.

Checking a record with a cheaper reader than the one training uses lets files through that fail at a batch (a PNG
whose checksums are right but whose pixel data is corrupt), so :func:`load_rgb` is the only reader: it refuses
images over a pixel budget before decoding them, decodes every pixel, and converts 16-bit images by scaling
(PIL's own ``convert("RGB")`` clips 16-bit values to 255, so almost any 16-bit image turns white).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
"""The default pixel budget (``data.max_image_pixels``): any camera photo, not a 10000 x 10000 decompression bomb."""

# Modes PIL opens 16-bit greyscale files in; "I" (32-bit integers) is read as 16-bit data, as PNG and TIFF give it.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageProblem(ValueError):
    """An image file that cannot be used; ``reason`` is ``"unreadable"`` or ``"too large"``."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


def load_rgb(path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """The image at ``path`` as a fully decoded 8-bit RGB image; :class:`ImageProblem` if it cannot be."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageProblem(
                    f"{path} is {width} x {height} = {width * height:,} pixels, over the budget of {max_pixels:,} "
                    "(data.max_image_pixels); downscale the file, or raise the budget if you have the memory "
                    "(training resizes every image to model.image_size anyway).",
                    "too large",
                )
            image.load()  # decode every pixel now: a corrupt stream fails here, not at a training batch
            return _to_rgb(image)
    except ImageProblem:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for bad files
        raise ImageProblem(f"PIL cannot read {path}: {error}.") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        eight_bit = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255, 257 -> 1
        return Image.fromarray(eight_bit).convert("RGB")  # a 2-D uint8 array is an "L" image
    return image.convert("RGB")


def inside_folder(image: str, folder: str | Path | None = None) -> bool:
    """Whether a record's relative ``image`` path stays inside its image folder: no absolute path, no ``..`` out,
    and, given ``folder``, no symbolic link (of the file or of a folder on its way) that points out of it."""
    normal = os.path.normpath(image)
    if os.path.isabs(image) or normal == ".." or normal.startswith(".." + os.sep):
        return False
    if folder is None:
        return True
    # resolved, so a link inside the folder to /etc/passwd or ../../secret counts as outside, as its target is
    root = Path(folder).resolve()
    return Path(root / normal).resolve().is_relative_to(root)
