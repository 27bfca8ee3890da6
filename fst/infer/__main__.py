"""``python -m fst.infer``: see :mod:`fst.infer.cli`."""

import sys

from fst.infer.cli import main

sys.exit(main())
