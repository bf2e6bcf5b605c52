"""The Markdown report: one section per experiment, from its registry entry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from embtab._research import fmt
from embtab.experiments.intervals import ci95_half_width
from embtab.experiments.registry import REGISTRY
from embtab.experiments.results import seeds_of

__all__ = ["TABLE_METRICS", "ci_cell", "dataset_line", "finish_section", "model_label",
           "render_report", "table"]

#: The metric columns of the E1 and E2 tables.
TABLE_METRICS = ("recall@10", "ndcg@10", "arp@10", "tail_share@10", "coverage@10", "gini@10",
                 "miscalibration@10")


def table(rows, first_cols, metrics_=TABLE_METRICS, extra=None) -> list:
    """A Markdown table: ``first_cols`` (name, cell function) pairs, then each of ``metrics_``
    as ``mean [95% interval]`` over the row's ``n`` seeds (:func:`ci_cell`), then ``extra``
    columns. ``rows`` are :func:`embtab.experiments.results.summarize` rows."""
    head = [c for c, _ in first_cols] + list(metrics_) + [c for c, _ in (extra or [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f(r) for _, f in first_cols]
        cells += [ci_cell(r.get(m), r.get(m + ":sd"), seeds_of(r, m), of=r["n"])
                  for m in metrics_]
        cells += [f(r) for _, f in (extra or [])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ci_cell(mean, sd, n, digits: int = 4, of: int | None = None) -> str:
    """``mean [low, high]``, the Student-t 95% interval from ``sd`` over ``n`` seeds; the mean
    alone for one seed (no interval), ``mean (no spread)`` when every seed gave the same value
    (sd 0 up to rounding: :func:`~embtab.experiments.intervals.interval` gives no interval
    then, and the sentences say so; a ``[x, x]`` here would read as a measured agreement), and
    "–" when the mean is missing. With ``of`` (the configuration's seeds) greater than ``n``
    (the metric was undefined on some), the cell ends with "(n of `of` seeds)"."""
    if mean is None or not math.isfinite(mean):
        return "–"
    part = "" if of is None or n >= of else f" ({n} of {of} seeds)"
    half = ci95_half_width(sd, n) if sd is not None and isinstance(sd, float) else float("nan")
    if not (isinstance(half, float) and math.isfinite(half)):
        return fmt(mean, digits=digits) + part
    if sd <= 1e-12 * max(abs(mean), 1.0):  # interval()'s rule, with the mean for the largest |value|
        return f"{mean:.{digits}f} (no spread)" + part
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]" + part


def model_label(r):
    """The model name as the report writes it ("most-popular" for "most_popular")."""
    return r["model"].replace("_", "-")


def dataset_line(results) -> str:
    """The report line that describes a training experiment's data set and protocol."""
    d = results["dataset"]
    return (f"Dataset **{d['name']}** (`{d.get('spec', d['name'])}`): {d['users']:,} users, "
            f"{d['items']:,} items, {d['interactions']:,} interactions, top-1% items hold "
            f"{d['top1pct_share']:.1%} of interactions. Seeds {results['config'].get('seeds')}; "
            f"80/20 random split per user; k = 10; training: {results['config'].get('train')}. "
            "Table cells: mean [95% Student-t interval over seeds: the split's and the "
            "model's randomness on this data set, not another draw of it].")


def finish_section(lines: list, text: Sequence[str], results: dict, plots: Sequence) -> list:
    """``lines`` followed by the plots, the "what it shows" sentences and the run time."""
    lines = list(lines) + [""]
    for p in plots:
        lines += [f"![{Path(p).stem}]({p})", ""]
    if text:
        lines += ["**What it shows.** " + " ".join(text), ""]
    lines.append(f"_Run time: {results['config'].get('seconds', '?')} s._")
    lines.append("")
    return lines


def render_report(results_list: Sequence[dict], plots: dict | None = None,
                  title: str = "embtab experiments") -> str:
    """A Markdown report: per experiment, a table of means with 95% intervals, plots and generated findings.

    Each results object is rendered by its registry entry's ``section``; results of an
    experiment that is not registered are left out. ``plots`` maps an experiment name to plot
    paths (relative links are written as given). The "what it shows" sentences are computed
    from the numbers by each experiment's findings function (a direction only where its interval
    excludes 0: :func:`~embtab.experiments.intervals.direction_sentence`), never fixed claims.
    """
    plots = plots or {}
    lines = [f"# {title}", ""]
    for res in results_list:
        entry = REGISTRY.get(res["experiment"])
        if entry is not None:
            lines += entry.section(res, plots.get(res["experiment"], []))
    return "\n".join(lines)
