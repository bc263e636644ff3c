"""How images become ``pixel_values``: the encoder's own size, resize policy and normalisation.

An encoder is trained on images prepared one way, and reading them another way (ImageNet statistics on a SigLIP,
112 px on a 384 px CLIP) costs accuracy or fails outright. So :func:`encoder_transform` reads what the encoder's
own image processor says (its ``preprocessor_config.json``, next to the weights locally or on the hub) and the
user overrides single values. Three resize policies cover the encoders laco supports:

* ``squash``: resize the whole image to a square (SigLIP, AIMv2, ViT); a non-square image is stretched.
* ``shortest_edge``: resize the shorter side, keeping the aspect ratio, then crop the centre square
  (CLIP, DINOv2); a non-square image loses its edges, not its shape.
* ``pad``: pad to a square with the mean colour, then resize (``LlavaImageProcessor`` with ``do_pad``, as LLaVA-1.5
  was trained); a non-square image keeps all of its content and its shape.

``crop_fraction`` is the centre square's share of the resized side (DINOv2: 224 of 256 = 0.875; 1 = no crop), so an
overridden size keeps the encoder's proportions. Every image of a batch ends as ``size x size``: placeholders per
image are then one number, as LLaVA-style models need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import RESIZE_POLICIES
from ..pretrained import DINOV2_IMAGE_MEAN, DINOV2_IMAGE_SIZE, DINOV2_IMAGE_STD, DINOV2_NAME, preprocess_images

logger = logging.getLogger(__name__)

# PIL's resampling filters by name (HF image processors save them as PIL's integer codes).
RESAMPLING = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class ImageTransform:
    """Resize (``resize`` policy, ``resample`` filter) to ``size x size``, then normalise with ``mean`` / ``std``.

    The defaults are laco's offline DINOv2-S: ImageNet statistics and a square resize.
    """

    size: int = DINOV2_IMAGE_SIZE
    mean: tuple[float, float, float] = DINOV2_IMAGE_MEAN
    std: tuple[float, float, float] = DINOV2_IMAGE_STD
    resize: str = "squash"
    crop_fraction: float = 1.0
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "image mean"))
        object.__setattr__(self, "std", _triple(self.std, "image std"))
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"image size must be a whole number of pixels >= 1, got {self.size!r}.")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize policy {self.resize!r} is not one of {RESIZE_POLICIES}.")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must lie in (0, 1] (1: no crop), got {self.crop_fraction!r}.")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample {self.resample!r} is not one of {sorted(RESAMPLING)}.")
        if min(self.std) <= 0:
            raise ValueError(f"image std must be positive, got {self.std}.")

    @property
    def resized_side(self) -> int:
        """The side (squash) or shorter side (shortest_edge) an image is resized to before the centre crop."""
        return round(self.size / self.crop_fraction)

    def fit(self, image: Image.Image) -> Image.Image:
        """``image`` as the ``size x size`` RGB square the encoder sees, before normalisation."""
        image = image.convert("RGB")
        if self.resize == "pad":
            image = _pad_to_square(image, self.mean)
        side, width, height = self.resized_side, *image.size
        if self.resize in ("squash", "pad"):
            target = (side, side)
        elif width <= height:  # the shorter side becomes `side`; the longer one keeps the ratio (rounded down)
            target = (side, max(side, int(side * height / width)))
        else:
            target = (max(side, int(side * width / height)), side)
        if target != image.size:
            image = image.resize(target, Image.Resampling(RESAMPLING[self.resample]))
        if image.size == (self.size, self.size):
            return image
        left, top = (image.size[0] - self.size) // 2, (image.size[1] - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A normalised ``(len(images), 3, size, size)`` float32 tensor."""
        if not images:
            raise ValueError("an image transform needs at least one image.")
        return preprocess_images([self.fit(image) for image in images], self.size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> ImageTransform:
        """The transform a :meth:`to_dict` wrote (files from before the resize policy existed squash, as they did)."""
        fields = ("size", "mean", "std", "resize", "crop_fraction", "resample")
        return cls(**{key: settings[key] for key in fields if key in settings})

    def with_overrides(
        self,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: str | None = None,
    ) -> ImageTransform:
        """This transform with the values given replaced (``None`` keeps the encoder's)."""
        changes = {"size": size, "mean": mean, "std": std, "resize": resize}
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def _pad_to_square(image: Image.Image, mean: Sequence[float]) -> Image.Image:
    """``image`` centred on a square of its longer side, filled with the mean colour (what normalises to 0)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), tuple(int(value * 255) for value in mean))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _triple(values: Any, what: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = (values,) * 3
    values = tuple(float(value) for value in values)
    if len(values) != 3:
        raise ValueError(f"{what} needs one value per RGB channel (3), got {list(values)}.")
    return values  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------------
# The encoder's own settings


def transform_from_processor(settings: Mapping[str, Any], where: str = "the image processor") -> ImageTransform:
    """The :class:`ImageTransform` an HF image processor's settings describe (``to_dict()`` or its JSON file).

    Raises for settings laco cannot follow (no resize, a non-square target, a rescale other than 1/255), naming
    the key and the override that replaces it.
    """
    if settings.get("do_resize", True) is False:
        raise ValueError(f"{where} does not resize (do_resize=false); set model.image_size to the size to feed.")
    if settings.get("do_rescale", True) is False or abs(settings.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ValueError(
            f"{where} scales pixels by {settings.get('rescale_factor')} (do_rescale={settings.get('do_rescale')}); "
            "laco scales to [0, 1] (1/255) before normalising: set model.image_mean/image_std to match."
        )
    size, crop = settings.get("size"), settings.get("crop_size")
    cropped = bool(settings.get("do_center_crop")) and crop is not None
    shortest = size.get("shortest_edge") if isinstance(size, Mapping) else None
    if shortest is None and isinstance(size, int) and cropped:  # an old-style int size that CLIP-like processors crop
        shortest = size
    # LlavaImageProcessor's do_pad pads to a square; other processors' do_pad pads batches, which laco does not need
    padded = bool(settings.get("do_pad")) and str(settings.get("image_processor_type", "")).startswith("Llava")
    if shortest is not None:
        policy, side = ("pad" if padded else "shortest_edge"), int(shortest)
    else:
        policy, side = ("pad" if padded else "squash"), _square_side(size, "size", where)
    final = _square_side(crop, "crop_size", where) if cropped else side
    if settings.get("do_normalize", True):
        mean = settings.get("image_mean", DINOV2_IMAGE_MEAN)
        std = settings.get("image_std", DINOV2_IMAGE_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = {code: name for name, code in RESAMPLING.items()}.get(int(settings.get("resample", 3)), "bicubic")
    return ImageTransform(final, mean, std, policy, min(1.0, final / side), resample)


def _square_side(size: Any, key: str, where: str) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping) and "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ValueError(
                f"{where} resizes to {size['height']} x {size['width']} ({key}); laco feeds square images: "
                "set model.image_size to the side to use."
            )
        return int(size["height"])
    raise ValueError(f"{where} has a {key} laco cannot read ({size!r}); set model.image_size.")


def read_processor_settings(name_or_path: str | Path | None, **hub_kwargs: Any) -> dict[str, Any] | None:
    """The encoder's ``preprocessor_config.json`` (a local directory or a hub id already in the cache), or ``None``."""
    if not name_or_path or str(name_or_path) == DINOV2_NAME:
        return None
    local = Path(name_or_path)
    if local.is_dir():
        path = local / PROCESSOR_CONFIG
        return json.loads(path.read_text()) if path.is_file() else None
    from transformers.utils import cached_file

    path = cached_file(
        str(name_or_path),
        PROCESSOR_CONFIG,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    return json.loads(Path(path).read_text()) if path else None


def encoder_transform(
    source: str | Path | None,
    config_image_size: Any = None,
    *,
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str | None = None,
) -> ImageTransform:
    """The transform the encoder at ``source`` expects, with any of ``size``, ``mean``, ``std``, ``resize`` replaced.

    From the encoder's image processor when it has one; laco's offline ``dinov2-small`` (no processor) gets DINOv2's
    ImageNet statistics at 224 px; any other encoder without one gets its config's ``image_size``
    (``config_image_size``), a square resize and the ImageNet statistics, with a warning saying what to set.
    """
    settings = read_processor_settings(source)
    if settings is not None:
        base = transform_from_processor(settings, f"the image processor of {source}")
    elif source is not None and str(source) == DINOV2_NAME:
        base = ImageTransform()
    else:
        if config_image_size is None and size is None:
            raise ValueError(f"the encoder {source} has no image processor and no image_size; set model.image_size.")
        base = ImageTransform(size or _square_side(_as_size(config_image_size), "image_size", f"{source}'s config"))
        if mean is None or std is None:
            logger.warning(
                "%s has no %s: laco feeds it %d px squares normalised with the ImageNet mean/std. If it was "
                "trained otherwise, set model.image_mean, model.image_std and model.resize.",
                f"the encoder {source}" if source else "the encoder passed in",
                PROCESSOR_CONFIG,
                base.size,
            )
    return base.with_overrides(size, mean, std, resize)


def _as_size(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return {"height": value[0], "width": value[1]}
    return value
