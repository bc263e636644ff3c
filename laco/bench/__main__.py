"""``python -m laco.bench``: the same as ``laco bench``."""

import sys

from .cli import main

sys.exit(main())
