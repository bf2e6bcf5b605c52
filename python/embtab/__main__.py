"""``python -m embtab``: the ``embtab`` command without an installed console script.

``python -m embtab ARGS`` runs :func:`embtab.cli.main` as the ``embtab`` script of
``pyproject.toml`` (``embtab = "embtab.cli:main"``) does, and exits with the status it returns
(2 for a mistake in the arguments or the data, with a one-line message). It is the way to the
command in a checkout used through ``PYTHONPATH=python``, where no ``embtab`` script is
installed. (In the tools layer with :mod:`embtab.cli`: ``tests/test_layers.py``.)
"""

import sys

from embtab.cli import main

if __name__ == "__main__":
    sys.exit(main())
