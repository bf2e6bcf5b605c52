"""E2 ``collisions``: a hashed item table at m/n ∈ {1/16, 1/4, 1/2, 1} beside the cuckoo table.

All at d = 32 (Monolith; the hashing trick). docs/experiments.md states the protocol and what is
expected.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab._research import K
from embtab.data import Interactions
from embtab.experiments.plots import (
    draw_baselines,
    errorbar,
    plot_deciles,
    pyplot,
    save_figure,
)
from embtab.experiments.intervals import ci_text, direction_sentence, interval
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, model_label, table
from embtab.experiments.results import find, summarize
from embtab.experiments.session import (
    Progress,
    Session,
    check_sequence,
    baseline_rows,
    evaluate_lists,
    make_result,
    real_sweep,
    seed_list,
    session_for,
)
from embtab.train import collision_share, recommend

__all__ = ["FIXED_DIM", "ROWS_PER_ID", "contrasts", "findings", "plot", "plot_collisions", "run_collisions",
           "section", "tail_recall"]

ROWS_PER_ID = (1 / 16, 1 / 4, 1 / 2, 1.0)
#: The embedding dimension of E2 and E3.
FIXED_DIM = 32


def run_collisions(dataset: str | Interactions = "synthetic", seeds=3, *,
                   rows_per_id: Sequence[float] = ROWS_PER_ID, dim: int = FIXED_DIM,
                   train_overrides: dict | None = None, progress: bool = True,
                   session: Session | None = None) -> dict:
    """E2: item table hashed with m = round(rows_per_id · n_items) rows vs cuckoo, at ``dim``.

    Users stay collisionless (one row each) so that only item collisions differ. Each hashed
    row records the measured share of item IDs that share a row (``collision_share``) and the
    uniform-hashing expectation ``collision_theory`` = 1 − e^(−n/m). Arguments as
    :func:`run_dims`.
    """
    t0 = time.perf_counter()
    for i, v in enumerate(check_sequence(rows_per_id, "rows_per_id", "a sequence of numbers")):
        # (real_sweep's bound said "must be finite and in [0, inf]", though 0 is refused too)
        if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) \
                and not (math.isfinite(float(v)) and float(v) > 0.0):
            raise ValueError(f"rows_per_id must be > 0 and finite (a hashed table needs a "
                             f"row): rows_per_id[{i}] is {v!r}")
    rows_per_id = real_sweep(rows_per_id, "rows_per_id")   # types, an empty or repeated sweep
    seeds = seed_list(seeds)
    s = session_for(dataset, train_overrides, progress, session)
    rows = []
    bar = Progress(len(seeds) * (len(rows_per_id) + 1), "E2 collisions", progress)
    for seed in seeds:
        train, test = s.split(seed)
        rows += baseline_rows(s, seed)
        configs = [("cuckoo", 1.0)] + [("hashed", float(r)) for r in rows_per_id]
        for table, rpi in configs:
            cfg = s.config(dim=int(dim), table=table, rows_per_id=rpi, seed=seed)
            model = s.model(cfg, f"E2 {table} m/n={rpi:g} seed={seed}")
            col = collision_share(model, train)
            rows.append({"model": "mf", "seed": seed, "dim": int(dim), "table": table,
                         "rows_per_id": rpi, "collision_share": col["collision_share"],
                         "collision_theory": col["collision_theory"], "table_rows": col["rows"],
                         **evaluate_lists(recommend(model, train, K), train, test)})
            bar.tick()
    bar.close()
    return make_result("collisions", s, {"dim": int(dim), "rows_per_id": [float(r) for r in rows_per_id],
                                     "hashed": "items (users collisionless)", "seeds": seeds},
                   rows, t0)


def plot_collisions(results: dict, path) -> Path:
    """Metric vs m/n (E2) beside the cuckoo table, and measured collision share vs theory."""
    plt = pyplot()
    summ = summarize(results)
    hashed = sorted([r for r in summ if r.get("table") == "hashed"], key=lambda r: r["rows_per_id"])
    cuckoo = find(summ, model="mf", table="cuckoo")
    x = [r["rows_per_id"] for r in hashed]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, metric in zip(axes[:3], ("recall@10", "arp@10", "coverage@10")):
        errorbar(ax, x, hashed, metric, label="hashed")
        if cuckoo is not None:
            ax.axhline(cuckoo[metric], color="C1", label="cuckoo (collisionless)")
        draw_baselines(ax, summ, metric)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows per ID, m/n")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    ax = axes[3]
    grid = np.geomspace(min(x) / 1.5, max(x) * 1.5, 50) if x else np.array([1.0])
    ax.plot(grid, 1 - np.exp(-1 / grid), color="gray", label="theory 1 − e^(−n/m)")
    ax.plot(x, [r["collision_share"] for r in hashed], "o", color="C0", label="measured")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rows per ID, m/n")
    ax.set_title("share of item IDs sharing a row")
    ax.legend(fontsize=7)
    fig.suptitle(f"E2 collision sweep, d={results['config']['dim']} — "
                 f"{results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def tail_recall(row) -> float:
    """Mean recall over the five least popular deciles (5–9) with test items."""
    d = np.asarray(row["decile_recall@10"], dtype=np.float64)[5:]
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def _paired(rows, m_a: float, metric) -> dict:
    """Per seed, ``metric`` of the hashed table at m/n = ``m_a`` minus the cuckoo table's, as an
    :func:`interval` (``metric`` a key of the rows or a function of a row)."""
    get = metric if callable(metric) else (lambda r: r.get(metric))
    ref = {r["seed"]: get(r) for r in rows if r.get("model") == "mf" and r.get("table") == "cuckoo"}
    diffs = []
    for r in rows:
        if r.get("table") == "hashed" and r["rows_per_id"] == m_a and r["seed"] in ref:
            a, b = get(r), ref[r["seed"]]
            if a is not None and b is not None:
                diffs.append(a - b)
    return interval(diffs)


def _head_recall(row) -> float:
    """Mean recall over the two most popular deciles (0–1) with test items."""
    d = np.asarray(row["decile_recall@10"], dtype=np.float64)[:2]
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def contrasts(results: dict) -> list:
    """The paired per-seed differences E2's sentences rest on: each hashed table minus the
    cuckoo table (same seed, same split) on recall@10, arp@10, coverage@10, tail recall (deciles
    5–9) and head recall (deciles 0–1), each an :func:`interval`."""
    rows = results["rows"]
    out = []
    for m in sorted({r["rows_per_id"] for r in rows if r.get("table") == "hashed"}):
        for name, metric in (("recall@10", "recall@10"), ("arp@10", "arp@10"),
                             ("coverage@10", "coverage@10"), ("tail_recall", tail_recall),
                             ("head_recall", _head_recall)):
            out.append({"rows_per_id": m, "metric": name, "difference": _paired(rows, m, metric)})
    return out


def findings(results: dict) -> list:
    """The "what it shows" sentences of E2, each from the numbers: the measured collision share
    against theory, and each direction from a paired per-seed interval of hashed minus cuckoo
    (a direction only where the interval excludes 0; docs/experiments.md, "Intervals")."""
    summ = summarize(results)
    hashed = sorted([r for r in summ if r.get("table") == "hashed"], key=lambda r: r["rows_per_id"])
    cuckoo = find(summ, model="mf", table="cuckoo")
    if not hashed or cuckoo is None:
        return []
    lo, hi = hashed[0], hashed[-1]
    if len(hashed) > 1:
        out = [f"Measured collision share goes from {hi['collision_share']:.3f} at "
               f"m/n={hi['rows_per_id']:g} (theory {hi['collision_theory']:.3f}) to "
               f"{lo['collision_share']:.3f} at m/n={lo['rows_per_id']:g} (theory "
               f"{lo['collision_theory']:.3f})."]
    else:
        out = [f"Measured collision share at m/n={lo['rows_per_id']:g}: "
               f"{lo['collision_share']:.3f} (theory {lo['collision_theory']:.3f})."]
    c = {(x["rows_per_id"], x["metric"]): x["difference"] for x in contrasts(results)}
    for r in reversed(hashed):
        m = r["rows_per_id"]
        out.append(direction_sentence(
            c[(m, "recall@10")], f"At m/n={m:g}, the hashed table's recall@10",
            "is above the cuckoo table's", "is below the cuckoo table's",
            metric="hashed − cuckoo"))
    m = lo["rows_per_id"]
    out.append(direction_sentence(
        c[(m, "arp@10")], f"At m/n={m:g}, collisions", "raise arp@10 (more popular lists)",
        "lower arp@10 (less popular lists)", metric="hashed − cuckoo arp@10"))
    out.append(direction_sentence(
        c[(m, "coverage@10")], f"At m/n={m:g}, collisions", "raise coverage@10",
        "lower coverage@10", metric="hashed − cuckoo coverage@10"))
    tail, head = c[(m, "tail_recall")], c[(m, "head_recall")]
    out.append(direction_sentence(
        tail, f"At m/n={m:g}, tail recall (deciles 5–9)", "is above the cuckoo table's",
        "falls below the cuckoo table's", metric="hashed − cuckoo"))
    out.append(direction_sentence(
        head, f"At m/n={m:g}, head recall (deciles 0–1)", "is above the cuckoo table's",
        "falls below the cuckoo table's", metric="hashed − cuckoo"))
    return out


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E2's plots: metrics vs m/n with the collision share, and per-decile recall."""
    out = Path(out_dir)
    return [plot_collisions(results, out / f"{prefix}collisions.png"),
            plot_deciles(results, out / f"{prefix}collisions_deciles.png")]


