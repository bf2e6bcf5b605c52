"""Uncertainty over seeds: mean, sd and a Student-t 95% interval per metric, and sentences that
state a direction only when the interval excludes zero (docs/experiments.md, "Intervals and
sentences").

A results object's ``rows`` hold one row per (configuration, seed). :func:`summary_with_intervals`
groups them by configuration and returns, per numeric metric, ``{"mean", "sd", "ci95_low",
"ci95_high", "n"}``. The interval is mean ± t_{0.975, n−1} · sd / √n (Student t; no interval
for n < 2). A per-seed difference (``excess_arp@10`` is a row's arp@10 minus the oracle's on
the same split) gets a paired interval this way.

:func:`direction_sentence` turns one such entry into a sentence: it names a direction only
when the interval lies entirely above or below zero, and otherwise says there is no clear
direction.

Example::

    >>> rows = [{"model": "mf", "dim": 2, "seed": s, "x": v} for s, v in enumerate([1., 2., 3.])]
    >>> s = summary_with_intervals(rows, keys=("model", "dim"))[0]
    >>> s["model"], s["dim"], s["n"], s["x"]["mean"], round(s["x"]["ci95_high"], 3)
    ('mf', 2, 3, 2.0, 4.484)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["CI_NOTE", "ci95_half_width", "ci_text", "direction_sentence", "interval", "is_signed",
           "spec_apart", "student_t_975", "summary_with_intervals"]

# t_{0.975, df} for df = 1..30 (the 97.5% quantile of Student's t)
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
         2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830,
         2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.100922040,
         2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1).

    Exact to 9 digits for df <= 30 (table); above, the Cornish-Fisher expansion in 1/df
    (error below 1e-6).

    Example::

        >>> round(student_t_975(4), 4)
        2.7764
    """
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1; got {df!r}")
    df = int(df)
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def ci95_half_width(sd, n):
    """Half the width of the 95% interval, t_{0.975, n−1} · sd / √n; NaN for n < 2.

    A float for a scalar ``sd``; an array for an array (per column). ``n`` is the number of values it came from. Used where
    only a mean and sd survive (the :func:`embtab.experiments.results.summarize` rows).

    Example::

        >>> round(ci95_half_width(1.0, 3), 4)
        2.4841
    """
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"n must be an integer; got {n!r}")
    sd = np.asarray(sd, dtype=np.float64)
    half = np.full_like(sd, np.nan) if n < 2 else student_t_975(int(n) - 1) * sd / math.sqrt(n)
    return float(half) if half.ndim == 0 else half


def interval(values) -> dict:
    """``{"mean", "sd", "ci95_low", "ci95_high", "n"}`` of the finite entries of ``values``.

    sd has ddof = 1; the interval is mean ± t_{0.975, n−1} · sd / √n. With n = 1 the sd and the
    interval are NaN; with n = 0 everything is NaN. When every value is the same (sd 0, or below
    1e-12 of the largest |value| or of 1, whichever is larger: rounding), sd is 0 and the
    interval NaN: a quantity that does not vary with the seed (a discrete metric that
    coincides, windows the seed does not move, the difference of two sums of the same terms
    added in another order) gives no spread to measure a difference against, and no direction
    is stated from it.

    Example::

        >>> r = interval([1.0, 2.0, None, float("nan"), 3.0])
        >>> r["n"], r["mean"], r["sd"], round(r["ci95_low"], 4)
        (3, 2.0, 1.0, -0.4841)
    """
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    n = int(a.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "sd": nan, "ci95_low": nan, "ci95_high": nan, "n": 0}
    # values near the float limit are scaled by a power of 2 (exact): the sum and the squares
    # overflowed (two 1e308 gave mean inf)
    top = float(np.abs(a).max())
    scale = 2.0 ** (int(np.frexp(top)[1]) - 1) if top > 1e300 else 1.0   # |a| / scale < 2
    b = a / scale
    mean = float(b.mean() * scale)
    if n == 1:
        return {"mean": mean, "sd": nan, "ci95_low": nan, "ci95_high": nan, "n": 1}
    sd = float(b.std(ddof=1) * scale)
    if sd <= 1e-12 * max(float(np.abs(a).max()), 1.0):   # the same value on every seed
        return {"mean": mean, "sd": 0.0, "ci95_low": nan, "ci95_high": nan, "n": n}
    half = student_t_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def summary_with_intervals(rows: Sequence[dict], keys: Sequence[str],
                           skip: Sequence[str] = ("seed",)) -> list:
    """Per configuration, an :func:`interval` of every numeric (scalar) metric over its rows.

    Rows with equal values of ``keys`` (missing keys count as ``None``) form one configuration;
    configurations keep the order in which they first appear. Each output dict holds the
    configuration's ``keys`` (those present), ``n`` (rows) and, for each metric ``m`` that is a
    number (or ``None``) in the rows, ``m: {"mean", "sd", "ci95_low", "ci95_high", "n"}``.
    Lists and strings are not summarised; ``skip`` names other keys to leave out.
    """
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        entry = {k: v for k, v in zip(keys, key) if v is not None}
        entry["n"] = len(members)
        names: list = []
        for r in members:
            for m, v in r.items():
                if m in keys or m in skip or m in names or isinstance(v, bool):
                    continue
                if v is None or isinstance(v, (int, float, np.integer, np.floating)):
                    names.append(m)
        for m in names:
            entry[m] = interval([r.get(m) for r in members])
        out.append(entry)
    return out


