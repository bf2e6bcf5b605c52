"""Shared helpers of the research layer (``data``, ``metrics``, ``train``, ``experiments``,
``feedback``); see ``docs/architecture.md``.

Private to the layer: the tools layer and users import the public modules instead. Each helper
here is the one definition of its formula or constant; modules of the research layer import it
rather than restating it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: The largest raw 64-bit ID, 2^64 - 1.
U64_MAX = 2**64 - 1


def as_u64(x, what) -> np.ndarray:
    """Raw IDs as uint64 (int64 values reinterpreted as their bit pattern).

    Raises ``TypeError`` naming ``what`` when ``x`` does not hold integers.
    """
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64).view(np.uint64)
    if a.dtype == object or a.size == 0:
        try:
            return np.asarray([int(v) & U64_MAX for v in a.ravel()],
                              dtype=np.uint64).reshape(a.shape)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{what} must be integer IDs (uint64 or int64); got dtype {a.dtype}")


# constants //////////////////////////////////////////////////////////////////////////////////

#: List length of every experiment and of the metrics' defaults (top-k, k = 10).
K = 10

#: Steck's smoothing of the list's category mix, q~ = (1 - ALPHA) q + ALPHA p (the reranker's
#: default ``alpha``); the ``miscalibration@k`` of docs/metrics.md uses it.
ALPHA = 0.01


# small numeric helpers //////////////////////////////////////////////////////////////////////


def mean(x) -> float:
    """Mean of ``x`` as a float; NaN for an empty input."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def nanmean(x) -> float:
    """Mean of the non-NaN values of ``x``; NaN when there are none."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def fmt(m, sd=None, digits: int = 4) -> str:
    """``m`` (and ``± sd`` when given and finite) with ``digits`` decimals; "–" for a missing
    or non-finite ``m``."""
    if m is None or (isinstance(m, float) and not math.isfinite(m)):
        return "–"
    s = f"{m:.{digits}f}"
    if sd is not None and isinstance(sd, float) and math.isfinite(sd):
        s += f" ± {sd:.{digits}f}"
    return s


def topk_indices(scores, k: int) -> np.ndarray:
    """Column indices of each row's ``min(k, n_cols)`` largest scores, best first, int64.

    ``scores`` is a 2-D torch tensor or NumPy array; ``torch.topk`` orders the row, so ties and
    ``-inf`` entries are ordered as it orders them (the models' and baselines' lists).
    """
    t = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(scores))
    k = min(k, t.shape[1])
    return torch.topk(t, k, dim=1, sorted=True).indices.numpy().astype(np.int64)


# a user's category mix //////////////////////////////////////////////////////////////////////


def category_mix(sets, item_dist, n_rows: int | None = None) -> np.ndarray:
    """Each row's mean category distribution over its items, float64 [n_rows, G].

    p(g|u) = Σ_{i ∈ S_u} w(i, g) / Σ_{i ∈ S_u} Σ_g' w(i, g') (docs/metrics.md); rows without
    category mass are all zero.

    Parameters
    ----------
    sets : tuple (rows, items) of int arrays [n], or bool array [n_rows, I]
        The items of each row as (row, item) pairs, or as a membership matrix.
    item_dist : RowSets [I, G] or float array [I, G]
        An item's categories: a RowSets means weight ``1/|genres(i)|`` on each of them (an
        item's weight split evenly), an array gives w(i, g) directly.
    n_rows : int
        Needed with the pairs form.

    Notes
    -----
    The pairs form sums each cell's weights in pair order (the same bits however the weights are
    stored); the matrix form sums with a matrix product (the feedback loop's consumed sets), whose
    last bits may differ from the pairs form's.
    """
    if isinstance(sets, np.ndarray) and sets.ndim == 2:
        w = item_dist if isinstance(item_dist, np.ndarray) else item_dist.split_weights()
        m = sets.astype(np.float64) @ w
    else:
        rows, items = (np.asarray(a, dtype=np.int64) for a in sets)
        if isinstance(item_dist, np.ndarray):
            r, c = np.nonzero(item_dist)
            counts = np.bincount(r, minlength=item_dist.shape[0])
            indptr = np.concatenate([[0], np.cumsum(counts)])
            genre, weight, G = c, item_dist[r, c], item_dist.shape[1]
        else:
            indptr, genre, G = item_dist.indptr, item_dist.indices, item_dist.n_cols
            weight = None
        per = indptr[items + 1] - indptr[items]
        flat = np.repeat(indptr[items] - np.cumsum(per) + per, per) + np.arange(per.sum())
        w = 1.0 / np.repeat(per, per) if weight is None else weight[flat]
        r = np.repeat(rows, per)
        m = np.bincount(r * G + genre[flat], weights=w,
                        minlength=n_rows * G).astype(np.float64, copy=False).reshape(n_rows, G)
    tot = m.sum(axis=1, keepdims=True)
    return np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
