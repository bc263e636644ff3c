"""``python -m laco`` is the ``laco`` command (handy under ``accelerate launch -m laco train ...``)."""

import sys

from .cli import main

sys.exit(main())