#: Name prefixes and suffixes of the quantities that can be negative (differences, excesses
#: over a reference, ΔGAP). A table stars an interval that excludes 0 only on these: every other
#: metric of the reports (recall, nDCG, ARP, coverage, shares, counts) is never negative, so its
#: interval excluding 0 says nothing.
SIGNED_PREFIXES = ("excess_", "delta_gap")
SIGNED_SUFFIXES = ("_diff", "_difference")


#: What a report table's caption says about its cells (see :func:`is_signed`).
CI_NOTE = ("Cells: mean [95% CI] over seeds (Student t; with few seeds an interval can pass a "
           "metric's range, e.g. below 0 or above 1); * = the interval excludes 0, marked only "
           "on quantities that can be negative (excess_*, ΔGAP, differences).")


def is_signed(metric) -> bool:
    """Whether ``metric`` names a quantity that can be negative (see :data:`SIGNED_PREFIXES`);
    True for None (a quantity the caller did not name).

    Example::

        >>> is_signed("excess_arp@10"), is_signed("recall@10"), is_signed("exposure_diff")
        (True, False, True)
    """
    if metric is None:
        return True
    return str(metric).startswith(SIGNED_PREFIXES) or str(metric).endswith(SIGNED_SUFFIXES)


_FIXED_SPEC = re.compile(r"^([^.]*)\.(\d+)([f%])$")


def spec_apart(spec: str, x: float, ref: float = 0.0) -> str:
    """``spec`` with as many more decimals as it takes for ``x`` not to print as ``ref``.

    A bound that excludes a reference (0, or a target such as 50%) can round onto it: 0.0003
    prints as ``0.000`` with ``.3f`` and 0.5004 as ``50%`` with ``.0%``, and a cell or sentence
    would then show an interval that seems to reach the reference next to a claim that it
    excludes it. Fixed-point specs (``.3f``, ``+.4f``, ``.0%``, ...) get decimals added; any other
    spec, or an ``x`` equal to ``ref``, is returned unchanged.

    Example::

        >>> spec_apart(".3f", 0.0003), spec_apart(".0%", 0.5004, 0.5), spec_apart(".3f", 0.2)
        ('.4f', '.2%', '.3f')
    """
    m = _FIXED_SPEC.match(spec)
    if m is None or not (math.isfinite(x) and math.isfinite(ref)) or x == ref:
        return spec
    head, digits, kind = m.group(1), int(m.group(2)), m.group(3)

    def shown(v: float, d: int) -> float:
        return float(format(v, f"{head}.{d}{kind}").rstrip("%"))

    for d in range(digits, digits + 20):
        if shown(x, d) != shown(ref, d):
            return f"{head}.{d}{kind}"
    return spec


