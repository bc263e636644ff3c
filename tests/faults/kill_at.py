"""Run the ``laco`` command, SIGKILLing this process at the Nth call of one function: a kill at an exact point.

Usage: ``python tests/faults/kill_at.py laco.train.hf_trainer:LacoTrainer.training_step 7 train --config run.yaml``.
The target is looked up where the caller looks it up (patch ``laco.train.trainer:seal``, not the module it was
imported from). SIGKILL, not an exception: no ``finally`` block, atexit hook or buffered write runs, exactly as
when the OOM killer or a lost node stops a run.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's laco, as `python -m laco` here


def install(target: str, call: int) -> None:
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    def killer(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, killer)


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    from laco.cli import main

    sys.exit(main(sys.argv[3:]))
