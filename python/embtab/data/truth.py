"""The true preference p(i|u): the :class:`Truth` protocol and the planted :class:`GroundTruth`.

Code that needs the truth (the feedback loop's acceptance and oracle, oracle metrics) takes any
:class:`Truth`: the generator's planted :class:`GroundTruth`, or a model fitted on real data
(:class:`embtab.feedback.ModelTruth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["GroundTruth", "Truth"]


@runtime_checkable
class Truth(Protocol):
    """What a true preference model provides: p(i|u) over a dense user and item index space.

    Attributes
    ----------
    n_users, n_items : int
        Sizes of the index spaces (those of the :class:`~embtab.data.Interactions` it belongs to).

    Methods
    -------
    prob(users=None)
        Rows p(i|u), float64 [len(users), n_items], each summing to 1 (all users when ``None``).
    pair_prob(users, items)
        p(i|u) for parallel int arrays of users and items, float64 [n].

    Example::

        >>> from embtab.data import Truth, power_law
        >>> isinstance(power_law(n_users=20, n_items=30, interactions_per_user=5).truth, Truth)
        True
    """

    @property
    def n_users(self) -> int: ...

    @property
    def n_items(self) -> int: ...

    def prob(self, users=None) -> np.ndarray: ...

    def pair_prob(self, users, items) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class GroundTruth(Truth):
    """The planted preference model of a synthetic data set.

    A user ``u`` picks an interest genre ``g`` with probability ``user_mix[u, g]``, then an item
    of that genre with probability ``genre_item_prob[g, i]``::

        p(i|u) = sum_g user_mix[u, g] * genre_item_prob[g, i]
        genre_item_prob[g, i] = popularity[i]**beta * w(i, g) / Z_g

    where ``w(i, g) = 1/|genres(i)|`` if ``g`` is a genre of ``i`` else 0 (an item's genre weight
    split evenly over its genres) and ``Z_g`` normalises each genre row to sum 1. So p(i|u) is
    proportional to ``popularity(i)**beta * sum_g mix_u(g) w(i, g) / Z_g`` and sums to 1 over
    items for every user.

    Attributes
    ----------
    user_mix : ndarray of float64, shape [U, G]
        Each user's planted genre mix (rows sum to 1; 1-3 non-zero entries, e.g. 0.7/0.3).
    genre_item_prob : ndarray of float64, shape [G, I]
        p(i | genre g); rows sum to 1.
    popularity : ndarray of float64, shape [I]
        Zipf popularity weight ``rank(i)**-zipf_s`` (the most popular item has rank 1, weight 1).
    zipf_s, beta : float
        The Zipf exponent and the popularity exponent of the preference.

    Example::

        >>> from embtab.data import power_law
        >>> data = power_law(n_users=50, n_items=80, interactions_per_user=5, seed=1)
        >>> p = data.truth.prob([0, 1])          # shape [2, 80], rows sum to 1
        >>> bool(np.allclose(p.sum(axis=1), 1.0))
        True
    """

    user_mix: np.ndarray
    genre_item_prob: np.ndarray
    popularity: np.ndarray
    zipf_s: float
    beta: float

    @property
    def n_users(self) -> int:
        return self.user_mix.shape[0]

    @property
    def n_items(self) -> int:
        return self.genre_item_prob.shape[1]

    def prob(self, users=None) -> np.ndarray:
        """True preference rows p(i|u), float64 [len(users), I] (all users when ``None``).

        U x I may be big: pass blocks of users.
        """
        mix = self.user_mix if users is None else self.user_mix[np.asarray(users, np.int64)]
        return mix @ self.genre_item_prob

    def pair_prob(self, users, items) -> np.ndarray:
        """p(i|u) for parallel arrays of users and items, float64 [n], without forming rows."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.einsum("ng,gn->n", self.user_mix[users], self.genre_item_prob[:, items])

