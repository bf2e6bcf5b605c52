"""Every Python snippet in README.md runs as written (except the torchrun fragment)."""

import re

import pytest

from conftest import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if "init_process_group" not in b]


def test_readme_has_snippets():
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets save files into the working directory
    exec(compile(RUNNABLE[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
