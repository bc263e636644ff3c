"""The ``laco`` command: train, eval, generate, convert, bench, study.

Every subcommand's ``--help`` explains its options; configs are YAML files (see ``configs/``), and any config key
can be overridden with ``--set key.path=value``. A refusal (a bad input, a damaged checkpoint, a full disk; see
:mod:`laco.cli.refusals`) is one line on stderr and exit status 1; ``laco --debug COMMAND ...`` shows its
traceback too.
"""

from .arguments import non_negative_int, positive_int
from .main import DEBUG_FLAG, build_parser, main

__all__ = ["DEBUG_FLAG", "build_parser", "main", "non_negative_int", "positive_int"]