def section(results: dict, plots=()) -> list:
    """E2's report section (Markdown lines)."""
    summ = summarize(results)
    lines = [("## E2 — hash collisions (hashed item table vs cuckoo, d = "
              f"{results['config']['dim']})"), "", dataset_line(results), ""]
    rows = [r for r in summ if r["model"] != "mf"] + [
        r for r in summ if r.get("table") == "cuckoo"] + sorted(
        [r for r in summ if r.get("table") == "hashed"], key=lambda r: -r["rows_per_id"])
    lines += table(
        rows, [("model", lambda r: r.get("table", model_label(r))),
               ("m/n", lambda r: f"{r['rows_per_id']:g}" if "rows_per_id" in r else ""),
               ("collision share (theory)",
                lambda r: (f"{r['collision_share']:.3f} ({r['collision_theory']:.3f})"
                           if "collision_share" in r else ""))],
        extra=[("tail recall (deciles 5–9)", lambda r: _tail_cell(results, r))])
    return finish_section(lines, findings(results), results, plots)


def _tail_cell(results: dict, summary_row: dict) -> str:
    """A configuration's tail recall as the mean [95% CI] of its per-seed values, the values
    the sentences' paired contrasts are made of (not the tail of the seed-averaged deciles)."""
    if "decile_recall@10" not in summary_row:
        return ""
    key = tuple(summary_row.get(k) for k in ("model", "table", "rows_per_id"))
    return ci_text(interval([tail_recall(r) for r in results["rows"]
                             if tuple(r.get(k) for k in ("model", "table", "rows_per_id")) == key]),
                   ".4f")


register(Experiment("collisions", "E2", "hash collisions: hashed item tables vs cuckoo",
                    run_collisions, section, plot, in_demo=True))
