"""Every ``>>>`` example in the docstrings of the installed embtab package runs and prints what
it shows (the package as imported: the working tree with PYTHONPATH=python, or the wheel)."""

import doctest
import importlib
import io
import pkgutil

import pytest

import embtab

MODULES = sorted(m.name for m in pkgutil.walk_packages(embtab.__path__, "embtab.")
                 if not m.name.endswith("._core")) + ["embtab"]


def _examples(name):
    mod = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(mod, name) if t.examples]


def test_the_walk_finds_the_modules_with_examples():
    with_examples = [n for n in MODULES if _examples(n)]
    assert {"embtab.data", "embtab.metrics", "embtab.rerank", "embtab.experiments",
            "embtab.experiments.dims", "embtab.table"} <= set(with_examples)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # an example that writes files writes here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    for test in _examples(name):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()
