"""E2 ``collisions``: a hashed item table at m/n ∈ {1/16, 1/4, 1/2, 1} beside the cuckoo table.

All at d = 32 (Monolith; the hashing trick). docs/experiments.md states the protocol and what is
expected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab._research import K, fmt
from embtab.data import Interactions
from embtab.experiments.plots import (
    draw_baselines,
    errorbar,
    plot_deciles,
    pyplot,
    save_figure,
)
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, model_label, table
from embtab.experiments.results import find, summarize
from embtab.experiments.session import (
    Progress,
    Session,
    baseline_rows,
    evaluate_lists,
    make_result,
    seed_list,
    session_for,
)
from embtab.train import collision_share, recommend

__all__ = ["FIXED_DIM", "ROWS_PER_ID", "findings", "plot", "plot_collisions", "run_collisions",
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
    s = session_for(dataset, train_overrides, progress, session)
    seeds = seed_list(seeds)
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


def findings(summ) -> list:
    """The "what it shows" sentences from E2's summary rows (computed, never fixed claims)."""
    hashed = sorted([r for r in summ if r.get("table") == "hashed"], key=lambda r: r["rows_per_id"])
    cuckoo = find(summ, model="mf", table="cuckoo")
    if not hashed or cuckoo is None:
        return []
    lo, hi = hashed[0], hashed[-1]
    out = []
    out.append(
        f"Measured collision share goes from {hi['collision_share']:.3f} at m/n={hi['rows_per_id']:g} "
        f"(theory {hi['collision_theory']:.3f}) to {lo['collision_share']:.3f} at "
        f"m/n={lo['rows_per_id']:g} (theory {lo['collision_theory']:.3f}).")
    seq = [cuckoo["recall@10"]] + [r["recall@10"] for r in reversed(hashed)]
    if all(b < a for a, b in zip(seq, seq[1:])):
        rec = "falls at every step"
    elif lo["recall@10"] < cuckoo["recall@10"]:
        rec = "falls overall (not at every step)"
    else:
        rec = "does not fall"
    out.append(
        f"recall@10 {rec} from the cuckoo table down the m/n sweep: cuckoo "
        f"{cuckoo['recall@10']:.4f}, hashed "
        + ", ".join(f"m/n={r['rows_per_id']:g}: {r['recall@10']:.4f}" for r in reversed(hashed)) + ".")
    t_c, t_lo, t_hi = tail_recall(cuckoo), tail_recall(lo), tail_recall(hi)
    h_c = np.nanmean(np.asarray(cuckoo["decile_recall@10"], dtype=float)[:2])
    h_lo = np.nanmean(np.asarray(lo["decile_recall@10"], dtype=float)[:2])
    if all(map(math.isfinite, (t_c, t_lo, h_c, h_lo))) and t_c > 0 and h_c > 0:
        if t_lo >= t_c:
            verdict = "tail recall does not fall at all, so the tail is not the part hit hardest"
        elif t_lo / t_c < h_lo / h_c:
            verdict = "the tail is hit harder than the head"
        else:
            verdict = "the head is hit as hard as the tail or harder"
        out.append(
            f"Tail recall (mean of deciles 5–9): cuckoo {t_c:.4f}, m/n={hi['rows_per_id']:g} "
            f"{t_hi:.4f}, m/n={lo['rows_per_id']:g} {t_lo:.4f} ({t_lo / t_c:.0%} of cuckoo); head "
            f"recall (deciles 0–1) at m/n={lo['rows_per_id']:g} is {h_lo / h_c:.0%} of cuckoo's: "
            f"{verdict}.")
    direction = ("raise" if lo["arp@10"] > cuckoo["arp@10"] else "lower")
    out.append(f"Collisions {direction} arp@10 here: cuckoo {cuckoo['arp@10']:.4f} vs "
               f"{lo['arp@10']:.4f} at m/n={lo['rows_per_id']:g} "
               f"(coverage@10 {cuckoo['coverage@10']:.4f} vs {lo['coverage@10']:.4f}).")
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
        extra=[("tail recall (deciles 5–9)",
                lambda r: fmt(tail_recall(r)) if "decile_recall@10" in r else "")])
    return finish_section(lines, findings(summ), results, plots)


register(Experiment("collisions", "E2", "hash collisions: hashed item tables vs cuckoo",
                    run_collisions, section, plot, in_demo=True))
