"""The experiment registry: one :class:`Experiment` entry per experiment, read by everything else.

``embtab experiment NAME`` (its list of names), :func:`embtab.experiments.run_experiments`,
:func:`~embtab.experiments.plot_results`, :func:`~embtab.experiments.render_report` and
:func:`~embtab.experiments.run_demo` look experiments up here, so a new experiment is one new
module that calls :func:`register` and one import line in ``embtab/experiments/__init__.py``
(docs/experiments.md shows a complete one).

Example::

    >>> from embtab.experiments import REGISTRY
    >>> [(e.label, e.name) for e in REGISTRY.values()][:3]
    [('E1', 'dims'), ('E1', 'dims-grid'), ('E1', 'posthoc')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["REGISTRY", "Experiment", "get", "register"]


@dataclass(frozen=True)
class Experiment:
    """One experiment as the CLI, the runner, the plots and the report see it.

    Attributes
    ----------
    name : str
        The CLI name and the ``"experiment"`` field of its results.
    label : str
        Its number in the report and the docs ("E1", ...); entries are listed in label order.
    title : str
        One line for the CLI's help.
    run : callable
        ``run(dataset, seeds, *, progress, session, **kwargs) -> results dict`` when
        ``needs_data``, else ``run(*, quick, progress, **kwargs)``.
    plot : callable or None
        ``plot(results, out_dir, prefix) -> list of Path``.
    section : callable
        ``section(results, plots) -> list of Markdown lines`` for the report.
    in_demo : bool
        Part of ``embtab demo``.
    needs_data : bool
        Takes a data set and seeds (and shares the runner's data set and model cache).
    check_dataset : callable or None
        ``check_dataset(spec)``: raises ``ValueError`` for a data set spec string the
        experiment cannot run on; the runner calls it before any experiment runs.
    check_overrides : callable or None
        ``check_overrides(train_overrides)``: raises ``ValueError`` for the runner's shared
        ``train_overrides`` (a dict, or None) when the experiment refuses one of them; the
        runner calls it before any experiment runs.
    """

    name: str
    label: str
    title: str
    run: Callable
    section: Callable
    plot: Callable | None = None
    in_demo: bool = False
    needs_data: bool = True
    check_dataset: Callable | None = None
    check_overrides: Callable | None = None


#: name -> :class:`Experiment`, in label order (E1, E2, ...).
REGISTRY: dict[str, Experiment] = {}


def register(entry: Experiment) -> Experiment:
    """Add (or replace) an entry; keeps :data:`REGISTRY` in label order. Returns the entry."""
    if not isinstance(entry, Experiment):
        raise TypeError(f"entry must be an Experiment; got {type(entry).__name__}")
    items = {**REGISTRY, entry.name: entry}
    REGISTRY.clear()
    REGISTRY.update(sorted(items.items(), key=lambda kv: (_number(kv[1].label), kv[0])))
    return entry


def get(name: str) -> Experiment:
    """The entry called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(REGISTRY)}"
                         ) from None


def _number(label: str) -> int:
    digits = "".join(ch for ch in label if ch.isdigit())
    return int(digits) if digits else 10**6
