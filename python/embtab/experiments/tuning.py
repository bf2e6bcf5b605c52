"""Per-configuration tuning of lr, L2 and epochs on a validation split carved from training.

docs/experiments.md ("E1 v2") states the protocol: 20% of each user's training items (a seeded
:func:`~embtab.data.train_test_split` of the training split) are held out; every (lr, l2) pair
of the grid trains for ``max(epochs)`` epochs on the rest and is scored by ndcg@10 on the held-out
items after each epoch count of the grid; the best triple is refitted on the whole training
split by the caller.
"""

from __future__ import annotations

import math

from embtab import metrics
from embtab._research import K
from embtab.data import Interactions, train_test_split
from embtab.train import TrainConfig, fit, recommend

__all__ = ["QUICK_TUNING_GRID", "TUNING_GRID", "tune"]

#: The tuning grid of full runs: every (lr, l2) pair is trained for max(epochs) epochs and
#: scored on the validation split after each epoch count in ``epochs``.
#: L2 reaches 0.1 and epochs 80 because, with the earlier grid (L2 up to 0.01, 20 epochs), the
#: v2 generator's E1 picked the largest L2 and epoch count in 32 of 35 runs; on
#: ``synthetic:n_users=1000,n_items=1500,interactions_per_user=30,rank=16`` the validation
#: optimum is at L2 = 0.03 for d = 4, 16 and 64 (0.1 is worse).
TUNING_GRID = {"lr": (0.01, 0.02, 0.05), "l2": (1e-3, 1e-2, 3e-2, 1e-1),
               "epochs": (10, 20, 40, 80)}
#: The grid of quick runs.
QUICK_TUNING_GRID = {"lr": (0.02,), "l2": (1e-2, 3e-2, 1e-1), "epochs": (10, 20, 40)}


def tune(train: Interactions, config: TrainConfig, grid: dict = TUNING_GRID, *,
         val_seed: int = 0) -> tuple:
    """Pick lr, l2 and epochs for ``config`` on a validation split carved from ``train``.

    Parameters
    ----------
    train : Interactions
        The training split; 20% of each user's items (``train_test_split(train, 0.2,
        seed=val_seed)``) become the validation items.
    config : TrainConfig
        Everything but lr, l2 and epochs stays as given.
    grid : dict
        ``{"lr": [...], "l2": [...], "epochs": [...]}``, each non-empty.
    val_seed : int

    Returns
    -------
    (TrainConfig, dict)
        ``config`` with the chosen lr, l2 and epochs, and ``{"val_ndcg@10": its score,
        "grid": [(lr, l2, epochs, score), ...], "tuned": True}``; a grid point whose training
        diverged (a non-finite epoch loss) is left out of the grid at every epoch; ValueError
        when every grid point diverged. Ties keep the smaller lr,
        then the smaller l2, then fewer epochs. When no grid point can be scored (the
        validation split holds no items: every user has too few), ``config`` comes back
        unchanged with ``"tuned": False`` and a NaN score, and the reports say so.
    """
    for key in ("lr", "l2", "epochs"):
        if not grid.get(key):
            raise ValueError(f"grid needs a non-empty {key!r} list; got {grid!r}")
    fit_part, val = train_test_split(train, test_fraction=0.2, seed=val_seed)
    checkpoints = sorted(int(e) for e in grid["epochs"])
    scores, diverged = [], []
    for lr in grid["lr"]:
        for l2 in grid["l2"]:
            cfg = TrainConfig(**{**config.to_dict(), "lr": float(lr), "l2": float(l2),
                                 "epochs": checkpoints[-1]})

            def score(epoch, model, lr=lr, l2=l2):
                if epoch in checkpoints:
                    top = recommend(model, fit_part, K)
                    scores.append((float(lr), float(l2), epoch,
                                   metrics.ndcg_at_k(top, val, K)))

            try:
                fit(fit_part, cfg, quiet=True, on_epoch=score)
            except ValueError as e:
                if "training diverged" not in str(e):
                    raise
                # a grid point that diverges is not chosen at any epoch (the refit on the whole
                # training split, with more steps per epoch, could diverge earlier still)
                scores[:] = [x for x in scores if (x[0], x[1]) != (float(lr), float(l2))]
                diverged.append((float(lr), float(l2)))
    if diverged and len(diverged) == len(grid["lr"]) * len(grid["l2"]):
        raise ValueError(f"tuning: the training diverged at every grid point (lr, l2) "
                         f"{diverged}: lower the grid's lr or the config's init_std")
    scored = [s for s in scores if math.isfinite(s[3])]
    if not scored:   # no validation items: max() over NaN would pick the first grid point
        return config, {"val_ndcg@10": float("nan"), "grid": scores, "tuned": False}
    best = max(scored, key=lambda s: (s[3], -s[0], -s[1], -s[2]))
    chosen = TrainConfig(**{**config.to_dict(), "lr": best[0], "l2": best[1],
                            "epochs": best[2]})
    return chosen, {"val_ndcg@10": best[3], "grid": scores, "tuned": True}


def untuned_note(rows) -> str:
    """A report's note on tuned rows whose validation split held no items (``tuned`` False:
    they kept the given lr, l2 and epochs); "" when there are none."""
    tuned = [r for r in rows if "tuned" in r]
    k = sum(1 for r in tuned if not r["tuned"])
    if not k:
        return ""
    return (f" {k} of {len(tuned)} tuned models found no validation items to score (each user "
            "has too few interactions) and kept the given lr, l2 and epochs")
