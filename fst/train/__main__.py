"""``python -m fst.train``: see :mod:`fst.train.run`."""

from fst.train.run import main

main()
