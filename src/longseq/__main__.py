"""``python -m longseq`` = the ``longseq`` console script."""

import sys

from .cli import main

sys.exit(main())
