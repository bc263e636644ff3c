"""Small LLaVA-format fixtures: PNG images, single-turn records, and the tiny processor's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SIZE = 28
NUM_IMAGE_TOKENS = 4


def write_png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def qa_record(record_id: str | None, question: str, answer: str, image: str | None = "img.png") -> dict[str, Any]:
    """A single-turn LLaVA record (``record_id=None`` / ``image=None`` leave the key out)."""
    record: dict[str, Any] = {
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    }
    if record_id is not None:
        record["id"] = record_id
    if image is not None:
        record["image"] = image
    return record
