"""What every plot shares: matplotlib (the ``experiments`` extra), saving, baselines, deciles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embtab.experiments.intervals import ci95_half_width
from embtab.experiments.results import find, seeds_of, summarize

__all__ = ["draw_baselines", "errorbar", "plot_deciles", "pyplot", "save_figure"]

#: What to install when matplotlib is missing.
EXTRA_HINT = "pip install 'embtab[experiments]'"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend.

    Raises
    ------
    ImportError
        matplotlib is not installed; the message names the ``experiments`` extra.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"embtab's plots need matplotlib, which is not installed: "
                          f"{EXTRA_HINT} (or pip install matplotlib)") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def num(v) -> float:
    """A results number as a float: NaN for ``None`` (a results file stores NaN as null,
    docs/results-schema.md), so that plots read saved results as they read fresh ones."""
    return float("nan") if v is None else float(v)


def save_figure(fig, path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parents created), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


def draw_baselines(ax, summary, metric):
    """Horizontal lines at the most-popular (dotted) and random (dashed) baselines."""
    for name, style in (("most_popular", ":"), ("random", "--")):
        b = find(summary, model=name)
        if b is not None and np.isfinite(b.get(metric, np.nan)):
            ax.axhline(b[metric], color="gray", linestyle=style, linewidth=1,
                       label=name.replace("_", "-"))


def errorbar(ax, x, summary_rows, metric, **kw):
    """``metric`` of summary rows at ``x``: the mean with its 95% interval over seeds."""
    y = [r[metric] for r in summary_rows]
    e = [ci95_half_width(r[metric + ":sd"], seeds_of(r, metric)) for r in summary_rows]
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, **kw)


def plot_deciles(results: dict, path) -> Path:
    """Per-popularity-decile recall@10 of each configuration (decile 0 = most popular)."""
    plt = pyplot()
    summ = summarize(results)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for r in summ:
        if r["model"] != "mf":
            continue
        label = (f"hashed m/n={r['rows_per_id']:g}" if r.get("table") == "hashed"
                 else f"cuckoo d={r['dim']}")
        ax.plot(range(10), r["decile_recall@10"], marker=".", label=label)
    ax.set_xlabel("training-popularity decile of the test item (0 = most popular)")
    ax.set_ylabel("recall@10 within decile")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"per-decile recall — {results['experiment']}, {results['dataset']['name']}",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
