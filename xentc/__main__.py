"""``python -m xentc``: the command line (``info``, the default, and ``bench``)."""
import sys

from ._cli import main

sys.exit(main())
