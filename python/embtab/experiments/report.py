"""The Markdown report: one section per experiment, from its registry entry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embtab._research import fmt
from embtab.experiments.registry import REGISTRY

__all__ = ["TABLE_METRICS", "dataset_line", "finish_section", "model_label", "render_report",
           "table"]

#: The metric columns of the E1 and E2 tables.
TABLE_METRICS = ("recall@10", "ndcg@10", "arp@10", "tail_share@10", "coverage@10", "gini@10",
                 "miscalibration@10")


def table(rows, first_cols, metrics_=TABLE_METRICS, extra=None) -> list:
    """A Markdown table: ``first_cols`` (name, cell function) pairs, then mean ± sd of
    ``metrics_``, then ``extra`` columns."""
    head = [c for c, _ in first_cols] + list(metrics_) + [c for c, _ in (extra or [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f(r) for _, f in first_cols]
        cells += [fmt(r.get(m), r.get(m + ":sd")) for m in metrics_]
        cells += [f(r) for _, f in (extra or [])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_label(r):
    """The model name as the report writes it ("most-popular" for "most_popular")."""
    return r["model"].replace("_", "-")


def dataset_line(results) -> str:
    """The report line that describes a training experiment's data set and protocol."""
    d = results["dataset"]
    return (f"Dataset **{d['name']}** (`{d.get('spec', d['name'])}`): {d['users']:,} users, "
            f"{d['items']:,} items, {d['interactions']:,} interactions, top-1% items hold "
            f"{d['top1pct_share']:.1%} of interactions. Seeds {results['config'].get('seeds')}; "
            f"80/20 random split per user; k = 10; training: {results['config'].get('train')}.")


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
    """A Markdown report: per experiment, a mean ± sd table, plots and generated findings.

    Each results object is rendered by its registry entry's ``section``; results of an
    experiment that is not registered are left out. ``plots`` maps an experiment name to plot
    paths (relative links are written as given). The "what it shows" sentences are computed
    from the numbers (first vs last rows, the λ = 0 vs λ = 0.5 comparison), never fixed claims.
    """
    plots = plots or {}
    lines = [f"# {title}", ""]
    for res in results_list:
        entry = REGISTRY.get(res["experiment"])
        if entry is not None:
            lines += entry.section(res, plots.get(res["experiment"], []))
    return "\n".join(lines)
