"""``python -m sockserve``: the same as the ``sockserve`` command."""

import sys

from .cli import main

sys.exit(main())
