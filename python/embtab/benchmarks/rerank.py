"""Benchmark of embtab.rerank against NumPy and plain-Python versions of the same greedy.

``run()`` returns raw results (JSON-serialisable); ``format_markdown()`` renders the tables.
All timed implementations compute the same objective (see :func:`embtab.rerank.calibrated`)
and the run checks that their lists are identical before it reports any time.

Implementations:

* ``python``: plain Python loops, the whole KL recomputed for every candidate (experiment E4).
* ``numpy_a``: vectorised over candidates, looping over users and positions; recomputes the
  whole KL of every candidate list at each step (how it is usually written).
* ``numpy_b``: batched over users *and* candidates; at each step computes the log terms once per
  (user, genre, distinct item weight) and gathers them per candidate (the strongest NumPy form
  we know).
* ``embtab``: :func:`embtab.rerank.calibrated` (C++), 1 and 2 threads.
"""

from __future__ import annotations

import math
import numbers
import time
from functools import partial
from itertools import combinations

import numpy as np

from embtab import _core
from embtab import rerank as rr
from embtab.benchmarks._harness import machine, machine_line, time_calls

# workload #####################################################################################


def make_workload(U=10_000, C=500, G=20, n_items=5_000, k=10, history=50, seed=0):
    """A seeded workload: items with 1-3 genres (skewed genre popularity), users with a
    Dirichlet genre preference, targets from a 50-item history, and C candidates per user
    scored by genre affinity plus noise, in score order (as a first-stage top-C returns them)."""
    rng = np.random.default_rng(seed)
    gpop = 1.0 / np.arange(1, G + 1) ** 0.8
    gpop /= gpop.sum()
    n_gen = rng.integers(1, 4, size=n_items)
    genres = [rng.choice(G, size=m, replace=False, p=gpop) for m in n_gen]
    item_dist = rr.genre_distribution([g.tolist() for g in genres], n_genres=G)
    pref = rng.dirichlet(np.full(G, 0.3), size=U)
    by_genre = [np.nonzero(item_dist[:, g])[0] for g in range(G)]
    # history: genre ~ pref, then a uniform item of that genre
    cum = np.cumsum(pref, axis=1)
    r = rng.random((U, history))
    hg = np.minimum((r[:, :, None] > cum[:, None, :]).sum(axis=2), G - 1)
    hist = np.empty((U, history), dtype=np.int64)
    for g in range(G):
        m = hg == g
        hist[m] = by_genre[g][rng.integers(0, by_genre[g].size, size=int(m.sum()))]
    target = item_dist[hist].mean(axis=1)
    cand = np.argsort(rng.random((U, n_items)), axis=1)[:, :C].astype(np.int64)
    scores = 2.0 * np.einsum("ucg,ug->uc", item_dist[cand], pref) + rng.normal(0.0, 0.5, size=(U, C))
    order = np.argsort(-scores, axis=1, kind="stable")
    scores = np.take_along_axis(scores, order, axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    return {"scores": np.ascontiguousarray(scores), "candidates": np.ascontiguousarray(cand), "item_dist": item_dist,
                "target": target, "k": k, "G": G, "n_items": n_items}


# reference implementations ####################################################################


def rerank_python(scores, candidates, item_dist, target, k, lam=0.5, alpha=0.01):
    """Plain Python: for each user, step and candidate, the whole objective with math.log."""
    out = []
    dist = [list(map(float, row)) for row in item_dist] if not isinstance(item_dist, list) else item_dist
    for u in range(len(scores)):
        s = [float(x) for x in scores[u]]
        cand = [int(c) for c in candidates[u]]
        p = [float(x) for x in target[u]]
        G = len(p)
        support = [g for g in range(G) if p[g] > 0]
        logp = {g: math.log(p[g]) for g in support}
        qsum = [0.0] * G
        ssum = 0.0
        chosen = []
        taken = [False] * len(s)
        for t in range(k):
            n = t + 1
            best, bi = -math.inf, -1
            for c in range(len(s)):
                if taken[c]:
                    continue
                w = dist[cand[c]]
                kl = 0.0
                for g in support:
                    qt = (1 - alpha) * ((qsum[g] + w[g]) / n) + alpha * p[g]
                    kl += p[g] * (logp[g] - math.log(qt))
                v = (1 - lam) * (ssum + s[c]) - lam * kl
                if v > best:
                    best, bi = v, c
            chosen.append(cand[bi])
            taken[bi] = True
            ssum += s[bi]
            w = dist[cand[bi]]
            for g in range(G):
                qsum[g] += w[g]
        out.append(chosen)
    return np.array(out, dtype=np.int64)


def rerank_numpy_a(scores, candidates, item_dist, target, k, lam=0.5, alpha=0.01):
    """(a) NumPy, vectorised over candidates, looping over users and positions: at each step the
    whole KL of every candidate list is recomputed ([C, G] logs)."""
    U, C = scores.shape
    out = np.empty((U, k), dtype=np.int64)
    for u in range(U):
        s = scores[u].astype(np.float64)
        W = item_dist[candidates[u]]  # [C, G]
        p = target[u]
        sup = p > 0
        ps = p[sup]
        logp = np.log(ps)
        Ws = W[:, sup]
        qsum = np.zeros(ps.size)
        ssum = 0.0
        avail = np.ones(C, dtype=bool)
        for t in range(k):
            qt = (1 - alpha) * ((qsum + Ws) / (t + 1)) + alpha * ps
            kl = (ps * (logp - np.log(qt))).sum(axis=1)
            obj = (1 - lam) * (ssum + s) - lam * kl
            obj[~avail] = -np.inf
            c = int(np.argmax(obj))
            out[u, t] = candidates[u, c]
            avail[c] = False
            ssum += s[c]
            qsum += Ws[c]
    return out


def _padded_genres(candidates, item_dist):
    """Per candidate, its (genre, distinct-weight class) pairs padded to the max genres per item;
    padding points at genre G (an extra zero column)."""
    n_items, G = item_dist.shape
    weights = np.unique(item_dist[item_dist > 0])
    M = int((item_dist > 0).sum(axis=1).max())
    ig = np.full((n_items, M), G, dtype=np.int64)
    iw = np.zeros((n_items, M), dtype=np.int64)
    for i in range(n_items):
        g = np.nonzero(item_dist[i])[0]
        ig[i, :g.size] = g
        iw[i, :g.size] = np.searchsorted(weights, item_dist[i, g])
    return ig[candidates], iw[candidates], weights, M


def rerank_numpy_b(scores, candidates, item_dist, target, k, lam=0.5, alpha=0.01, block=1024):
    """(b) NumPy batched over users and candidates: per step, the log terms once per (user,
    genre, distinct weight), gathered per candidate from a padded genre list."""
    U, C = scores.shape
    G = item_dist.shape[1]
    out = np.empty((U, k), dtype=np.int64)
    for b0 in range(0, U, block):
        b1 = min(U, b0 + block)
        B = b1 - b0
        cg, cw, weights, M = _padded_genres(candidates[b0:b1], item_dist)  # [B, C, M]
        D = weights.size
        flat = (cg * D + cw).reshape(B, C * M)  # index into a [G*D + D] table (padding -> zeros)
        p = target[b0:b1]
        lp = lam * p  # [B, G]
        cwd = (1 - alpha) * weights  # [D]
        a = (1 - lam) * scores[b0:b1].astype(np.float64)
        W = np.zeros((B, G))
        rows = np.arange(B)
        table = np.zeros((B, (G + 1) * D))
        for t in range(k):
            o = (1 - alpha) * W + alpha * p * (t + 1)  # [B, G]
            with np.errstate(divide="ignore", invalid="ignore"):
                T = lp[:, :, None] * np.log(1.0 + cwd[None, None, :] / o[:, :, None])  # [B, G, D]
            T[p == 0] = 0.0
            table[:, :G * D] = T.reshape(B, G * D)
            kl = np.take_along_axis(table, flat, axis=1).reshape(B, C, M).sum(axis=2)
            v = a + kl
            c = np.argmax(v, axis=1)
            out[b0:b1, t] = candidates[b0:b1][rows, c]
            a[rows, c] = -np.inf
            for j in range(M):
                g = cg[rows, c, j]
                real = g < G
                W[rows[real], g[real]] += weights[cw[rows, c, j][real]]
    return out


def greedy_optimality(n_instances=300, C=8, k=4, G=4, lam=0.5, alpha=0.01, seed=0):
    """How often the greedy list is exactly optimal over all k-subsets of C candidates (tiny
    random instances), and the worst gap of its objective to the optimum."""
    rng = np.random.default_rng(seed)
    subsets = np.array(list(combinations(range(C), k)))
    optimal = 0
    gaps = []
    for _ in range(n_instances):
        genres = [rng.choice(G, size=rng.integers(1, 4), replace=False).tolist() for _ in range(C)]
        dist = rr.genre_distribution(genres, n_genres=G)
        raw = rng.dirichlet(np.full(G, 0.5))
        target = raw[None, :]
        scores = rng.normal(0.0, 0.3, size=(1, C))
        res = rr.calibrated(scores, dist, target, k, lam=lam, alpha=alpha, return_objective=True)
        q = dist[subsets].mean(axis=1)
        qt = (1 - alpha) * q + alpha * raw
        with np.errstate(divide="ignore"):
            kl = np.where(raw > 0, raw * (np.log(raw) - np.log(qt)), 0.0).sum(axis=1)
        obj = (1 - lam) * scores[0][subsets].sum(axis=1) - lam * kl
        best = float(obj.max())
        gap = best - float(res.objective[0])
        if gap <= 1e-12 * max(1.0, abs(best)):
            optimal += 1
            gap = 0.0
        gaps.append(gap)
    return {"n_instances": n_instances, "C": C, "k": k, "G": G, "lam": lam, "alpha": alpha, "optimal_share": optimal / n_instances,
                "worst_gap": max(gaps), "mean_gap": float(np.mean(gaps))}


# timing #######################################################################################


def _time(fn, repeats, warmup=1):
    """Median seconds of `repeats` calls of fn after `warmup` untimed ones (the first calls in a
    fresh process ran up to 35% slow here, while the memory of the workload's set-up settles);
    returns (median, all times, last output)."""
    t = time_calls(fn, repeats, warmup=warmup, keep_output=True, collect=False)
    return t.median, t.times, t.output


def _core_args(wl):
    indptr, genre, wclass, weights = rr.ItemDistribution(wl["item_dist"]).csr
    return indptr, genre, wclass, weights


def run(quick: bool = False, num_threads=(1, 2), seed=0) -> dict:
    """Run the rerank benchmark; returns raw results (JSON-serialisable).

    Parameters
    ----------
    quick : bool
        Smaller sizes and fewer repeats (a smoke run, ~10 s).
    num_threads : tuple of int
        Thread counts for embtab.
    seed : int
        Workload seed.

    Raises ValueError, before anything runs, when ``num_threads`` is empty or holds a count
    under 1 (0 failed half-way through, in ``torch.set_num_threads``).
    """
    num_threads = tuple(num_threads)
    if not num_threads or any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1
                              for t in num_threads):
        raise ValueError(f"num_threads must be a non-empty sequence of ints >= 1, got "
                         f"{num_threads!r}")
    U = 2_000 if quick else 10_000
    C, G, k, lam = 500, 20, 10, 0.5
    reps = 3 if quick else 7
    # the headline timings (embtab, shuffled rows, NumPy (a)): more repeats, so that a burst of
    # slow calls on a shared machine (seen lasting 2-5 calls) moves their median less
    reps_main = 3 if quick else 15
    users_a = 50 if quick else 200
    users_py = 2 if quick else 5
    wl = make_workload(U=U, C=C, G=G, k=k, seed=seed)
    s, cand, dist, tgt = wl["scores"], wl["candidates"], wl["item_dist"], wl["target"]
    res = {"machine": machine(), "config": {"U": U, "C": C, "G": G, "k": k, "lam": lam, "alpha": 0.01, "n_items": wl["n_items"],
                                               "genres_per_item": "1-3", "repeats": reps, "repeats_main": reps_main, "users_numpy_a": users_a,
                                               "users_python": users_py, "quick": quick, "seed": seed}}
    # embtab, threads: the thread counts take turns (one timed call each per round, the order
    # rotating), so that a slow spell of a shared host falls on every count alike; the ratio
    # between two counts is also taken round by round (bench/README.md, "Reranking on an
    # AVX2-only CPU": on a host whose speed flipped between two levels, blocks of 15 calls per
    # count moved the 2-thread ratio from 1.65x to 1.9x)
    emb = {}
    lists = None
    calls = {nt: (lambda nt=nt: rr.calibrated(s, dist, tgt, k, lam=lam, candidates=cand, num_threads=nt))
             for nt in num_threads}
    times = {nt: [] for nt in num_threads}
    for nt in num_threads:
        out = calls[nt]()  # the untimed warm-up call, and the lists every count must return
        if lists is None:
            lists = out
        assert np.array_equal(out, lists), "embtab output differs across thread counts"
    order = list(num_threads)
    for r in range(reps_main):
        for nt in order[r % len(order):] + order[:r % len(order)]:
            times[nt].append(time_calls(calls[nt], 1, collect=False).median)
    for nt in num_threads:
        med = float(np.median(times[nt]))
        emb[str(nt)] = {"seconds": med, "all": times[nt], "us_per_user": med / U * 1e6, "users_per_s": U / med}
    if 1 in times:
        for nt in num_threads:
            if nt != 1:
                emb[str(nt)]["speedup_by_round"] = float(np.median(np.array(times[1]) / np.array(times[nt])))
    res["embtab"] = emb
    # the same rows with candidates shuffled (full scan: no score-order bound)
    rng = np.random.default_rng(seed + 7)
    perm = np.argsort(rng.random(s.shape), axis=1)
    s_sh = np.ascontiguousarray(np.take_along_axis(s, perm, axis=1))
    c_sh = np.ascontiguousarray(np.take_along_axis(cand, perm, axis=1))
    med, ts, out = _time(lambda: rr.calibrated(s_sh, dist, tgt, k, lam=lam, candidates=c_sh, num_threads=1), reps_main)
    res["embtab_shuffled"] = {"seconds": med, "all": ts, "us_per_user": med / U * 1e6, "users_per_s": U / med,
                                  "identical": bool(np.array_equal(out, lists))}
    # numpy (b) on all users
    med_b, ts_b, out_b = _time(lambda: rerank_numpy_b(s, cand, dist, tgt, k, lam), max(1, reps // 2))
    res["numpy_b"] = {"seconds": med_b, "all": ts_b, "us_per_user": med_b / U * 1e6, "users": U,
                          "identical": bool(np.array_equal(out_b, lists))}
    # numpy (a) on a subset of users
    sub = slice(0, users_a)
    med_a, ts_a, out_a = _time(lambda: rerank_numpy_a(s[sub], cand[sub], dist, tgt[sub], k, lam), reps_main)
    res["numpy_a"] = {"seconds": med_a, "all": ts_a, "us_per_user": med_a / users_a * 1e6, "users": users_a,
                          "identical": bool(np.array_equal(out_a, lists[sub]))}
    # plain Python on a few users
    subp = slice(0, users_py)
    dl = [list(map(float, row)) for row in dist]
    med_p, _, out_p = _time(lambda: rerank_python(s[subp], cand[subp], dl, tgt[subp], k, lam), 1)
    res["python"] = {"seconds": med_p, "us_per_user": med_p / users_py * 1e6, "users": users_py,
                         "identical": bool(np.array_equal(out_p, lists[subp]))}
    # per-user latency: one core call per user (CSR prebuilt, no Python validation)
    indptr, genre, wclass, weights = _core_args(wl)
    n_lat = 300 if quick else 2000
    lat = []
    for u in range(n_lat):
        su, cu, tu = s[u:u + 1], cand[u:u + 1], tgt[u:u + 1]
        t0 = time.perf_counter()
        _core.rerank_calibrated(su, cu, indptr, genre, wclass, weights, tu, k, lam, 0.01, 1, False)
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat) * 1e6
    res["latency_us"] = {"users": n_lat, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                             "note": "one _core call per user (item CSR prebuilt), 1 thread; includes the pybind11 "
                                  "call and the per-call O(n_items) bounds check of the item CSR"}
    # per-user latency through the public API: the raw dense matrix, scipy CSR, ItemDistribution
    n_api = 100 if quick else 500
    api = {}
    try:
        import scipy.sparse as sps
        forms = [("dense ndarray, the same each call", dist), ("scipy CSR", sps.csr_matrix(dist))]
    except ImportError:  # scipy is optional
        forms = [("dense ndarray, the same each call", dist)]
    forms.append(("ItemDistribution", rr.ItemDistribution(dist)))
    # five equal dense arrays in turn: more than calibrated's reuse keeps (4), so every call
    # checks and converts its matrix, as it did before the reuse existed
    rotating = [np.array(dist, order="C") for _ in range(5)]
    forms.append(("dense ndarray, 5 in turn (checked every call)", rotating))
    for name, d in forms:
        lat_api = []
        for u in range(n_api):
            su, cu, tu = s[u:u + 1], cand[u:u + 1], tgt[u:u + 1]
            du = d[u % len(d)] if isinstance(d, list) else d
            t0 = time.perf_counter()
            rr.calibrated(su, du, tu, k, lam=lam, candidates=cu, num_threads=1)
            lat_api.append(time.perf_counter() - t0)
        lat_api = np.array(lat_api) * 1e6
        api[name] = {"p50": float(np.percentile(lat_api, 50)), "p99": float(np.percentile(lat_api, 99))}
    res["latency_api_us"] = {"users": n_api, "forms": api}
    # floors: one pass over the score matrix; the C++ kernel's own count of work
    med_pass, _, _ = _time(lambda: s.max(axis=1), reps)
    res["score_pass"] = {"seconds": med_pass, "note": "numpy max over the [U, C] float64 score matrix"}
    nnz = (dist > 0).sum(axis=1)[cand]  # genres per candidate
    width = int((dist > 0).sum(axis=1).max())
    present = np.unique(np.nonzero(dist)[1] * 1000 + np.unique(dist[dist > 0], return_inverse=True)[1])
    keys_g = present // 1000
    logs = int(k * (tgt[:, keys_g] > 0).sum())
    n_entries = int(present.size)
    med_full, _, _ = _time(lambda: _core._testing.rerank_work_floor(U, C, k, width, n_entries, False, 1), reps)
    med_logs, _, _ = _time(lambda: _core._testing.rerank_work_floor(U, C, k, width, n_entries, True, 1), reps)
    res["floor"] = {"full_scan_seconds": med_full, "logs_only_seconds": med_logs, "n_entries": n_entries,
                        "note": "C++ kernel with only the per-step logs (n_entries per step) and a full scan of "
                             "k*C*width packed table gathers + argmax, 1 thread, no set-up"}
    res["work"] = {"gathers": int(k * nnz.sum()), "padded_gathers": int(k * U * C * width), "logs": logs,
                       "mean_genres_per_candidate": float(nnz.mean()), "width": width}
    # scaling sweeps (1 thread)
    sweep_u = []
    for uu in ([500, 1000, 2000] if quick else [1250, 2500, 5000, 10_000]):
        med, _, _ = _time(lambda uu=uu: rr.calibrated(s[:uu], dist, tgt[:uu], k, lam=lam, candidates=cand[:uu],
                                                      num_threads=1), reps)
        sweep_u.append({"U": uu, "C": C, "seconds": med, "ns_per_user_candidate": med / (uu * C) * 1e9})
    sweep_c = []
    for cc in ([100, 250, 500] if quick else [125, 250, 500, 1000]):
        wl2 = wl if cc == C else make_workload(U=min(U, 5000), C=cc, G=G, k=k, seed=seed + 1)
        uu = min(U, 5000)
        s2, c2, t2 = wl2["scores"][:uu], wl2["candidates"][:uu], wl2["target"][:uu]
        med, _, _ = _time(partial(rr.calibrated, s2, wl2["item_dist"], t2, k, lam=lam, candidates=c2,
                                  num_threads=1), reps)
        perm = np.argsort(np.random.default_rng(seed + cc).random(s2.shape), axis=1)
        s2s = np.ascontiguousarray(np.take_along_axis(s2, perm, axis=1))
        c2s = np.ascontiguousarray(np.take_along_axis(c2, perm, axis=1))
        med_sh, _, _ = _time(partial(rr.calibrated, s2s, wl2["item_dist"], t2, k, lam=lam, candidates=c2s,
                                     num_threads=1), reps)
        sweep_c.append({"U": uu, "C": cc, "seconds": med, "ns_per_user_candidate": med / (uu * cc) * 1e9,
                            "shuffled_seconds": med_sh, "shuffled_ns_per_user_candidate": med_sh / (uu * cc) * 1e9})
    res["sweep_users"] = sweep_u
    res["sweep_candidates"] = sweep_c
    # top-k (first stage)
    res["topk"] = bench_topk(quick=quick, num_threads=num_threads, seed=seed)
    res["optimality"] = greedy_optimality(n_instances=100 if quick else 500, seed=seed)
    return res


def numpy_topk(scores, k):
    """np.argpartition + sort: the k largest per row, descending."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def bench_topk(quick=False, num_threads=(1, 2), seed=0):
    """embtab.rerank.topk against np.argpartition + sort and torch.topk (same thread counts)."""
    rng = np.random.default_rng(seed)
    U = 2_000 if quick else 10_000
    reps = 3 if quick else 7
    try:
        import torch
    except ImportError:  # torch is a dependency, but keep the benchmark usable without it
        torch = None
    rows = []
    for N in (1682, 10_000):
        scores = rng.random((U, N), dtype=np.float32)
        for k in (10, 500):
            if k > N:
                continue

            t_np, _, (vn, _) = _time(partial(numpy_topk, scores, k), reps)
            row = {"U": U, "N": N, "k": k, "dtype": "float32", "numpy_argpartition_sort": t_np, "embtab": {}, "torch": {}}
            for nt in num_threads:
                t_e, _, (ve, _) = _time(partial(rr.topk, scores, k, num_threads=nt), reps)
                row["embtab"][str(nt)] = t_e
                row["values_match_numpy"] = bool(np.array_equal(ve, vn))
                if torch is not None:
                    prev = torch.get_num_threads()
                    torch.set_num_threads(nt)
                    ts = torch.from_numpy(scores)
                    t_t, _, _ = _time(partial(torch.topk, ts, k, dim=1, largest=True, sorted=True), reps)
                    torch.set_num_threads(prev)
                    row["torch"][str(nt)] = t_t
            rows.append(row)
    return rows


# report #######################################################################################


def format_markdown(results) -> str:
    """Render run()'s results as Markdown tables (ratios measured side by side in one run)."""
    r = results
    cfg = r["config"]
    e1 = r["embtab"].get("1")
    lines = []
    lines.append(f"Workload: U={cfg['U']:,} users, C={cfg['C']} candidates, G={cfg['G']} genres "
                 f"({cfg['genres_per_item']} per item), k={cfg['k']}, lam={cfg['lam']}, alpha={cfg['alpha']}; "
                 f"median of {cfg.get('repeats_main', cfg['repeats'])} timed runs after an untimed warm-up run "
                 f"(NumPy (b): {max(1, cfg['repeats'] // 2)}; plain Python: 1; the rest: {cfg['repeats']}). Machine: {machine_line(r['machine'])}.")
    lines.append("")
    lines.append("| implementation | users timed | µs / user | users / s | time ÷ embtab 1 thread | same lists |")
    lines.append("|---|---:|---:|---:|---:|---|")
    base = e1["us_per_user"] if e1 else None

    def row(name, users, us, same):
        ratio = f"{us / base:,.1f}×" if base else "-"
        if isinstance(same, (bool, np.bool_)):
            same = "yes" if same else "**no**"
        lines.append(f"| {name} | {users:,} | {us:,.2f} | {1e6 / us:,.0f} | {ratio} | {same} |")

    row("plain Python", r["python"]["users"], r["python"]["us_per_user"], r["python"]["identical"])
    row("NumPy (a) vectorised over candidates", r["numpy_a"]["users"], r["numpy_a"]["us_per_user"],
        r["numpy_a"]["identical"])
    row("NumPy (b) batched over users and candidates", r["numpy_b"]["users"], r["numpy_b"]["us_per_user"],
        r["numpy_b"]["identical"])
    for nt, v in r["embtab"].items():
        row(f"embtab C++, {nt} thread{'s' if nt != '1' else ''}", cfg["U"], v["us_per_user"], "yes (reference)")
    if "embtab_shuffled" in r:
        row("embtab C++, 1 thread, candidates not in score order", cfg["U"], r["embtab_shuffled"]["us_per_user"],
            r["embtab_shuffled"]["identical"])
    lines.append("")
    if "2" in r["embtab"] and e1:
        by_round = r["embtab"]["2"].get("speedup_by_round")
        rounds = (f"; the median of the {cfg.get('repeats_main', cfg['repeats'])} rounds' own ratios "
                  f"(the counts took turns) is {by_round:.2f}×" if by_round is not None else "")
        lines.append(f"2 threads vs 1: 1 thread's time ÷ 2 threads' = "
                     f"{e1['seconds'] / r['embtab']['2']['seconds']:.2f}× (medians; above 1: faster){rounds}.")
    lat = r["latency_us"]
    lines.append(f"Per-user latency ({lat['users']} single-user calls to the core, 1 thread, incl. the call and "
                 f"its O(n_items) item-CSR check): "
                 f"p50 {lat['p50']:.1f} µs, p99 {lat['p99']:.1f} µs.")
    if "latency_api_us" in r:
        la = r["latency_api_us"]
        forms = "; ".join(f"item_dist as {name}: p50 {v['p50']:.1f} µs, p99 {v['p99']:.1f} µs"
                          for name, v in la["forms"].items())
        lines.append(f"Per-user latency through `rerank.calibrated` ({la['users']} single-user calls, 1 thread, "
                     f"all checks included): {forms}.")
    sp = r["score_pass"]["seconds"]
    lines.append(f"One NumPy pass over the [U, C] float64 score matrix: {sp * 1e3:.1f} ms "
                 f"(embtab 1 thread is {e1['seconds'] / sp:.1f}× that). Work: {r['work']['gathers']:,} table "
                 f"gathers ({r['work']['mean_genres_per_candidate']:.2f} genres per candidate × C × k × U), "
                 f"{e1['seconds'] / r['work']['gathers'] * 1e9:.2f} ns per gather all-in.")
    if "floor" in r:
        fl = r["floor"]
        lines.append(f"Compute floor (C++ kernel doing only the per-step logs, {fl['n_entries']} per step, and a full "
                     f"scan of k·C·{r['work']['width']} table gathers + argmax; 1 thread): "
                     f"{fl['full_scan_seconds'] / cfg['U'] * 1e6:.2f} µs/user; logs alone "
                     f"{fl['logs_only_seconds'] / cfg['U'] * 1e6:.2f} µs/user. embtab 1 thread is "
                     f"{e1['seconds'] / fl['full_scan_seconds']:.2f}× the full-scan floor"
                     + (" (score-ordered rows skip most of the scan)"
                        if e1["seconds"] < r["embtab_shuffled"]["seconds"] else "")
                     + f" and {r['embtab_shuffled']['seconds'] / fl['full_scan_seconds']:.2f}× it "
                     f"on shuffled rows; {e1['seconds'] / fl['logs_only_seconds']:.1f}× the logs alone.")
    lines.append("")
    lines.append("Scaling (1 thread; rows in score order, and the same rows shuffled, which scans every candidate):")
    lines.append("")
    lines.append("| sweep | U | C | seconds | ns per user·candidate | shuffled: seconds | shuffled: ns per user·candidate |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    # the two sweeps may meet at one (U, C), timed once in each (separate runs, one workload)
    for sweep, sw in ([("users", x) for x in r["sweep_users"]]
                      + [("candidates", x) for x in r["sweep_candidates"]]):
        sh = (f"{sw['shuffled_seconds']:.4f} | {sw['shuffled_ns_per_user_candidate']:.2f}"
              if "shuffled_seconds" in sw else "- | -")
        lines.append(f"| {sweep} | {sw['U']:,} | {sw['C']} | {sw['seconds']:.4f} | "
                     f"{sw['ns_per_user_candidate']:.2f} | {sh} |")
    lines.append("")
    lines.append("Top-k (first stage), float32 scores, times in ms:")
    lines.append("")
    nts = list(r["embtab"].keys())
    head = "| U | N | k | np.argpartition+sort | " + " | ".join(
        f"torch.topk {t}t | embtab {t}t | vs torch {t}t" for t in nts) + " |"
    lines.append(head)
    lines.append("|" + "---:|" * (4 + 3 * len(nts)))
    for tk in r["topk"]:
        cells = [f"{tk['U']:,}", f"{tk['N']:,}", str(tk["k"]), f"{tk['numpy_argpartition_sort'] * 1e3:.1f}"]
        for t in nts:
            tt = tk["torch"].get(t)
            te = tk["embtab"][t]
            cells += [f"{tt * 1e3:.1f}" if tt else "-", f"{te * 1e3:.1f}", f"{tt / te:.1f}×" if tt else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    o = r["optimality"]
    lines.append(f"Greedy vs brute force ({o['n_instances']} random instances, C={o['C']}, k={o['k']}, G={o['G']}, "
                 f"lam={o['lam']}): exactly optimal in {o['optimal_share'] * 100:.1f}%; worst objective gap "
                 f"{o['worst_gap']:.2e}, mean gap {o['mean_gap']:.2e}.")
    return "\n".join(lines)
