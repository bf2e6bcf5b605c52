"""Generator v2: a planted truth of chosen rank, with merit, exposure bias, user propensity.

:func:`power_law_v2` separates the things that :func:`embtab.data.power_law` ties together, so
that each claim of the experiments can be tested where it should and should not appear
(``docs/experiments.md``, "Generator v2"):

* the **intrinsic rank** ``rank`` of the true preference matrix P[u, i] = p(i|u), independent
  of the number of genres used for calibration;
* the **merit** of an item (what the preference follows) versus its **popularity** (what the
  logging exposes): ``merit`` = ρ sets how far merit follows popularity;
* **exposure bias** ``exposure`` = γ: the observed interactions are what users consumed when
  item i was shown with weight ∝ popularity(i)^γ (missing-not-at-random logging);
* **user popularity propensity**: niche, diverse and blockbuster users (``niche_share``,
  ``blockbuster_share``), as in Abdollahpouri et al. (2019, 2021);
* items with one **main genre**, so a user's genre mix measures the balance of their interests,
  and a **crowding-out** setting (``crowding=True``) with 70/30 users.

The generative story (all draws from ``numpy.random.default_rng(seed)``):

1. **Items.** A random permutation gives popularity ranks; ``popularity(i) = rank(i)**-zipf_s``.
   A second, independent permutation gives ``indep(i) = rank2(i)**-zipf_s``;
   ``merit(i) = popularity(i)**ρ · indep(i)**(1 - ρ)`` (ρ = 1: merit is popularity, as in
   ``power_law``; ρ = 0: merit is independent of popularity, with the same Zipf shape). Each
   item has one genre, drawn with prevalence ∝ (g + 1)**-0.5; every genre gets an item.
2. **Factors.** There are ``rank`` = r latent taste factors, each a distribution φ_k over items.
   With r >= 2, factor 0 is the *mainstream* factor, φ_0(i) ∝ merit(i)**beta over the whole
   catalogue. The other factors are *taste* factors: factor k has a home genre h(k) (the first
   ones cover distinct genres, drawn by prevalence), and
   φ_k(i) ∝ merit(i)**beta · a_k(genre(i)) · ε_k(i), with a_k(g) = 1 − leak for g = h(k) and
   leak / G spread over all genres (``genre_leak``), and ε_k(i) log-normal with log-sd
   ``taste_sigma`` (so several factors can share a genre and still be linearly independent:
   the rank does not depend on the number of genres).
3. **Users.** Each user is *niche*, *diverse* or *blockbuster* with probabilities
   ``niche_share``, 1 − the other two, ``blockbuster_share``; their weight on the mainstream
   factor is η = 0, 0.1, 0.5 (:data:`MAINSTREAM_WEIGHT`). The rest, 1 − η, is a
   ``Dirichlet(mix_concentration)`` mix over 1, 2 or 3 taste factors (probabilities
   ``interests_per_user``; factors picked ∝ the prevalence of their home genre). So
   p(i|u) = Σ_k θ[u, k] φ_k(i): P = θ Φ has rank at most r (exactly r for generic draws).
4. **Consumption.** User u consumes ``n_u`` distinct items (log-normal activity as in
   ``power_law``), sampled without replacement from c(i|u) ∝ p(i|u) · popularity(i)**γ
   (successive sampling, by Gumbel keys); ``timestamps`` record that order. γ = 0: consumption
   follows the true preference. ``n_u`` is at most the number of items u can like; a
   ``UserWarning`` says when that cap leaves the users less than half of the interactions
   their activity draws asked for (``rank=1``, or a catalogue too small).
5. **IDs.** Distinct uniformly random 64-bit raw IDs, as in ``power_law``.

Popularity is not ``zipf_s`` alone: genre prevalence ∝ (g + 1)**-0.5 makes the items of the
first genres more liked (a taste factor's home genre and a user's factors are drawn by it),
and ``taste_sigma`` spreads each factor over its items. So ``zipf_s`` near 0 does not give a
flat-popularity control here, as it nearly does in ``power_law``: check the data set's own
concentration (``Interactions.summary()["top1pct_share"]``, or ``item_counts()``) before
reading a run as one.

``crowding=True`` is Steck's crowding-out case: one taste factor per genre (r = n_genres, no
mainstream factor, no leak), every user has exactly two interest genres weighted 70/30
(``crowding_split``), all users "diverse", and by default a flat within-genre preference
(β = 0, ``taste_sigma`` = 0.5). A user's top of p(·|u) then holds almost only the majority
genre: the oracle's top-10 holds a much smaller minority share than the 30% of the
preference (how much smaller depends on the catalogue; E6 measures it per run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embtab._checks import check_memory
from embtab.data.containers import Interactions, RowSets
from embtab.data.synthetic import (
    INTERESTS_PER_USER,
    check_generator_args,
    check_name,
    check_log_scale,
    check_seed,
    check_triple_cap,
    dirichlet_rows,
    draw_activity,
    exp_rows,
    expected_interactions,
    genre_weights,
    random_ids,
    warn_capped_activity,
)
from embtab.data.truth import Truth

__all__ = ["DEFAULT_RANK", "GROUPS", "MAINSTREAM_WEIGHT", "V2_KEYS", "LatentTruth", "power_law_v2"]

#: The planted user groups, in the order of ``LatentTruth.user_group``.
GROUPS: tuple[str, ...] = ("niche", "diverse", "blockbuster")

#: Weight η of the mainstream factor in the preference of each user group (order of GROUPS).
MAINSTREAM_WEIGHT: tuple[float, ...] = (0.0, 0.1, 0.5)

#: The rank of the truth when ``rank`` is not given (outside the crowding setting).
DEFAULT_RANK = 16

#: Users whose consumption is drawn at a time (rows of the [users, n_items] key matrices).
_CHUNK = 1024

#: The keys of a ``synthetic:key=value,...`` spec that select :func:`power_law_v2`.
V2_KEYS = frozenset({"rank", "merit", "exposure", "niche_share", "blockbuster_share",
                     "taste_sigma", "genre_leak", "crowding", "crowding_split"})



@dataclass(frozen=True, eq=False)
class LatentTruth(Truth):
    """The planted preference of :func:`power_law_v2`: p(i|u) = Σ_k θ[u, k] φ[k, i].

    Implements the truth protocol (``n_users``, ``n_items``, ``prob``, ``pair_prob``) that
    the experiments and the feedback loop read.

    Attributes
    ----------
    user_factors : ndarray of float64, shape [U, r]
        θ: each user's mix over the r factors (rows sum to 1).
    factor_item_prob : ndarray of float64, shape [r, I]
        φ: each factor's distribution over items (rows sum to 1). Row 0 is the mainstream
        factor when ``has_mainstream``.
    popularity : ndarray of float64, shape [I]
        Zipf weight ``rank(i)**-zipf_s`` that drives exposure.
    merit : ndarray of float64, shape [I]
        What the preference follows (``popularity**ρ · indep**(1 - ρ)``).
    exposure : ndarray of float64, shape [I]
        ``popularity**γ``: the logging weight of each item (all ones when γ = 0). For an
        extreme γ (γ · zipf_s · ln rank(i) > 745) it underflows to 0 in the tail; consumption
        is computed from ``log_exposure``, which does not.
    user_group : ndarray of int64, shape [U]
        Planted popularity propensity: index into :data:`GROUPS`.
    factor_genre : ndarray of int64, shape [r]
        Home genre of each factor (-1 for the mainstream factor).
    has_mainstream : bool
    params : dict
        The generator's arguments.
    log_exposure : ndarray of float64, shape [I], optional
        ln exposure(i) = −γ · zipf_s · ln rank(i), computed from the ranks (finite for every
        γ); ``None`` (the default) takes ``log(exposure)``.
    """

    user_factors: np.ndarray
    factor_item_prob: np.ndarray
    popularity: np.ndarray
    merit: np.ndarray
    exposure: np.ndarray
    user_group: np.ndarray
    factor_genre: np.ndarray
    has_mainstream: bool
    params: dict = field(default_factory=dict)
    log_exposure: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.log_exposure is None:
            with np.errstate(divide="ignore"):
                object.__setattr__(self, "log_exposure", np.log(self.exposure))

    @property
    def n_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def n_items(self) -> int:
        return self.factor_item_prob.shape[1]

    @property
    def rank(self) -> int:
        return self.factor_item_prob.shape[0]

    def prob(self, users=None) -> np.ndarray:
        """True preference rows p(i|u), float64 [len(users), I] (all users when ``None``)."""
        th = self.user_factors if users is None else self.user_factors[np.asarray(users,
                                                                                  np.int64)]
        return th @ self.factor_item_prob

    def pair_prob(self, users, items) -> np.ndarray:
        """p(i|u) for parallel arrays of users and items, float64 [n]."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.einsum("nk,kn->n", self.user_factors[users], self.factor_item_prob[:, items])

    def log_consumption_weight(self, users=None) -> np.ndarray:
        """ln(p(i|u) · exposure(i)), float64 [len(users), I] (−inf where p(i|u) = 0): the
        unnormalised log of :meth:`consumption_prob`, summed in logs so that no extreme
        exposure underflows a user's whole row."""
        with np.errstate(divide="ignore"):
            return np.log(self.prob(users)) + self.log_exposure[None, :]

    def consumption_prob(self, users=None) -> np.ndarray:
        """What users consume, c(i|u) ∝ p(i|u) · exposure(i), float64 [len(users), I]."""
        return exp_rows(self.log_consumption_weight(users))


