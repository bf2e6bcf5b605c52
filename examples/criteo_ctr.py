"""A factorization-machine CTR model over Criteo's 26 categorical fields, two ways at equal memory.

The 26 fields are the 26 features of one embedding-bag collection, each with its own table of
``--rows`` rows, looked up in one call and trained by one fused optimizer
(``embtab.optim.Adam``, the lazy Adam of ``torch.optim.SparseAdam``, applied inside backward).
The same FM (bias + linear term + pairwise factor interactions; a table row holds an ID's linear
weight in column 0 and its factors after it) is trained with
``embtab.nn.CuckooEmbeddingBagCollection`` (one row per ID; at the memory budget a table admits an
ID from its ``--min-count``-th sighting and evicts the least recently used) and with
``embtab.nn.HashedEmbeddingBagCollection`` (the hashing trick: row = hash(id) mod m). Both get the
same tables, so they use the same memory; the script prints logloss and AUC on held-out rows
(the last 20%; AUC is printed as undefined, with the reason, when those rows are all clicks or
all non-clicks, as on a few rows of ``--max-rows``). Both models are trained before the table
is printed, so a ``--rows`` too small for a batch is one error line, not a table cut short.

Data: by default ``../shared/data/criteo-sample/criteo_kaggle_train_head1000.txt`` beside the
checkout (the Criteo layout: label, I1..I13, C1..C26, tab-separated; never copy it into the
repository); ``--data PATH`` for another file of that layout (e.g. the full Kaggle
``train.txt``); or ``--synthetic N`` for N rows of a Criteo-like stream (Zipf IDs per field,
labels from a planted logistic model). A raw ID is ``field << 32 | value`` (the 32-bit hashed
value, field-namespaced); a missing value is the padding ID and reads a zero vector. A gzip
file is read as such; ``--max-rows N`` reads the first N rows (the full Kaggle file has 45.8
million, about 9.6 GB once parsed).

    python examples/criteo_ctr.py                      # the 1,000-row sample
    python examples/criteo_ctr.py --synthetic 200000   # a larger synthetic stream
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import embtab.nn as enn
import embtab.optim as eo
from embtab.cli import int_at_least

N_FIELDS = 26
MISSING = -1  # the padding ID (2**64 - 1 as uint64): no real ID has all 64 bits set
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "criteo-sample"
    / "criteo_kaggle_train_head1000.txt"
)


def _open_text(path: Path):
    """A Criteo-layout file as text lines: gzip when it starts with gzip's magic bytes."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="ascii") if gz else open(path, encoding="ascii")


