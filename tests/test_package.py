import sys

import embtab

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

from conftest import REPO


def test_version_matches_pyproject():
    if tomllib is None:
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        expected = tomllib.load(f)["project"]["version"]
    assert embtab.__version__ == expected


def test_core_is_private_compiled_module():
    from embtab import _core

    assert _core.__version__ == embtab.__version__
    assert _core.__file__.endswith((".so", ".pyd"))
