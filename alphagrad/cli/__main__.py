"""``python -m alphagrad.cli``: the `alphagrad` command."""

import sys

from alphagrad.cli import main

sys.exit(main())