def read_criteo(path: Path, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels float32 [n] and raw IDs int64 [n, 26] from a Criteo-layout file.

    Lines are ``label I1..I13 C1..C26``, tab-separated, the C values 32-bit hashes in
    hexadecimal (an empty one is missing: the padding ID). A gzip file is read as such; blank
    lines and a first line whose label is not a number (a header) are skipped. Anything else
    that does not fit the layout is a ValueError naming the file, line and field. At most
    ``max_rows`` rows are read (about 210 bytes each once parsed).
    """
    label_parts, id_parts = [], []  # arrays of up to 65,536 rows, joined once at the end
    lab_chunk, id_chunk = [], []
    n_rows = 0
    header = None

    def flush():
        if lab_chunk:
            label_parts.append(np.asarray(lab_chunk, np.float32))
            id_parts.append(np.asarray(id_chunk, np.int64).reshape(-1, N_FIELDS))
            lab_chunk.clear()
            id_chunk.clear()

    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if max_rows is not None and n_rows >= max_rows:
                    break
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                cols = text.split("\t")
                if len(cols) != 40:
                    raise ValueError(
                        f"{path}:{line_no}: expected 40 tab-separated columns, got {len(cols)}"
                    )
                if cols[0].strip() not in ("0", "1"):
                    if line_no == 1 and not _is_number(cols[0]):
                        header = cols[0]
                        continue  # a header
                    raise ValueError(f"{path}:{line_no}: label {cols[0]!r} is not 0 or 1")
                row = []
                for f_, v in enumerate(cols[14:]):
                    if not v:
                        row.append(MISSING)
                        continue
                    try:
                        x = int(v, 16)
                    except ValueError:
                        raise ValueError(f"{path}:{line_no}: C{f_ + 1} {v!r} is not a "
                                         "hexadecimal value") from None
                    if not 0 <= x < 2**32:
                        raise ValueError(f"{path}:{line_no}: C{f_ + 1} {v!r} is not a 32-bit "
                                         "value (the layout's values are 32-bit hashes)")
                    row.append((f_ << 32) | x)
                lab_chunk.append(float(cols[0]))
                id_chunk.append(row)
                n_rows += 1
                if len(lab_chunk) == 65_536:
                    flush()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not ASCII text ({e})") from None
    except (OSError, EOFError) as e:  # a corrupt or truncated gzip file
        raise ValueError(f"{path}: cannot be read ({e})") from None
    flush()
    if n_rows == 0:
        raise ValueError(f"{path}: no rows (expected lines 'label I1..I13 C1..C26')"
                         + (f"; line 1, label {header!r}, was read as a header" if header else ""))
    return np.concatenate(label_parts), np.concatenate(id_parts)


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def synthetic_criteo(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n Criteo-like rows: per field, Zipf(1.1) IDs over a vocabulary of 10..100,000 values;
    click probability from a planted logistic model over per-ID weights (5% missing values)."""
    rng = np.random.default_rng(seed)
    vocab = np.geomspace(10, 100_000, N_FIELDS).astype(np.int64)
    ids = np.empty((n, N_FIELDS), dtype=np.int64)
    logit = np.full(n, -1.4)
    for f in range(N_FIELDS):
        weights = np.arange(1, vocab[f] + 1, dtype=np.float64) ** -1.1
        cdf = np.cumsum(weights) / weights.sum()
        rank = np.minimum(np.searchsorted(cdf, rng.random(n)), vocab[f] - 1)
        planted = np.random.default_rng(seed * 1000 + f).normal(0, 0.6, vocab[f])
        logit += planted[rank]
        ids[:, f] = (f << 32) | rank
        ids[rng.random(n) < 0.05, f] = MISSING
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return labels, ids


class FM(nn.Module):
    """Factorization machine: b + sum_i w_i + 0.5 * sum_k ((sum_i v_ik)^2 - sum_i v_ik^2).

    ``emb`` is a collection with one feature per field (``C1`` .. ``C26``) whose vectors are
    ``[w_i, v_i1, .., v_ik]``."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb, self.bias = emb, nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, 26] -> logits [B]
        # each field as 2-D (B, 1) bags: one ID per sample; concat=True gives (B, 26 * (k + 1))
        out = self.emb({f"C{f + 1}": ids[:, f : f + 1] for f in range(N_FIELDS)}, concat=True)
        out = out.view(ids.shape[0], N_FIELDS, -1)
        w, v = out[:, :, 0], out[:, :, 1:]
        pair = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return self.bias + w.sum(1) + pair


def make_model(kind: str, rows: int, dim: int, min_count: int, seed: int, lr: float) -> FM:
    """The FM over a collection of 26 tables (``t1`` .. ``t26``) of ``rows`` x ``dim + 1``."""
    kw = {"padding_id": MISSING, "init": enn.EmbeddingInit("normal", 0.0, 0.01)}
    if kind == "cuckoo":
        kw.update(on_full="evict_lru", min_count=min_count)
    tables = [
        enn.EmbeddingBagConfig(num_embeddings=rows, embedding_dim=dim + 1, name=f"t{f + 1}",
                               feature_names=[f"C{f + 1}"], options={**kw, "seed": seed * 100 + f})
        for f in range(N_FIELDS)
    ]
    cls = enn.CuckooEmbeddingBagCollection if kind == "cuckoo" else enn.HashedEmbeddingBagCollection
    return FM(cls(tables, optimizer=eo.Adam(lr=lr)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN when ``labels`` hold one
    class (or none): the AUC is then undefined (see :func:`auc_cell`)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_cell(value: float, test_labels: np.ndarray) -> str:
    """The AUC as the results table prints it: 4 decimals, or "undefined" with the reason when
    the test rows hold a single class (an AUC ranks positives above negatives: it needs both)."""
    if math.isfinite(value):
        return f"{value:.4f}"
    n = len(test_labels)
    if n == 0:
        return "undefined (no test rows)"
    rows = "1 test row, with" if n == 1 else f"all {n:,} test rows have"
    return f"undefined ({rows} label {int(test_labels[0])}: AUC needs both classes)"


def train_eval(kind, labels, ids, args) -> dict:
    torch.manual_seed(args.seed)
    model = make_model(kind, args.rows, args.dim, args.min_count, args.seed, args.lr)
    # the tables step inside backward (fused Adam); only the bias is left to torch
    opts = [torch.optim.Adam([model.bias], lr=args.lr)]
    n_train = int(len(labels) * 0.8)
    x, y = torch.from_numpy(ids), torch.from_numpy(labels)
    loss_fn = nn.BCEWithLogitsLoss()
    steps = args.epochs * math.ceil(n_train / args.batch)
    with tqdm(total=steps, desc=kind, disable=args.no_progress, file=sys.stderr) as bar:
        for _ in range(args.epochs):
            for s in range(0, n_train, args.batch):
                e = min(s + args.batch, n_train)  # the last batch stops at the test rows
                loss = loss_fn(model(x[s:e]), y[s:e])
                for o in opts:
                    o.zero_grad()
                loss.backward()
                for o in opts:
                    o.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x[n_train:])).numpy().astype(np.float64)
    yt = labels[n_train:]
    eps = 1e-7
    logloss = float(-np.mean(yt * np.log(p + eps) + (1 - yt) * np.log(1 - p + eps)))
    out = {"model": kind, "rows": args.rows, "logloss": logloss, "auc": auc(yt, p)}
    bags = list(model.emb.embedding_bags.values())
    if kind == "cuckoo":
        for k in ("num_ids", "num_admissions", "num_evictions"):
            out[k] = sum(b.stats()[k] for b in bags)
    else:
        reps = [b.collision_report(x[:n_train, f]) for f, b in enumerate(bags)]
        ids_, looks = [r["distinct_ids"] for r in reps], (x[:n_train] != MISSING).sum(0)
        out["colliding_id_share"] = sum(r["colliding_id_share"] * n for r, n in zip(reps, ids_)) / max(sum(ids_), 1)
        out["colliding_lookup_share"] = sum(
            r["colliding_lookup_share"] * int(n) for r, n in zip(reps, looks)
        ) / max(int(looks.sum()), 1)
    return out


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Criteo-layout file (default: the sample)"
    )
    ap.add_argument(
        "--synthetic", type=int_at_least(1), metavar="N",
        help="use N synthetic Criteo-like rows instead",
    )
    ap.add_argument("--max-rows", type=int_at_least(1), metavar="N",
                    help="read at most N rows of --data")
    ap.add_argument(
        "--rows",
        type=int_at_least(1),
        default=512,
        help="rows of each field's table (equal memory); at least the distinct IDs of one batch",
    )
    ap.add_argument("--dim", type=int_at_least(1), default=8)
    ap.add_argument("--min-count", type=int_at_least(1), default=2,
                    help="CuckooEmbedding admission threshold")
    ap.add_argument("--epochs", type=int_at_least(1), default=3)
    ap.add_argument("--batch", type=int_at_least(1), default=256)
    ap.add_argument("--lr", type=_positive_float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.synthetic is not None:
        labels, ids = synthetic_criteo(args.synthetic, args.seed)
        source = f"synthetic ({args.synthetic:,} rows)"
    else:
        if args.data.is_dir():
            print(f"error: {args.data} is a folder; pass --data the click-log file in it (a "
                  "Criteo train.txt or its sample) or --synthetic N", file=sys.stderr)
            return 2
        if not args.data.is_file():
            print(
                f"error: {args.data} not found; pass --data PATH or --synthetic N", file=sys.stderr
            )
            return 2
        try:
            labels, ids = read_criteo(args.data, args.max_rows)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        source = str(args.data)
    if int(len(labels) * 0.8) < 1 or len(labels) - int(len(labels) * 0.8) < 1:
        print(f"error: {len(labels)} row(s): too few to train on 80% and test on 20%",
              file=sys.stderr)
        return 2
    distinct = len(np.unique(ids[ids != MISSING]))
    print(
        f"data: {source}; {len(labels):,} rows, {distinct:,} distinct IDs over 26 fields, CTR {labels.mean():.3f}"
    )
    print(
        f"both models: 26 tables of {args.rows:,} rows x {args.dim} factors (+1 linear); "
        f"train 80%, test 20%"
    )
    results = []
    for kind in ("cuckoo", "hashed"):  # both trained before the table: an error prints no table
        try:
            results.append(train_eval(kind, labels, ids, args))
        except ValueError as e:  # e.g. --rows below the distinct IDs of one batch
            print(f"error: {kind}: {e}", file=sys.stderr)
            return 2
    test_labels = labels[int(len(labels) * 0.8):]
    print("| model | logloss | AUC | notes |")
    print("|---|---:|---:|---|")
    for r in results:
        kind = r["model"]
        if kind == "cuckoo":
            note = (
                f"{r['num_ids']:,} live IDs, {r['num_admissions']:,} admitted, "
                f"{r['num_evictions']:,} evicted (min_count={args.min_count}, LRU)"
            )
            name = "CuckooEmbeddingBagCollection"
        else:
            note = (
                f"{r['colliding_id_share']:.1%} of distinct IDs share a row; "
                f"{r['colliding_lookup_share']:.1%} of lookups hit a shared row"
            )
            name = "HashedEmbeddingBagCollection"
        print(f"| {name} | {r['logloss']:.4f} | {auc_cell(r['auc'], test_labels)} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
