"""Results as data: JSON I/O (docs/results-schema.md) and the mean ± sd summary over seeds."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from embtab import _core

__all__ = ["KEYS", "find", "group_key", "jsonable", "load_results", "mean_sd", "save_results", "seeds_of",
           "summarize"]


def jsonable(x):
    """``x`` with NumPy scalars and arrays as Python values and NaN/inf as ``None`` (JSON-ready)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    return x


def save_results(results, path) -> Path:
    """Write a results dict (or a list of them) as JSON; NaN/inf become ``null``.

    The file is replaced atomically (``embtab._core.atomic_write``): a failed save leaves the
    old file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n"
    _core.atomic_write(str(path), text.encode("utf-8"))
    return path


def load_results(path):
    """Read what :func:`save_results` wrote."""
    return json.loads(Path(path).read_text())


#: The configuration fields that group rows over seeds.
KEYS = ("model", "table", "dim", "rows_per_id", "lam", "candidates")


def group_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEYS)


def mean_sd(values):
    """Mean and sd (ddof 1; 0 for one value) of the non-missing values; per column for lists."""
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if a.ndim == 1:
        ok = a[~np.isnan(a)]
        if ok.size == 0:
            return float("nan"), float("nan")
        return float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=0), (np.nanstd(a, axis=0, ddof=1) if a.shape[0] > 1
                                           else np.zeros(a.shape[1]))


def summarize(results: dict) -> list:
    """Mean and sd over seeds per configuration: a list of dicts, in first-seen row order.

    Each dict has the configuration keys (``model``, ``table``, ``dim``, ``rows_per_id``,
    ``lam``, ``candidates``), ``n`` seeds, and for each metric ``m`` the pair ``m`` (mean) and
    ``m:sd``, and ``m:n`` the seeds where ``m`` is defined (:func:`seeds_of`);
    ``decile_recall@10`` becomes arrays. Extra per-row numbers (``collision_share``,
    ``collision_theory``) are averaged too.
    """
    groups: dict = {}
    for row in results["rows"]:
        groups.setdefault(group_key(row), []).append(row)
    out = []
    for key, rows in groups.items():
        agg = {k: v for k, v in zip(KEYS, key) if v is not None}
        agg["n"] = len(rows)
        names = [k for k, v in rows[0].items()
                 if k not in KEYS and k not in ("seed", "impl") and
                 (isinstance(v, (int, float, list)) or v is None)]
        for name in names:
            values = [r.get(name) for r in rows]
            m, sd = mean_sd(values)
            agg[name], agg[name + ":sd"] = m, sd
            if np.ndim(m) == 0:  # the seeds mean_sd used: defined (not None, not NaN)
                agg[name + ":n"] = int(sum(v is not None and not math.isnan(v) for v in values))
        out.append(agg)
    return out


def seeds_of(row: dict, metric: str) -> int:
    """How many seeds a :func:`summarize` row's ``metric`` mean and sd come from: its ``n``,
    less the seeds where the metric is undefined (NaN, e.g. miscalibration of users with no
    category); intervals use this count, not the row's ``n``."""
    return int(row.get(metric + ":n", row["n"]))


def find(summary, **kw):
    """The first summary row whose fields equal ``kw``, or ``None``."""
    for row in summary:
        if all(row.get(k) == v for k, v in kw.items()):
            return row
    return None
