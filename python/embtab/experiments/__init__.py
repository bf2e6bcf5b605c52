"""The popularity-bias experiments E1–E5: sweeps, results JSON, plots, a Markdown report.

One module per experiment, each registering an :class:`Experiment` entry in :data:`REGISTRY`
(:mod:`~embtab.experiments.registry`); the CLI, :func:`run_experiments`, :func:`plot_results`,
:func:`render_report` and :func:`run_demo` read the registry. docs/experiments.md defines the
experiments and shows how to add one.

=======================  ===========================================================
module                   what
=======================  ===========================================================
``dims``                 E1: embedding dimension sweep, collisionless tables, against the truth
``dims_grid``            E1 over the truth's rank and the Zipf exponent (generator v2)
``collisions``           E2: hashed item tables at m/n ∈ {1/16, 1/4, 1/2, 1} vs cuckoo
``budget``               E2 at equal memory: table designs per byte budget; the row-sharing mechanism
``stream``               E2 on a stream: table designs trained online as IDs keep arriving
``calibration``          E3: calibrated reranking over λ and C (also E5's calibrated arm)
``rerank_speed``         E4: the reranker's speed (a benchmark: the tools layer registers it)
``feedback``             E5: the feedback loop (recommend, accept, retrain), by arm
``session``              the data set, splits, model cache and baseline rows experiments share
``results``              results JSON (docs/results-schema.md) and the mean ± sd summary
``intervals``            mean, sd and 95% intervals over seeds; sentences that need them
``truth``                the oracle, relevance and user groups of a split (truth metrics)
``tuning``               lr, L2 and epochs picked on a validation split
``plots``, ``report``    what every plot and report section shares
``runner``               :func:`run_experiments`, :func:`run_demo`, :func:`plot_results`
=======================  ===========================================================

Each ``run_*`` function returns one results dict (the results.json schema, documented in
``docs/results-schema.md``)::

    {"experiment": "dims" | "collisions" | "calibration" | "rerank-speed" | "feedback",
     "dataset": {"name", "users", "items", "interactions", "top1pct_share"},
     "config": {...},            # what was swept and the training hyperparameters
     "rows": [ {...}, ... ]}     # one per (configuration, seed)

A row holds ``model`` ("mf", "most_popular", "random" or "mf+calibrated"), ``seed``, the
parameters of its configuration (``dim``; ``table`` = "cuckoo" | "hashed", ``rows_per_id`` =
m/n, the measured ``collision_share`` and ``collision_theory`` = 1 − e^(−n/m); ``lam`` and
``candidates``) and the metrics of :func:`embtab.metrics.evaluate` at k = 10 (``"recall@10"``,
``"arp@10"``, ..., ``"decile_recall@10"`` a list of 10 with ``null`` for an empty decile).

Example::

    >>> from embtab.experiments import REGISTRY, run_dims
    >>> [e.name for e in REGISTRY.values() if e.in_demo]
    ['dims', 'collisions', 'calibration', 'feedback']
    >>> res = run_dims("synthetic:n_users=60,n_items=80,interactions_per_user=8", seeds=1,
    ...                dims=(2, 4), train_overrides={"epochs": 1}, progress=False)
    >>> res["experiment"], sorted({r["model"] for r in res["rows"]})
    ('dims', ['mf', 'most_popular', 'oracle', 'random'])
"""

from embtab._research import ALPHA, K
from embtab.experiments.registry import REGISTRY, Experiment, register

# the experiments register themselves in label order: one import line per experiment
from embtab.experiments import dims  # noqa: I001  (E1)
from embtab.experiments import dims_grid  # (E1 over rank x Zipf, generator v2)
from embtab.experiments import collisions  # (E2)
from embtab.experiments import stream  # (E2 on a stream: IDs keep arriving)
from embtab.experiments import calibration  # (E3)
from embtab.experiments import rerank_speed  # (E4: registered by the tools layer)
from embtab.experiments import feedback  # (E5)
from embtab.experiments import posthoc  # (E1, post hoc: popularity calibration at equal exposure)
from embtab.experiments import budget  # (E2 at equal memory: table designs, the mechanism)
from embtab.experiments import personas  # (E6: multi-persona users, limited attention)

from embtab.experiments.calibration import (
    CANDIDATES,
    LAMBDAS,
    SCORE_SCALINGS,
    calibrated_lists,
    categories,
    heldout_miscalibration,
    minority_share,
    plot_calibration,
    run_calibration,
)
from embtab.experiments.collisions import FIXED_DIM, ROWS_PER_ID, plot_collisions, run_collisions
from embtab.experiments.dims import DIMS, plot_dims, run_dims
from embtab.experiments.feedback import run_feedback
from embtab.experiments.plots import plot_deciles
from embtab.experiments.report import render_report
from embtab.experiments.rerank_speed import run_rerank_speed
from embtab.experiments.results import jsonable, load_results, save_results, summarize
from embtab.experiments.runner import (
    EXPERIMENTS,
    demo_names,
    plot_results,
    run_demo,
    run_experiments,
)
from embtab.experiments.session import Session

__all__ = [
    "ALPHA",
    "CANDIDATES",
    "DIMS",
    "EXPERIMENTS",
    "FIXED_DIM",
    "K",
    "LAMBDAS",
    "REGISTRY",
    "ROWS_PER_ID",
    "SCORE_SCALINGS",
    "Experiment",
    "Session",
    "calibrated_lists",
    "categories",
    "demo_names",
    "heldout_miscalibration",
    "jsonable",
    "load_results",
    "minority_share",
    "plot_calibration",
    "plot_collisions",
    "plot_deciles",
    "plot_dims",
    "plot_results",
    "register",
    "render_report",
    "run_calibration",
    "run_collisions",
    "run_demo",
    "run_dims",
    "run_experiments",
    "run_feedback",
    "run_rerank_speed",
    "save_results",
    "summarize",
]
