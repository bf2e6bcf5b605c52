"""``python -m embtab``: the ``embtab`` command without an installed console script.

``python -m embtab ARGS`` runs :func:`embtab.cli.console_main` as the ``embtab`` script of
``pyproject.toml`` (``embtab = "embtab.cli:console_main"``) does, and exits with the status
of :func:`embtab.cli.main` (2 for a mistake in the arguments or the data, with a one-line
message). It is the way to the
command in a checkout used through ``PYTHONPATH=python``, where no ``embtab`` script is
installed. (In the tools layer with :mod:`embtab.cli`: ``tests/test_layers.py``.)
"""

from embtab.cli import console_main

if __name__ == "__main__":
    console_main()
