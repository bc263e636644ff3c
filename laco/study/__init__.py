"""The quality study: every compressor, at every depth, with and without LaCo's shortcut, on real tasks.

``laco study`` (or :func:`run_study`) trains each variant inside the real pretrained DINOv2-S against an
attention probe on real labelled images, over several seeds, and writes tables, JSON and plots.
"""

from .cli import main
from .grid import QUICK, StudyConfig, StudyVariant, load_study_config
from .runner import Study, collect_cells, missing_cells, run_study

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
