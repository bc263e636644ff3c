"""What a dataset scan found: records skipped and why (with the fix), and the error a strict scan raises."""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_EXAMPLES = 5


class DataError(ValueError):
    """A data file or record that cannot be used as given; the message names the record and the fix."""


class MissingData(FileNotFoundError):
    """A data file or image folder that does not exist (a ``FileNotFoundError``, refused in one line by the CLI)."""


class SkipReason:
    """Why a record was skipped (the keys of :attr:`DatasetReport.skipped`)."""

    MALFORMED = "malformed"
    NO_IMAGE = "no image"
    MISSING_IMAGE = "missing image"
    OUTSIDE_FOLDER = "image outside image_folder"
    UNREADABLE_IMAGE = "unreadable image"
    IMAGE_TOO_LARGE = "image too large"
    IMAGE_TAGS = "wrong <image> tags"
    NO_ANSWER = "no answer"
    TOO_LONG = "too long"
    UNUSABLE = "unusable conversation"


FIXES = {
    SkipReason.MALFORMED: (
        "give each record 'conversations': a list of {'from': 'human'|'gpt', 'value': str} dicts, "
        "and 'image': a path (string) relative to image_folder, or a list of such paths"
    ),
    SkipReason.NO_IMAGE: "this model is image-conditioned; remove text-only records or pass strict=False to skip them",
    SkipReason.MISSING_IMAGE: "check image_folder (the record's image path is relative to it) or remove the record",
    SkipReason.OUTSIDE_FOLDER: (
        "give image paths relative to image_folder, or set data.allow_outside_image_folder=true if the paths are "
        "meant to leave it"
    ),
    SkipReason.UNREADABLE_IMAGE: "re-download or re-encode the image file, or remove the record",
    SkipReason.IMAGE_TOO_LARGE: "downscale the image file, or raise data.max_image_pixels",
    SkipReason.IMAGE_TAGS: (
        "put exactly one <image> tag per image of the record (in the order of 'image') in the human turns, none in "
        "answers and none after the last answer"
    ),
    SkipReason.NO_ANSWER: "add a non-empty gpt turn after the question",
    SkipReason.TOO_LONG: "raise max_length or shorten the conversation",
    SkipReason.UNUSABLE: "fix the conversation as the message says",
}


class RecordSkipped(Exception):
    """Internal: a record failed one check (``reason``), with a human-readable ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class DatasetReport:
    """What :class:`LlavaDataset` found in its JSON file.

    ``total`` counts the records in the file, ``examined`` those checked (fewer when ``limit`` stopped the scan
    early), ``used`` those kept, ``truncated`` the kept records whose text was cut at ``max_length``.
    ``skipped`` counts dropped records per reason and ``examples`` keeps a few of their ids per reason.
    """

    total: int = 0
    examined: int = 0
    used: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, reason: str, record_id: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < _MAX_EXAMPLES:
            ids.append(record_id)

    def summary(self) -> str:
        """One line for logs and CLI output."""
        text = f"{self.used} of {self.total} records used"
        if self.examined < self.total:
            text += f" (limit reached after {self.examined})"
        text += f", {self.num_skipped} skipped"
        if self.skipped:
            reasons = ", ".join(
                f"{count} {reason} (e.g. {', '.join(self.examples.get(reason, []))})"
                for reason, count in sorted(self.skipped.items(), key=lambda item: -item[1])
            )
            text += f": {reasons}"
        if self.truncated:
            text += f"; {self.truncated} used records truncated to max_length"
        return text
