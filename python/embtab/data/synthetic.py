"""The seeded power-law generator with planted genre structure (:func:`power_law`)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np

from embtab._checks import check_memory
from embtab._research import U64_MAX
from embtab.data.containers import Interactions, RowSets
from embtab.data.truth import GroundTruth

__all__ = ["power_law"]


def check_generator_args(n_users, n_items, n_genres, interactions_per_user, zipf_s,
                         **reals) -> None:
    """The checks every synthetic generator makes of its common arguments: the sizes are
    integers >= 1 with ``n_items >= n_genres``, ``zipf_s`` is a finite number > 0, and each of
    ``reals`` (name=value) is a finite number. Raises ``TypeError`` (a size that is not an
    integer) or ``ValueError`` (out of range), naming the argument."""
    for what, v in (("n_users", n_users), ("n_items", n_items), ("n_genres", n_genres),
                    ("interactions_per_user", interactions_per_user)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{what} must be an integer; got {v!r}")
    for what, v in (("zipf_s", zipf_s), *reals.items()):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{what} must be a finite number; got {v!r}")
    if n_users < 1 or n_items < 1 or n_genres < 1:
        raise ValueError(f"sizes must be positive; got n_users={n_users}, n_items={n_items}, "
                         f"n_genres={n_genres}")
    if n_items < n_genres:
        raise ValueError(f"n_items ({n_items}) must be >= n_genres ({n_genres})")
    if interactions_per_user < 1:
        raise ValueError(f"interactions_per_user must be >= 1; got {interactions_per_user}")
    if zipf_s <= 0:
        raise ValueError(f"zipf_s must be > 0; got {zipf_s}")


def expected_interactions(n_users, n_items, per_user) -> int:
    """About the most interactions a generator holds: ``n_users`` × min(``per_user`` + 1,
    ``n_items``) (the activity draws have mean ``per_user``; rounding them and the floor of
    ``min(5, per_user)`` add up to one per user, and no user takes more than the catalogue)."""
    return int(n_users) * min(int(math.ceil(per_user)) + 1, int(n_items))


def power_law_bytes(n_users, n_items, n_genres, interactions_per_user) -> int:
    """An upper-ish estimate of :func:`power_law`'s peak memory in bytes (beyond the interpreter
    and the modules it imports), from its sizes alone, computed before anything is allocated.

    * 250 bytes per interaction (:func:`expected_interactions`): the i.i.d. draws of the
      sampling rounds (about 2 per interaction, each with its user, key, genre, position and
      item, int64/float64), their ``np.unique`` in ``_first_distinct`` and the final
      :class:`Interactions` (users, items, timestamps, the sort key);
    * 64 bytes per (user or item) × genre: the Gumbel keys and the double argsort of
      ``_weighted_sets``, the Dirichlet draws, the user mixes and their cumulative keys, the
      item-genre weights;
    * 64 bytes per user and per item (ranks, popularity, activity, support, IDs).

    Measured by ``bench/parts/generator_memory.py`` (the process's peak RSS, ``ru_maxrss``,
    less its peak after the imports; 18 genres and 50 per user unless said): 20,000 users ×
    3,000 items (1.0M interactions) 205 MB against 283 MB estimated; 100,000 × 3,000 at 20 per
    user 493 MB / 650 MB; 2,000 × 200,000 with 50 genres 355 MB / 685 MB; 200,000 × 3,000
    with 100 genres at 10 per user 940 MB / 1.9 GB; 500,000 × 3,000 at 1 per user 717 MB /
    862 MB. Left out: the Gumbel-key finish of users a steep ``zipf_s`` leaves short of items
    (blocks of 256 users × ``n_items`` floats), which ordinary settings never reach (at
    ``zipf_s=2.5``, 3,000 × 20,000 at 200 per user: 251 MB measured, 179 MB estimated).
    """
    U, I, G = int(n_users), int(n_items), int(n_genres)
    return (250 * expected_interactions(U, I, interactions_per_user) + 64 * (U + I) * G
            + 64 * (U + I))


def check_name(name) -> str:
    """A data set's ``name`` (it titles the reports): a non-empty string; TypeError or
    ValueError naming ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string; got {type(name).__name__} {name!r}")
    if not name.strip():
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    return name