def ci_text(stat, spec: str = ".3f", missing: str = "–", *, ref: float | None = None) -> str:
    """An :func:`interval` entry as ``mean [low, high]`` (each formatted with ``spec``), the mean
    alone when there is no interval (n < 2, or the same value on every seed), ``missing`` when
    the mean is missing or not finite.

    With ``ref`` (the value a claim compares the interval with: 0 for a difference), an interval
    that excludes ``ref`` is printed with the decimals its deciding bound needs not to read as
    ``ref`` (:func:`spec_apart`): ``0.001 [0.0003, ...]`` would otherwise print ``[0.000, ...]``.

    Example::

        >>> ci_text({"mean": 0.5, "ci95_low": 0.25, "ci95_high": 0.75, "n": 3}, ".2f")
        '0.50 [0.25, 0.75]'
        >>> ci_text({"mean": 0.001, "ci95_low": 0.0003, "ci95_high": 0.0017, "n": 3}, ref=0.0)
        '0.0010 [0.0003, 0.0017]'
    """
    m = (stat or {}).get("mean")
    if m is None or not math.isfinite(m):
        return missing
    lo, hi = stat.get("ci95_low"), stat.get("ci95_high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return format(m, spec)
    if ref is not None and (lo > ref or hi < ref):
        spec = spec_apart(spec, lo if lo > ref else hi, ref)
    return f"{format(m, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def direction_sentence(stat: dict, subject: str, positive: str, negative: str, *,
                       metric: str = "", digits: int = 4) -> str:
    """A sentence on the sign of a quantity, or "no clear direction" when its interval holds 0.

    Parameters
    ----------
    stat : dict
        An :func:`interval` entry (``mean``, ``ci95_low``, ``ci95_high``, ``n``).
    subject : str
        What the quantity belongs to, starting the sentence ("At d = 2, the lists").
    positive, negative : str
        The predicate when the interval lies above / below 0 ("are more popular than the
        oracle's").
    metric : str
        Name of the quantity, quoted with its numbers.

    Returns
    -------
    str
        ``"{subject} {positive|negative} ({metric} = mean, 95% CI [low, high], n seeds)."``,
        or ``"{subject}: no clear direction ({metric} = mean, 95% CI [low, high] includes 0,
        n seeds)."`` (with "no interval" when n < 2).

    Example::

        >>> s = {"mean": 0.02, "ci95_low": 0.01, "ci95_high": 0.03, "n": 5}
        >>> direction_sentence(s, "The lists", "are up", "are down", metric="m")
        'The lists are up (m = 0.0200, 95% CI [0.0100, 0.0300], 5 seeds).'
        >>> direction_sentence({**s, "ci95_low": -0.01}, "The lists", "are up", "are down")
        'The lists: no clear direction (0.0200, 95% CI [-0.0100, 0.0300] includes 0, 5 seeds).'
        >>> direction_sentence({**s, "ci95_low": 0.00001}, "The lists", "are up", "are down")
        'The lists are up (2.00e-02, 95% CI [1.00e-05, 3.00e-02], 5 seeds).'
    """
    mean, lo, hi, n = stat.get("mean"), stat.get("ci95_low"), stat.get("ci95_high"), \
        stat.get("n", 0)
    name = f"{metric} = " if metric else ""
    f = f"{{:.{digits}f}}".format
    shown = [abs(x) for x in (mean, lo, hi) if x is not None and math.isfinite(x) and x != 0]
    if shown and max(shown) < 0.5 * 10.0 ** -digits:  # would print as 0.0000: significant digits
        f = "{:.2e}".format
    if mean is None or not math.isfinite(mean):
        return f"{subject}: no clear direction ({metric or 'value'} undefined)."
    ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    if not ok:
        if n and n > 1 and any(x is not None and math.isinf(x) for x in (lo, hi)):
            return (f"{subject}: no clear direction ({name}{f(mean)}, 95% CI unbounded, {n} "
                    "seeds).")
        if n and n > 1 and stat.get("sd") == 0.0:
            return (f"{subject}: no clear direction ({name}{f(mean)} on every one of {n} seeds: "
                    "no spread to form an interval).")
        return (f"{subject}: no clear direction ({name}{f(mean)}, no interval from {n} "
                f"seed{'s' if n != 1 else ''}).")
    decider = lo if lo > 0 else hi if hi < 0 else None
    if decider is not None and abs(decider) < 0.5 * 10.0 ** -digits:
        # the bound that excludes 0 would print as 0.0000 (or -0.0000): significant digits
        f = "{:.2e}".format
    ci = f"95% CI [{f(lo)}, {f(hi)}]"
    if lo > 0:
        return f"{subject} {positive} ({name}{f(mean)}, {ci}, {n} seeds)."
    if hi < 0:
        return f"{subject} {negative} ({name}{f(mean)}, {ci}, {n} seeds)."
    return f"{subject}: no clear direction ({name}{f(mean)}, {ci} includes 0, {n} seeds)."
