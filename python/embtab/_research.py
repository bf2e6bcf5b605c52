"""Shared helpers of the research layer (``data``, ``metrics``, ``train``, ``experiments``,
``feedback``); see ``docs/architecture.md``.

Private to the layer: the tools layer and users import the public modules instead. Each helper
here is the one definition of its formula or constant; modules of the research layer import it
rather than restating it.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch

#: The largest raw 64-bit ID, 2^64 - 1.
U64_MAX = 2**64 - 1


def as_u64(x, what) -> np.ndarray:
    """Raw IDs as uint64 (int64 values reinterpreted as their bit pattern).

    An integer array converts bit for bit (signed values as int64). A list (or object array)
    of Python ints converts exactly whatever its values, also where NumPy alone would turn a
    mix of values >= 2^63 (or negative) and small ones into float64: a negative int reads as
    its two's complement, like int64, so ``-1`` and ``2**64 - 1`` are the same ID.

    Raises ``TypeError`` naming ``what`` when ``x`` does not hold integers, and ``ValueError``
    naming ``what`` and the value when an integer lies outside [-2^63, 2^64).
    """
    try:
        a = np.asarray(x)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{what} must be integer IDs (uint64 or int64); got {e}") from None
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64).view(np.uint64)
    if a.size == 0:
        return np.zeros(a.shape, dtype=np.uint64)
    if a.dtype == object or (a.dtype.kind == "f" and not isinstance(x, np.ndarray)):
        # Python ints that no single NumPy integer type holds: convert one by one, exactly
        vals = (a if a.dtype == object else np.asarray(x, dtype=object)).ravel()
        out = np.empty(vals.size, dtype=np.uint64)
        for n, v in enumerate(vals):
            if isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{what} must be integer IDs (uint64 or int64); got {v!r} at "
                                f"position {n}")
            try:
                iv = operator.index(v)
            except TypeError:
                raise TypeError(f"{what} must be integer IDs (uint64 or int64); got {v!r} "
                                f"({type(v).__name__}) at position {n}") from None
            if not -(2**63) <= iv <= U64_MAX:
                raise ValueError(f"{what}: ID {iv} at position {n} is outside [-2^63, 2^64) "
                                 "(a negative ID is read as int64, bit for bit)")
            out[n] = iv & U64_MAX
        return out.reshape(a.shape)
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


#: The list entry of a slot without a candidate: lists may be shorter than k, padded with -1.
PAD = -1


def topk_indices(scores, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, best first, int64 [n_rows, k].

    ``scores`` is a 2-D torch tensor or NumPy array; ``torch.topk`` orders the row, so ties are
    ordered as it orders them (the models' and baselines' lists). A score of ``-inf`` marks an
    excluded item (a training item, an unborn item): it is never listed. A row with fewer than
    k listable items (or a catalogue of fewer than k items) gives a **shorter list, padded with
    -1** (:data:`PAD`) after its last item; docs/metrics.md defines the metrics on such lists.
    A NaN score raises ``ValueError`` naming its row and column: it has no rank (``torch.topk``
    would list it first), and it comes from a diverged model.
    """
    t = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(scores))
    if t.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_rows, n_cols]; got shape {tuple(t.shape)}")
    if t.is_floating_point():
        nan = torch.isnan(t)
        if bool(nan.any()):
            r, c = (int(x) for x in torch.nonzero(nan)[0])
            raise ValueError(f"scores hold {int(nan.sum())} NaN value(s), the first at row {r}, "
                             f"column {c}: a NaN score has no rank (a diverged model?); scores "
                             f"must be numbers, -inf for an excluded item")
    out = np.full((t.shape[0], k), PAD, dtype=np.int64)
    kk = min(k, t.shape[1])
    if kk > 0:
        values, idx = torch.topk(t, kk, dim=1, sorted=True)
        idx = idx.numpy().astype(np.int64)
        idx[torch.isneginf(values).numpy()] = PAD
        out[:, :kk] = idx
    return out


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