def check_log_scale(n_items, zipf_s, **factors) -> None:
    """Refuse a factor f (name=value) for which the log weights ``-zipf_s · f · ln rank`` (rank
    up to ``n_items``) overflow float64: ValueError naming it. The generators weigh items in
    logs so that nothing underflows; an overflow there would turn a row into NaN instead."""
    lr = math.log(max(int(n_items), 2))
    for what, v in factors.items():
        if not math.isfinite(float(zipf_s) * abs(float(v)) * lr):
            raise ValueError(f"{what}={v!r} is too large for zipf_s={zipf_s!r} and n_items="
                             f"{n_items}: the log weights zipf_s·{what}·ln(rank) overflow float64")


def lognormal_mu(mean: float, sigma: float) -> float:
    """μ of a log-normal with this mean and log-sd ``sigma`` (μ = ln mean − σ²/2); ValueError
    naming ``activity_sigma`` when σ² overflows float64."""
    if not math.isfinite(float(sigma) * float(sigma)):
        raise ValueError(f"activity_sigma={sigma!r} is too large: the log-normal's sigma**2 "
                         "overflows float64")
    return math.log(mean) - float(sigma) ** 2 / 2


def draw_activity(rng: np.random.Generator, U: int, I: int, interactions_per_user,
                  activity_sigma: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Each user's activity: ``(draw, n_u, lo)``, the log-normal draws with mean
    ``interactions_per_user`` (or that constant when ``activity_sigma`` is 0), the item counts
    they round to (at most ``I``, at least ``lo = min(5, interactions_per_user)``) and ``lo``.
    The counts are not yet cut to each user's support."""
    lo = min(5, int(interactions_per_user))
    if activity_sigma > 0:
        mu = lognormal_mu(interactions_per_user, activity_sigma)
        draw = rng.lognormal(mu, activity_sigma, size=U)
        # (capped at I before the cast: a wide activity_sigma draws beyond int64; no user
        # takes more than I items anyway)
        n_u = np.rint(np.minimum(draw, I)).astype(np.int64)
    else:
        draw = np.full(U, float(interactions_per_user))
        n_u = np.full(U, min(int(interactions_per_user), I), dtype=np.int64)
    return draw, np.clip(n_u, lo, None), lo


def warn_capped_activity(generator: str, interactions_per_user, want, n_u, support,
                         why: str, fix: str, stacklevel: int = 3) -> None:
    """Warn (``UserWarning``) when the users hold on average less than half of the
    interactions their activity draws asked for.

    A user consumes distinct items that they can like (p(i|u) > 0): ``n_u`` is cut to the
    user's ``support``, which a small catalogue or a narrow truth (one genre or factor per
    user) makes smaller than ``interactions_per_user``, and then the users' histories are much
    the same. ``want`` float [U] is each user's activity draw before any cap, ``n_u`` int [U]
    the items each user consumes, ``support`` int [U] (at most ``n_items``) the items each
    user can like; ``why`` says what limits the support, ``fix`` what to change. A cut of the
    heaviest users alone (draws in the log-normal's tail) changes little and draws no warning.
    ``stacklevel`` 3 points the warning at the generator's caller when the generator calls
    this function itself."""
    want, n_u, support = np.asarray(want, np.float64), np.asarray(n_u), np.asarray(support)
    if not n_u.size:
        return
    asked, got = float(want.mean()), float(n_u.mean())
    if not got < 0.5 * asked:
        return
    cut = int(np.count_nonzero(want > support))
    warnings.warn(
        f"{generator}: interactions_per_user={interactions_per_user} asked for "
        f"{f'{asked:,.1f}' if asked < 1e9 else f'{asked:.3g}'} "
        f"interactions per user on average, but the data holds only {got:,.1f} per user "
        f"({int(n_u.sum()):,} in all): {cut:,} of the {n_u.size:,} users can like fewer items "
        f"than they drew (median {float(np.median(support)):g} items; {why}): {fix}",
        UserWarning, stacklevel=stacklevel)


def check_seed(seed) -> int:
    """``seed`` as an int: an integer >= 0 (what ``numpy.random.default_rng`` takes); else
    ``TypeError`` (not an integer) or ``ValueError`` (negative), naming ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer >= 0; got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed}")
    return int(seed)


#: The default probabilities of 1, 2, 3 genres per item and interests per user.
GENRES_PER_ITEM = (0.55, 0.3, 0.15)
INTERESTS_PER_USER = (0.3, 0.5, 0.2)


def check_triple_cap(p, default, cap: int, what: str, cap_what: str) -> None:
    """Refuse (``ValueError`` naming ``what`` and ``cap_what``) probabilities ``p`` of 1, 2, 3
    (genres, interests) given by the caller that put mass on more than ``cap`` (``n_genres``,
    the taste factors): the generator draws at most ``cap``, so that mass would silently move
    to ``cap``. The ``default`` triple is capped without a word (documented), so that small
    ``n_genres`` keep working with the defaults."""
    p = np.asarray(p, dtype=np.float64)
    if cap >= 3 or not p[cap:].sum() > 0 or np.allclose(p, default, rtol=0, atol=1e-12):
        return
    raise ValueError(
        f"{what}={tuple(float(x) for x in p)} puts probability {float(p[cap:].sum()):g} on "
        f"more than {cap_what}: at most {cap} can be drawn, so that mass would be moved to "
        f"{cap} silently; give probabilities that are 0 beyond {cap}")


def power_law(n_users: int = 2000, n_items: int = 3000, n_genres: int = 18,
              interactions_per_user: int = 50, zipf_s: float = 1.1, beta: float = 1.0, *,
              genres_per_item: Sequence[float] = GENRES_PER_ITEM,
              interests_per_user: Sequence[float] = INTERESTS_PER_USER,
              mix_concentration: float = 1.5, activity_sigma: float = 0.5,
              seed: int = 0, name: str = "synthetic") -> Interactions:
    """Seeded power-law interaction data with planted genre structure.

    The generative story (all draws from ``numpy.random.default_rng(seed)``):

    1. **Items.** A random permutation assigns popularity ranks 1..I; ``popularity(i) =
       rank(i)**-zipf_s`` (Zipf). Each item gets 1, 2 or 3 distinct genres with probabilities
       ``genres_per_item``, drawn without replacement with genre prevalence ``∝ (g+1)**-0.5``
       (so genres differ in size); every genre gets at least one item.
    2. **Users.** Each user has 1, 2 or 3 interest genres (probabilities ``interests_per_user``,
       drawn like the item genres) and a planted mix over them, ``Dirichlet(mix_concentration)``
       (so 70/30 users are common). Activity ``n_u`` is log-normal with mean
       ``interactions_per_user`` and log-sd ``activity_sigma`` (0: every user has exactly
       ``interactions_per_user``), at least ``min(5, interactions_per_user)``, at most the number
       of items the user can like (a ``UserWarning`` says so when that cap leaves the users
       less than half of the interactions their draws asked for: a catalogue too small for
       ``interactions_per_user``).
    3. **Preference** (see :class:`GroundTruth`): ``p(i|u) = Σ_g mix_u(g) ·
       popularity(i)**beta · w(i,g) / Z_g``, ``w(i,g) = 1/|genres(i)|`` for ``g ∈ genres(i)``.
    4. **Interactions.** Each user consumes ``n_u`` distinct items sampled without replacement
       from ``p(·|u)`` (successive sampling: the first ``n_u`` distinct items of an i.i.d. stream;
       a user whose last items are rare draws, under a steep ``zipf_s``, gets them by Gumbel keys
       over the items not yet taken, the same law); ``timestamps`` record that order (0, 1, ...).
    5. **IDs.** Users and items get distinct uniformly random 64-bit raw IDs (uint64).

    Parameters
    ----------
    n_users, n_items, n_genres : int
        Sizes. ``n_items >= n_genres``. The default (2,000 x 3,000, 18 genres, ~50 per user, about
        100,000 interactions) generates in well under a second; tens of millions of interactions
        work too (memory is O(N + G·I)).
    interactions_per_user : int
        Mean interactions per user; a user takes at most the items they can like, and a
        ``UserWarning`` (asked and held interactions per user) says when that cap leaves the
        users less than half of what their activity draws asked for (a catalogue too small).
    zipf_s : float
        Zipf exponent of item popularity (> 0).
    beta : float
        Weight of popularity in the preference (0: uniform within a genre; negative: the
        less popular items of a genre preferred).
    genres_per_item, interests_per_user : sequence of 3 floats
        Probabilities of 1, 2, 3 genres per item / interest genres per user. No item or user
        has more than ``n_genres`` genres: the defaults are capped at ``n_genres`` (with 2
        genres, the 3-genre share goes to 2), and a triple given with probability on more
        than ``n_genres`` is refused (``ValueError``).
    mix_concentration : float
        Dirichlet concentration of a user's mix over their interest genres.
    activity_sigma : float
        Log-sd of user activity.
    seed : int
    name : str

    Returns
    -------
    Interactions
        With ``truth`` set (``truth.user_mix`` [U, G], ``truth.prob(users)`` [n, I]), genre names
        ``"g00", "g01", ...`` and timestamps.

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type or out of range, naming it.
    MemoryError
        Sizes whose estimated peak memory (:func:`power_law_bytes`) exceeds this machine's
        RAM + swap, naming them, before anything is allocated (``n_users=10**9`` was killed
        by the kernel or ran for minutes).

    Example::

        >>> d = power_law(n_users=100, n_items=200, n_genres=5, interactions_per_user=10, seed=3)
        >>> d.n_users, d.n_items, d.n_genres, d.user_ids.dtype.name
        (100, 200, 5, 'uint64')
        >>> sorted(d.summary())
        ['interactions', 'items', 'name', 'top1pct_share', 'users']
    """
    check_generator_args(n_users, n_items, n_genres, interactions_per_user, zipf_s,
                         beta=beta, mix_concentration=mix_concentration,
                         activity_sigma=activity_sigma)
    if mix_concentration <= 0 or activity_sigma < 0:
        raise ValueError(f"mix_concentration must be > 0 and activity_sigma >= 0; got "
                         f"{mix_concentration} and {activity_sigma}")
    check_name(name)
    check_log_scale(n_items, zipf_s, beta=beta)  # item weights: -zipf_s·beta·ln rank
    seed = check_seed(seed)
    gpi = _probs3(genres_per_item, "genres_per_item")
    ipu = _probs3(interests_per_user, "interests_per_user")
    U, I, G = int(n_users), int(n_items), int(n_genres)
    check_triple_cap(gpi, GENRES_PER_ITEM, G, "genres_per_item", f"n_genres={G} genres")
    check_triple_cap(ipu, INTERESTS_PER_USER, G, "interests_per_user", f"n_genres={G} genres")
    check_memory(power_law_bytes(U, I, G, interactions_per_user),
                 f"n_users={U}, n_items={I}, n_genres={G}, interactions_per_user="
                 f"{interactions_per_user}: power_law")
    rng = np.random.default_rng(seed)

    # items: popularity and genres
    rank = rng.permutation(I) + 1
    popularity = rank.astype(np.float64) ** -float(zipf_s)
    prevalence = np.log((np.arange(G) + 1.0) ** -0.5)
    n_item_genres = np.minimum(rng.choice(3, size=I, p=gpi) + 1, G)
    item_pick = _weighted_sets(rng, prevalence, n_item_genres)      # bool [I, G]
    first = rng.permutation(I)[:G]                                  # every genre gets an item
    item_pick[first] = False
    item_pick[first, np.arange(G)] = True
    rows, cols = np.nonzero(item_pick)
    item_genres = RowSets.from_pairs(rows, cols, I, G)
    w = item_genres.split_weights()                                 # [I, G]
    gip = genre_weights(-float(zipf_s) * float(beta) * np.log(rank.astype(np.float64)), w.T)

    # users: interest genres and planted mix
    n_interests = np.minimum(rng.choice(3, size=U, p=ipu) + 1, G)
    user_pick = _weighted_sets(rng, prevalence, n_interests)        # bool [U, G]
    user_mix = dirichlet_rows(rng, float(mix_concentration), user_pick)
    truth = GroundTruth(user_mix=user_mix, genre_item_prob=gip, popularity=popularity,
                        zipf_s=float(zipf_s), beta=float(beta))

    # activity, capped by each user's support (the items with p(i|u) > 0: those of the genres
    # in their mix, less any whose weight underflows to 0 under a steep Zipf exponent)
    user_sets, user_inv = np.unique(user_mix > 0, axis=0, return_inverse=True)
    item_sets, item_count = np.unique(gip.T > 0, axis=0, return_counts=True)
    overlap = (user_sets.astype(np.float64) @ item_sets.T.astype(np.float64)) > 0
    support = (overlap @ item_count).astype(np.int64)[user_inv.ravel()]
    draw, n_u, lo = draw_activity(rng, U, I, interactions_per_user, activity_sigma)
    n_u = np.minimum(n_u, support)
    warn_capped_activity("power_law", interactions_per_user, np.maximum(np.rint(draw), lo), n_u,
                         support, f"a user can like only the items of their 1-3 interest "
                         f"genres, of the n_items={I}, and, under a steep zipf_s·beta, only those "
                         f"whose weight does not underflow to 0", "raise n_items, or lower "
                         "n_genres or interactions_per_user")

    users, items = _sample_without_replacement(rng, truth, item_genres, n_u)
    order = np.arange(users.size) - np.repeat(np.cumsum(n_u) - n_u, n_u)

    return Interactions(name=name, user_ids=random_ids(rng, U), item_ids=random_ids(rng, I),
                        users=users, items=items, timestamps=order, item_genres=item_genres,
                        genre_names=tuple(f"g{g:02d}" for g in range(G)), truth=truth)


def genre_weights(log_weight, affinity):
    """Rows ∝ ``exp(log_weight) * affinity`` normalised to sum 1, float64 [R, I].

    ``log_weight`` [I] (or [R, I]) is an item's log weight (e.g. ``beta * log popularity``)
    and ``affinity`` [R, I] >= 0 each row's share of the item (every row has a positive entry).
    Computed in log space, each row scaled by its largest weight, so that a steep Zipf exponent
    or a large ``beta`` (weights below 1e-308) neither empties a row (0/0) nor overflows.
    """
    logw = np.where(affinity > 0, np.asarray(log_weight, np.float64), -np.inf)
    out = np.exp(logw - logw.max(axis=1, keepdims=True)) * affinity
    return out / out.sum(axis=1, keepdims=True)


def exp_rows(z) -> np.ndarray:
    """Rows ∝ ``exp(z)`` normalised to sum 1, float64 [R, I], from log weights ``z`` [R, I]
    (−inf: weight 0). Each row is scaled by its largest term before the exponential, so no row
    underflows to 0/0; a row that is −inf throughout comes back all zeros."""
    z = np.asarray(z, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    s = p.sum(axis=1, keepdims=True)
    return np.divide(p, s, out=np.zeros_like(p), where=s > 0)


def dirichlet_rows(rng, concentration: float, support) -> np.ndarray:
    """Per row of the bool mask ``support`` [n, m], a ``Dirichlet(concentration)`` draw over
    its true columns (zeros elsewhere), float64 [n, m]; every row of ``support`` needs a true
    column.

    Drawn as normalised Gamma variates. With a tiny concentration every Gamma draw of a row can
    underflow to 0 (the limit of the Dirichlet there puts all mass on one column); such a row
    gets all its mass on one of its columns, picked uniformly (these extra draws are made only
    then, so other rows and other settings draw exactly as before).
    """
    gam = rng.gamma(concentration, size=support.shape) * support
    total = gam.sum(axis=1, keepdims=True)
    empty = np.flatnonzero(total[:, 0] == 0)
    if empty.size:
        keys = np.where(support[empty], rng.random((empty.size, support.shape[1])), -1.0)
        gam[empty] = 0.0
        gam[empty, np.argmax(keys, axis=1)] = 1.0
        total[empty] = 1.0
    return gam / total


def _probs3(p, what):
    try:
        p = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 3 probabilities (for 1, 2, 3) summing to 1; "
                         f"got {p!r}") from None
    if p.shape != (3,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"{what} must be 3 probabilities (for 1, 2, 3) summing to 1; got {p}")
    return p / p.sum()


def _weighted_sets(rng, log_weights, sizes):
    """Bool [n, G]: row r holds sizes[r] distinct columns drawn without replacement ∝ weights."""
    keys = log_weights[None, :] + rng.gumbel(size=(sizes.size, log_weights.size))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rank < sizes[:, None]


def random_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct uniformly random raw 64-bit IDs, uint64 [n], drawn from ``rng``."""
    ids = rng.integers(0, U64_MAX, size=n, dtype=np.uint64, endpoint=True)
    while np.unique(ids).size != n:  # pragma: no cover  (probability ~ n^2 / 2^65)
        ids = rng.integers(0, U64_MAX, size=n, dtype=np.uint64, endpoint=True)
    return ids


#: Most rounds of i.i.d. draws before the users still short of items are finished by Gumbel
#: keys (the default power_law() needs 7).
_STREAM_ROUNDS = 30
#: A round after the first that would draw more than this many times all users' items goes to
#: the Gumbel-key finish instead: the missing items then have tiny p(i|u), and the rounds grow
#: (each draws twice as many per missing item). The rounds of power_law's defaults draw 0.7x
#: and less after the first, so their data are as before.
_STREAM_BUDGET = 3.0
#: Users per block of the Gumbel-key finish.
_FALLBACK_BLOCK = 256


def _sample_without_replacement(rng, truth, item_genres, n_u, max_rounds=_STREAM_ROUNDS):
    """Per user u, the first n_u[u] distinct items of an i.i.d. stream from p(.|u).

    Returns (users, items) int64 [sum n_u], sorted by user, in consumption order within a user.
    """
    U, G = truth.user_mix.shape
    I = truth.n_items
    # genre -> items, with the cumulative p(i|g) offset by g so one searchsorted serves all g
    by_genre = item_genres.transpose()                              # [G, I]
    g_of = by_genre.row_ids()
    p_ig = truth.genre_item_prob[g_of, by_genre.indices]
    cum = np.cumsum(p_ig)
    cum -= np.repeat(cum[by_genre.indptr[:-1]] - p_ig[by_genre.indptr[:-1]], by_genre.lengths())
    g_key = g_of + np.minimum(cum, 1.0)
    u_key = (np.arange(U)[:, None] + np.cumsum(truth.user_mix, axis=1).clip(max=1.0)).ravel()

    acc_u = np.zeros(0, np.int64)
    acc_i = np.zeros(0, np.int64)
    have = np.zeros(U, np.int64)
    for r in range(max_rounds):
        todo = np.flatnonzero(have < n_u)
        if todo.size == 0:
            break
        draws = (n_u[todo] - have[todo]) * (2 << min(r, 8)) + 8
        if r > 0 and draws.sum() > _STREAM_BUDGET * n_u.sum():
            break  # the missing items are rare draws: finish by Gumbel keys (below)
        du = np.repeat(todo, draws)
        pos = np.searchsorted(u_key, du + rng.random(du.size), side="right")
        g = np.minimum(pos - du * G, G - 1)
        pos = np.searchsorted(g_key, g + rng.random(du.size), side="right")
        pos = np.minimum(pos, by_genre.indptr[g + 1] - 1)
        di = by_genre.indices[pos]
        acc_u, acc_i, have = _first_distinct(np.concatenate([acc_u, du]),
                                             np.concatenate([acc_i, di]), n_u, I)
    todo = np.flatnonzero(have < n_u)
    if todo.size:
        # Users the stream has not served by now want nearly all of their support, some of it
        # at tiny p(i|u) that i.i.d. draws almost never reach (a steep zipf_s: each further
        # round cost more than the last, 57 s at zipf_s = 3 with 30 rounds). Their remaining
        # items are drawn by Gumbel keys over the items not yet taken: successive sampling
        # without replacement, the same law as the rest of the stream.
        extra_u, extra_i = [acc_u], [acc_i]
        start = np.cumsum(have) - have
        for b in range(0, todo.size, _FALLBACK_BLOCK):
            rows = todo[b:b + _FALLBACK_BLOCK]
            with np.errstate(divide="ignore"):
                keys = np.log(truth.prob(rows)) + rng.gumbel(size=(rows.size, I))
            for j, u in enumerate(rows):
                keys[j, acc_i[start[u]:start[u] + have[u]]] = -np.inf
            want = n_u[rows] - have[rows]
            top = np.argsort(-keys, axis=1, kind="stable")[:, : int(want.max())]
            take = np.arange(top.shape[1])[None, :] < want[:, None]
            extra_u.append(np.repeat(rows, want))
            extra_i.append(top[take].astype(np.int64))
        acc_u, acc_i, have = _first_distinct(np.concatenate(extra_u), np.concatenate(extra_i),
                                             n_u, I)
    return acc_u, acc_i


def _first_distinct(users, items, n_u, n_items):
    """Keep, per user, the first n_u distinct items in stream order (stable)."""
    key = users * np.int64(n_items) + items
    _, first = np.unique(key, return_index=True)
    first.sort()                                    # stream order
    order = first[np.argsort(users[first], kind="stable")]
    u, i = users[order], items[order]
    counts = np.bincount(u, minlength=n_u.size)
    start = np.cumsum(counts) - counts
    rank = np.arange(u.size) - np.repeat(start, counts)
    keep = rank < n_u[u]
    u, i = u[keep], i[keep]
    return u, i, np.bincount(u, minlength=n_u.size)