def power_law_v2(n_users: int = 2000, n_items: int = 3000, n_genres: int = 18,
                 interactions_per_user: int = 50, zipf_s: float = 1.1, *, rank: int | None = None,
                 merit: float = 1.0, exposure: float = 0.0, beta: float | None = None,
                 niche_share: float | None = None, blockbuster_share: float | None = None,
                 taste_sigma: float | None = None, genre_leak: float = 0.0,
                 interests_per_user: Sequence[float] = INTERESTS_PER_USER,
                 mix_concentration: float = 1.5, activity_sigma: float = 0.5,
                 crowding: bool = False, crowding_split: float | None = None, seed: int = 0,
                 name: str = "synthetic-v2") -> Interactions:
    """Seeded interaction data from a planted truth of rank ``rank`` (see the module docstring).

    Parameters
    ----------
    n_users, n_items, n_genres : int
        Sizes; ``n_items >= n_genres``.
    interactions_per_user : int
        Mean consumed items per user. A user consumes at most the items they can like (with
        ``genre_leak=0``, those of their taste factors' home genres, and all items only through
        the mainstream factor): with ``rank=1`` or a small catalogue that cap can leave every
        user the same few items, and a ``UserWarning`` says so (asked and held interactions per
        user) when the users hold less than half of what their activity draws asked for.
    zipf_s : float
        Zipf exponent of popularity (and of the independent merit draw), > 0.
    rank : int, optional
        r, the number of latent factors = the rank of the true preference matrix: an integer
        in [1, min(n_users, n_items)] (with r >= 2 one of them is the mainstream factor).
        The numerical rank of ``prob()`` reaches r when the users' mixes span the factors and
        the factors' item rows differ: with few users per factor (each user draws 1-3
        interests, so a factor can go unchosen), very steep merit (``zipf_s · beta`` large,
        each factor's mass on its genre's top item) or home genres with fewer items than
        factors it can be lower; :attr:`LatentTruth.rank` is r, the number of factors.
        Default :data:`DEFAULT_RANK`, or min(n_users, n_items) when that is smaller;
        ``crowding=True`` needs r = n_genres (its default there)
        and n_genres >= 2.
    merit : float in [0, 1]
        ρ: how far merit (what the preference follows) follows popularity. 1: merit is
        popularity; 0: merit is independent of popularity.
    exposure : float >= 0
        γ: consumption ∝ p(i|u) · popularity(i)**γ. 0: unbiased consumption.
    beta : float >= 0, optional
        Weight of merit in every factor (0: uniform within a factor's genre). Default 1, and 0
        with ``crowding``.
    niche_share, blockbuster_share : float in [0, 1], sum <= 1
        Shares of niche and blockbuster users (default 0.2 each; 0 with ``crowding``).
    taste_sigma : float >= 0, optional
        Log-sd of the item-factor noise ε (0 only with r <= number of home genres). Default 1,
        and 0.5 with ``crowding``.
    genre_leak : float in [0, 1]
        Share of a taste factor spread evenly over all genres.
    interests_per_user : sequence of 3 floats
        Probabilities of 1, 2, 3 taste factors per user. No user has more than the taste
        factors there are (r − 1 with the mainstream factor, r without): the default is capped
        at that count, and a triple given with probability on more is refused.
    mix_concentration : float > 0
        Dirichlet concentration of a user's mix over their taste factors.
    activity_sigma : float >= 0
        Log-sd of user activity.
    crowding : bool or 0/1
        Steck's crowding-out setting (module docstring).
    crowding_split : float in (0.5, 1), optional
        The majority genre's weight of a crowding user (default 0.7: 70/30). Only with
        ``crowding=True``: given without it, it is refused (``ValueError`` naming both), as it
        would have no effect.
    seed : int >= 0
    name : str

    Returns
    -------
    Interactions
        ``truth`` is a :class:`LatentTruth`; genres ``"g00", ...`` (one per item);
        timestamps are the consumption order.

    Raises
    ------
    ValueError
        An argument out of range, naming it.
    MemoryError
        Sizes whose estimated peak memory (:func:`power_law_v2_bytes`) exceeds this machine's
        RAM + swap, naming them, before anything is allocated.

    Example::

        >>> d = power_law_v2(n_users=200, n_items=300, rank=4, seed=0)
        >>> int(np.linalg.matrix_rank(d.truth.prob()))
        4
    """
    reals = dict(merit=merit, exposure=exposure, beta=beta, taste_sigma=taste_sigma,
                 genre_leak=genre_leak, mix_concentration=mix_concentration,
                 activity_sigma=activity_sigma, crowding_split=crowding_split,
                 niche_share=niche_share, blockbuster_share=blockbuster_share)
    check_generator_args(n_users, n_items, n_genres, interactions_per_user, zipf_s,
                         **{k: v for k, v in reals.items() if v is not None})
    seed = check_seed(seed)
    U, I, G = int(n_users), int(n_items), int(n_genres)
    crowding = _flag(crowding, "crowding")
    if crowding_split is not None and not crowding:
        # (it was accepted and had no effect; a 'synthetic:crowding_split=0.9' spec even
        # switched to this generator without the crowding setting it was meant for)
        raise ValueError(f"crowding_split={crowding_split!r} applies only with crowding=True "
                         "(the majority genre's weight of a crowding user); give crowding=1 "
                         "too, or drop crowding_split")
    crowding_split = 0.7 if crowding_split is None else crowding_split
    if rank is not None and (isinstance(rank, (bool, np.bool_))
                             or not isinstance(rank, (int, np.integer))):
        raise TypeError(f"rank must be an integer; got {rank!r}")
    beta = (0.0 if crowding else 1.0) if beta is None else float(beta)
    taste_sigma = (0.5 if crowding else 1.0) if taste_sigma is None else float(taste_sigma)
    # The default rank is capped by the matrix's size (a 10 x 12 matrix has rank <= 10); a
    # rank given explicitly is not, and is refused below when it is out of reach.
    r = (G if crowding else min(DEFAULT_RANK, U, I)) if rank is None else int(rank)
    check_name(name)
    if not 0.0 <= merit <= 1.0:
        raise ValueError(f"merit must be in [0, 1]; got {merit}")
    if not (exposure >= 0 and math.isfinite(exposure)):
        raise ValueError(f"exposure must be a finite number >= 0; got {exposure}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    # the log weights: -zipf_s·beta·ln rank (merit), -zipf_s·exposure·ln rank (exposure)
    check_log_scale(I, zipf_s, beta=beta, exposure=exposure)
    if not taste_sigma >= 0:
        raise ValueError(f"taste_sigma must be >= 0; got {taste_sigma}")
    if not math.isfinite(taste_sigma * 64.0):  # the log-normal noise of the factors
        raise ValueError(f"taste_sigma={taste_sigma!r} is too large: the factors' log noise "
                         "would overflow float64")
    if not 0.0 <= genre_leak <= 1.0:
        raise ValueError(f"genre_leak must be in [0, 1]; got {genre_leak}")
    if not mix_concentration > 0:
        raise ValueError(f"mix_concentration must be > 0; got {mix_concentration}")
    if not activity_sigma >= 0:
        raise ValueError(f"activity_sigma must be >= 0; got {activity_sigma}")
    try:
        ipu = np.asarray(interests_per_user, dtype=np.float64)
    except (TypeError, ValueError):
        ipu = np.zeros(0)   # refused below, naming the argument
    if ipu.shape != (3,) or np.any(ipu < 0) or not np.isclose(ipu.sum(), 1.0):
        raise ValueError("interests_per_user must be 3 probabilities (for 1, 2, 3) summing "
                         f"to 1; got {interests_per_user}")
    if crowding:
        if G < 2:
            raise ValueError("crowding=True needs n_genres >= 2 (every user has two interest "
                             f"genres, a majority and a minority one); got n_genres={G}")
        if r != G:
            raise ValueError(f"crowding=True has rank = n_genres = {G}; got rank={rank}")
        r = G
        for nm, v in (("niche_share", niche_share), ("blockbuster_share", blockbuster_share)):
            if v not in (None, 0, 0.0):
                raise ValueError(f"crowding=True has no niche or blockbuster users; got {nm}={v}")
        niche_share = blockbuster_share = 0.0
        if not 0.5 < crowding_split < 1.0:
            raise ValueError(f"crowding_split must be in (0.5, 1); got {crowding_split}")
        genre_leak = 0.0
    if r < 1:
        raise ValueError(f"rank must be >= 1; got {rank}")
    if r > min(U, I):
        how = (f"rank={r}" if rank is not None else
               f"crowding=True sets rank = n_genres = {r}")
        raise ValueError(f"rank must be <= min(n_users, n_items) = {min(U, I)} (a {U} x {I} "
                         f"preference matrix has no higher rank); {how}")
    niche_share = 0.2 if niche_share is None else float(niche_share)
    blockbuster_share = 0.2 if blockbuster_share is None else float(blockbuster_share)
    if not (0 <= niche_share <= 1 and 0 <= blockbuster_share <= 1
            and niche_share + blockbuster_share <= 1):
        raise ValueError("niche_share and blockbuster_share must be in [0, 1] with a sum <= 1; "
                         f"got {niche_share}, {blockbuster_share}")
    has_main = r >= 2 and not crowding
    n_taste = r - 1 if has_main else r
    if not crowding:   # (crowding draws two interest genres per user, whatever the triple)
        check_triple_cap(ipu / ipu.sum(), INTERESTS_PER_USER, n_taste, "interests_per_user",
                         f"the {n_taste} taste factor{'s' if n_taste != 1 else ''} of rank={r}")
    if taste_sigma == 0 and n_taste > G:
        raise ValueError(f"taste_sigma=0 allows at most n_genres ({G}) taste factors; got "
                         f"{n_taste} (rank={r})")
    if taste_sigma == 0 and genre_leak == 1.0 and n_taste > 1:
        raise ValueError(f"taste_sigma=0 with genre_leak=1 makes every taste factor the same "
                         f"(no noise, no home genre): rank={r} needs taste_sigma > 0 or "
                         "genre_leak < 1")
    check_memory(power_law_v2_bytes(U, I, r, interactions_per_user),
                 f"n_users={U}, n_items={I}, rank={r}, interactions_per_user="
                 f"{interactions_per_user}: power_law_v2")
    rng = np.random.default_rng(seed)

    # 1. items: popularity, merit, one main genre each
    rank1, rank2 = rng.permutation(I) + 1.0, rng.permutation(I) + 1.0
    popularity = rank1 ** -float(zipf_s)
    indep = rank2 ** -float(zipf_s)
    item_merit = popularity ** float(merit) * indep ** (1.0 - float(merit))
    # log(merit**beta), so that a steep Zipf exponent or a large beta cannot underflow a factor
    log_merit_beta = -float(zipf_s) * float(beta) * (float(merit) * np.log(rank1)
                                                      + (1.0 - float(merit)) * np.log(rank2))
    prevalence = (np.arange(G) + 1.0) ** -0.5
    genre = rng.choice(G, size=I, p=prevalence / prevalence.sum())
    genre[rng.permutation(I)[:G]] = np.arange(G)                    # every genre gets an item
    item_genres = RowSets.from_pairs(np.arange(I), genre, I, G)

    # 2. factors: mainstream (row 0 when has_main), then taste factors with home genres
    if crowding:
        home = np.arange(G)
    else:
        keys = np.log(prevalence) + rng.gumbel(size=G)
        first = np.argsort(-keys)[: min(n_taste, G)]
        rest = rng.choice(G, size=max(n_taste - G, 0), p=prevalence / prevalence.sum())
        home = np.concatenate([first, rest]).astype(np.int64)
    affinity = np.full((n_taste, G), genre_leak / G)
    affinity[np.arange(n_taste), home] += 1.0 - genre_leak
    log_noise = taste_sigma * rng.standard_normal((n_taste, I)) if taste_sigma > 0 else 0.0
    phi = genre_weights(log_merit_beta[None, :] + log_noise, affinity[:, genre])
    if has_main:
        phi = np.concatenate([genre_weights(log_merit_beta, np.ones((1, I))), phi], axis=0)
    factor_genre = np.concatenate([[-1], home]) if has_main else home

    # 3. users: group, mainstream weight, taste mix
    group = rng.choice(3, size=U, p=[niche_share, max(0.0, 1.0 - niche_share - blockbuster_share),
                                     blockbuster_share])  # (max: shares summing to 1 in floats)
    eta = np.asarray(MAINSTREAM_WEIGHT)[group] if has_main else np.zeros(U)
    if crowding:
        pick = np.argsort(-(np.log(prevalence)[None, :] + rng.gumbel(size=(U, G))), axis=1)
        taste = np.zeros((U, G))
        taste[np.arange(U), pick[:, 0]] = crowding_split
        taste[np.arange(U), pick[:, 1]] = 1.0 - crowding_split
    else:
        n_int = np.minimum(rng.choice(3, size=U, p=ipu / ipu.sum()) + 1, n_taste)
        logw = np.log(prevalence[home])
        keys = logw[None, :] + rng.gumbel(size=(U, n_taste))
        chosen = np.argsort(np.argsort(-keys, axis=1), axis=1) < n_int[:, None]
        taste = dirichlet_rows(rng, float(mix_concentration), chosen)
    theta = np.concatenate([eta[:, None], (1.0 - eta)[:, None] * taste], axis=1) if has_main \
        else taste
    expo = popularity ** float(exposure)
    log_expo = -float(exposure) * float(zipf_s) * np.log(rank1)  # ln expo, with no underflow
    truth = LatentTruth(user_factors=theta, factor_item_prob=phi, popularity=popularity,
                        merit=item_merit, exposure=expo, log_exposure=log_expo,
                        user_group=group.astype(np.int64),
                        factor_genre=factor_genre.astype(np.int64), has_mainstream=has_main,
                        params=dict(n_users=U, n_items=I, n_genres=G,
                                    interactions_per_user=interactions_per_user,
                                    zipf_s=float(zipf_s), rank=r, merit=float(merit),
                                    exposure=float(exposure), beta=float(beta),
                                    niche_share=niche_share,
                                    blockbuster_share=blockbuster_share,
                                    taste_sigma=float(taste_sigma),
                                    genre_leak=float(genre_leak), crowding=crowding,
                                    crowding_split=float(crowding_split), seed=seed))

    # 4. activity and consumption (Gumbel keys: successive sampling without replacement)
    draw, n_u, lo = draw_activity(rng, U, I, interactions_per_user, activity_sigma)
    support = np.empty(U, dtype=np.int64)   # the items each user can consume (c(i|u) > 0)
    users, items, order = [], [], []
    for s in range(0, U, _CHUNK):
        rows = np.arange(s, min(s + _CHUNK, U))
        # Gumbel keys on ln(p · exposure) (the row's normaliser does not change the order), so
        # an extreme exposure cannot underflow a user's row to nothing
        lw = truth.log_consumption_weight(rows)
        support[rows] = np.count_nonzero(lw > -np.inf, axis=1)
        n = np.minimum(n_u[rows], support[rows])
        n_u[rows] = n
        keys = lw + rng.gumbel(size=lw.shape)
        top = np.argsort(-keys, axis=1, kind="stable")
        take = np.arange(I)[None, :] < n[:, None]
        users.append(np.repeat(rows, n))
        items.append(top[take])
        order.append(np.nonzero(take)[1])
    steep = "and, under a steep zipf_s·beta, only those whose weight does not underflow to 0"
    if genre_leak > 0:
        narrow = f"a user consumes at most the n_items={I} items, {steep}"
    else:
        who = ("a niche user (no mainstream factor)" if has_main else
               f"with {'crowding' if crowding else f'rank={r}'} no user has the mainstream "
               f"factor: a user")
        narrow = (f"with genre_leak=0, {who} can like only the items of their taste factors' "
                  f"home genres, of the n_items={I}, {steep}")
    warn_capped_activity("power_law_v2", interactions_per_user, np.maximum(np.rint(draw), lo),
                         n_u, support, narrow,
                         "raise n_items or lower interactions_per_user" if genre_leak > 0 else
                         "raise n_items, rank or genre_leak, or lower interactions_per_user")
    ids_u = random_ids(rng, U)
    ids_i = random_ids(rng, I)
    return Interactions(name=name, user_ids=ids_u, item_ids=ids_i,
                        users=np.concatenate(users), items=np.concatenate(items),
                        timestamps=np.concatenate(order), item_genres=item_genres,
                        genre_names=tuple(f"g{g:02d}" for g in range(G)), truth=truth)



def power_law_v2_bytes(n_users, n_items, rank, interactions_per_user) -> int:
    """An upper-ish estimate of :func:`power_law_v2`'s peak memory in bytes (beyond the
    interpreter and its imports), from its sizes alone, computed before anything is allocated.

    * 48 bytes per element of a block of ``min(n_users, 1024)`` users × ``n_items``: the log
      consumption weights, the Gumbel draws, the keys and their argsort (float64/int64), live
      together while a block is drawn (with many items this term is most of the peak);
    * 160 bytes per interaction (:func:`~embtab.data.synthetic.expected_interactions`): the
      blocks' users, items and order, their concatenation and the final
      :class:`Interactions` (sorted, with its sort key);
    * 40 bytes per factor × item (the factors' noise, affinities and normalised weights) and
      32 per user × factor (the Dirichlet draws, their keys and ranks, θ);
    * 64 bytes per user and per item.

    Measured by ``bench/parts/generator_memory.py`` (the process's peak RSS less its peak
    after the imports; rank 16 and 50 per user unless said): 20,000 users × 3,000 items 191 MB
    against 324 MB estimated; 2,000 × 100,000 at rank 40 4.2 GB / 5.1 GB; 100,000 × 2,000 at
    rank 64 and 20 per user 367 MB / 651 MB; 500,000 × 300 at 1 per user 272 MB / 463 MB.
    """
    U, I, r = int(n_users), int(n_items), int(rank)
    return (48 * min(U, _CHUNK) * I + 160 * expected_interactions(U, I, interactions_per_user)
            + 40 * r * I + 32 * U * r + 64 * (U + I))


def _flag(v, what) -> bool:
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ValueError(f"{what} must be a bool (or 0/1, 'true'/'false'); got {v!r}")
