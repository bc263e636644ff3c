"""The functions laco's easy-VQA lmms-eval tasks name in their YAML (``!function laco.harness.easyvqa_task.…``).

lmms-eval imports this module by its dotted name, so the task folder written by :mod:`laco.harness.tasks` needs
no ``utils.py`` copy beside it. It imports no lmms-eval code itself.

Scoring is ``laco eval``'s: an answer is right when ``laco.evaluate.normalize_answer`` (lower case, punctuation
and surrounding whitespace dropped) makes it equal to the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..evaluate import normalize_answer


class UnreadableImageError(OSError):
    """An image a task names is missing or is not an image PIL can decode."""


def load_image(path: str | Path, owner: str) -> Image.Image:
    """``path`` as an RGB image; ``owner`` says who needs it (e.g. "easy-VQA question test-000017") in errors."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(
            f"{owner}: image {path} does not exist. If the easy-VQA cache was removed, write the tasks again "
            "(`laco eval --write-tasks DIR`, or any `laco eval --suite` run does it)."
        )
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UnreadableImageError(
            f"{owner}: image {path} cannot be read ({error}); replace the file or remove the question."
        ) from error


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    """The question's one image."""
    return [load_image(doc["image"], f"easy-VQA question {doc['id']}")]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match after ``normalize_answer``, as ``laco eval`` scores it."""
    prediction = results[0] if results else ""
    return {"exact_match": float(normalize_answer(prediction) == normalize_answer(doc["answer"]))}
