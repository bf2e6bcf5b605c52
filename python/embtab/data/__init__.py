"""Interaction data: a seeded power-law generator with planted structure, and loaders.

Every data set is an :class:`Interactions`: raw 64-bit user and item IDs (what embedding tables
see), a dense index space (users ``0..U-1``, items ``0..I-1``, what metrics and score matrices
use), the interaction pairs in that index space with optional weights and timestamps, the item
genres (categories) as a :class:`RowSets`, and, for synthetic data, the planted
:class:`GroundTruth` (true preference p(i|u) and each user's genre mix).

Modules: :mod:`~embtab.data.containers` (:class:`RowSets`, :class:`Interactions`),
:mod:`~embtab.data.truth` (the :class:`Truth` protocol, :class:`GroundTruth`),
:mod:`~embtab.data.synthetic` (:func:`power_law`), :mod:`~embtab.data.generator_v2`
(:func:`power_law_v2`, :class:`LatentTruth`: a truth of chosen rank with merit, exposure bias and
user groups; ``docs/experiments.md``), :mod:`~embtab.data.stream` (:func:`power_law_stream`,
:func:`time_windows`: items born and fading, users joining, over time windows),
:mod:`~embtab.data.loaders` and
:mod:`~embtab.data.split` (:func:`train_test_split`). Import from ``embtab.data``.

Sources, also reachable through :func:`load_dataset` spec strings (what the CLI passes):

=====================================  ============================================
``synthetic[:key=value,...]``          :func:`power_law` (keys are its arguments), or
                                       :func:`power_law_v2` when a key is one of its
                                       own (``rank``, ``merit``, ``exposure``, ...)
``stream[:key=value,...]``             :func:`power_law_stream` (a time-ordered stream)
``movielens:PATH``                     :func:`load_movielens` (any MovieLens layout)
``interactions:PATH[,categories=P]``   :func:`load_interactions` (``user item [weight]``)
=====================================  ============================================

Example::

    >>> from embtab.data import power_law, train_test_split
    >>> data = power_law(n_users=200, n_items=300, interactions_per_user=20, seed=0)
    >>> train, test = train_test_split(data, test_fraction=0.2, seed=0)
    >>> train.n_items == data.n_items and train.n_interactions + test.n_interactions \
== data.n_interactions
    True
"""

from embtab.data.containers import Interactions, RowSets
from embtab.data.generator_v2 import LatentTruth, power_law_v2
from embtab.data.loaders import MOVIELENS_GENRES, load_dataset, load_interactions, load_movielens
from embtab.data.split import train_test_split
from embtab.data.stream import StreamTruth, WindowTruth, power_law_stream, time_windows
from embtab.data.synthetic import power_law
from embtab.data.truth import GroundTruth, Truth

__all__ = [
    "MOVIELENS_GENRES",
    "GroundTruth",
    "Interactions",
    "LatentTruth",
    "RowSets",
    "StreamTruth",
    "Truth",
    "WindowTruth",
    "load_dataset",
    "load_interactions",
    "load_movielens",
    "power_law",
    "power_law_stream",
    "power_law_v2",
    "time_windows",
    "train_test_split",
]
