"""Which errors the ``laco`` command answers in one line, and that line.

A refusal is the answer, not a crash: its message already names the value and the fix, so a traceback would only
bury it. The classes below are raised where the problem is found (data, checkpoints, runs, images, digests, the
family check); :func:`refusal_message` is consulted once, by :func:`laco.cli.main`. Anything else is a bug or an
environment problem laco has not met yet, and keeps its traceback. ``laco --debug ...`` keeps it for refusals too.
"""

from __future__ import annotations

import errno

# torch's zip writer reports a failed write (a full disk, a quota) through its C++ enforce macro, as a
# RuntimeError naming inline_container.cc, not as an OSError with an errno; its reader names the same file for a
# damaged archive, which is not a full disk, so only the writer's messages count
_TORCH_ARCHIVE = "inline_container.cc"
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter", "file write failed")
_WRITE_FAILURES = ("No space left on device", "StorageFull", "Disk quota exceeded")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def refusal_classes() -> tuple[type[BaseException], ...]:
    """The errors that refuse a request before (or instead of) doing the wrong thing."""
    from ..config import ConfigError
    from ..data import DataError, MissingData
    from ..data.images import ImageProblem
    from ..digests import DigestMismatch
    from ..harness.family import FamilyRefusal, NoCheckpoint
    from ..train.init_from import InitFromError
    from ..train.resume import ConfigMismatch, RunDirectoryBusy
    from ..weights import CheckpointMismatch, UnsafeWeights

    return (
        CheckpointMismatch,
        ConfigError,
        ConfigMismatch,
        DataError,
        DigestMismatch,
        FamilyRefusal,
        ImageProblem,
        InitFromError,
        MissingData,
        NoCheckpoint,
        RunDirectoryBusy,
        UnsafeWeights,
    )


def refusal_message(error: BaseException) -> str | None:
    """The one line for ``error``, or ``None`` if it is not a refusal (and should keep its traceback)."""
    if isinstance(error, refusal_classes()):
        # as written: the messages listed in docs/reliability.md are one line; a few (a changed config) list
        # one difference per line on purpose
        return str(error).strip()
    if _is_write_failure(error):
        return (
            f"a file could not be written: {_first_line(error)}. The disk (or quota) is full: free space where "
            "the run or output directory lives and run the same command again (a training run resumes from its "
            "last complete checkpoint)."
        )
    return None


def _is_write_failure(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return True
    if not isinstance(error, (RuntimeError, OSError)):
        return False
    text = str(error)
    torch_write = _TORCH_ARCHIVE in text and any(marker in text for marker in _TORCH_WRITE_FAILURES)
    return torch_write or any(marker in text for marker in _WRITE_FAILURES)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(".")


__all__ = ["refusal_classes", "refusal_message"]
