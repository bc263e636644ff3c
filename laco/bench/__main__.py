"""``python -m laco.bench``: the same as ``laco bench``."""

import sys

from . import main

sys.exit(main())
