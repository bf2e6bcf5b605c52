"""Sphinx configuration of embtab's documentation site.

Build (what .ci/run does, warnings as errors):
    pip install ".[docs]"
    sphinx-build -W --keep-going -c docs/site docs docs/_build/html
The source directory is docs/ itself, so the design notes (docs/*.md) are pages of the site
beside the user guide (docs/site/guide/) and the API reference (docs/site/api/), which autodoc
generates from the numpydoc docstrings of the installed (or PYTHONPATH) embtab.
"""

import embtab

project = "embtab"
author = "embtab developers"
copyright = "embtab developers"
release = version = embtab.__version__

root_doc = "site/index"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "img/**"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

myst_heading_anchors = 3
# Design notes link to source files (../python/..., ../cpp/...) that are not pages of the site.
# Schemas in the notes are JSON with "a" | "b" alternatives, which the JSON lexer rejects.
suppress_warnings = ["myst.xref_missing", "misc.highlighting_failure"]

html_theme = "alabaster"
html_title = f"embtab {release}"
html_theme_options = {"description": "Collisionless embedding tables, calibrated reranking, popularity-bias experiments"}
