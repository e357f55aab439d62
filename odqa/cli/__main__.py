"""``python -m odqa.cli``: the same as the ``odqa`` command."""

import sys

from odqa.cli import main

sys.exit(main())
