"""The quality study: every compressor, at every depth, with and without LaCo's shortcut, on real tasks.

``laco study`` (or :func:`run_study`) trains each variant inside the real pretrained DINOv2-S against an
attention probe on real labelled images, over several seeds, and writes tables, JSON and plots.
"""

from __future__ import annotations

from pathlib import Path

from .grid import QUICK, StudyConfig, StudyVariant, load_study_config
from .report import write_report
from .runner import Study, collect_cells, missing_cells


def run_study(config: StudyConfig, progress: bool = True, docs: Path | None = None) -> dict:
    """Train every missing cell of ``config``, then write its tables, JSON and plots (and refresh ``docs``)."""
    cells = Study(config, progress=progress).run()
    return write_report(cells, Path(config.output_dir), docs)


def main(argv=None) -> int:
    """``laco study``; see :mod:`laco.study.cli`."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "QUICK",
    "Study",
    "StudyConfig",
    "StudyVariant",
    "collect_cells",
    "load_study_config",
    "main",
    "missing_cells",
    "run_study",
]
