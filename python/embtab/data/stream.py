"""A time-ordered stream: items are born and fade, users join (docs/experiments.md, "Stream").

:func:`power_law_stream` puts the generator-v2 truth (:class:`~embtab.data.LatentTruth`: users'
taste p(i|u) of a chosen rank, merit, exposure bias, user groups) on a time line of
``n_windows`` windows, so that the IDs a model must hold keep changing, as in Monolith's
production setting:

* **Items are born.** A share ``item_birth_share`` of the items (a uniformly random set,
  independent of popularity: a new item may be a head item) is born in a window drawn
  uniformly from 1 .. W−1; the others are born in window 0. No item is consumed before its
  birth.
* **Items fade.** An item born in window b has vitality
  ``v_w(i) = 2 ** (-(w - b) / half_life)`` in window w >= b, 0 before (``half_life`` = inf:
  no fading). The truth at window w is ``p_w(i|u) ∝ p(i|u) · v_w(i)`` (:meth:`StreamTruth.at`).
* **Users join.** A share ``user_join_share`` of the users joins in a window drawn uniformly
  from 1 .. W−1; the others are there from window 0. A user stays active once joined.
* **Consumption.** User u has a rate λ_u (log-normal with mean ``interactions_per_window`` and
  log-sd ``activity_sigma``); in each window w from their join on they consume
  ``Poisson(λ_u)`` distinct items they have not consumed before, without replacement from
  ``c_w(i|u) ∝ p(i|u) · exposure(i) · v_w(i)`` (successive sampling by Gumbel keys, as
  :func:`~embtab.data.power_law_v2`). ``timestamps`` hold the window index w.

:func:`time_windows` cuts any data set with timestamps into equal-width time windows (what
``embtab experiment stream`` does with ``movielens:PATH`` and ``interactions:PATH`` files that
carry a timestamp column); on a stream from :func:`power_law_stream` with as many windows it
returns the generator's windows exactly. Data without timestamps is refused (a ``ValueError``
naming the data set): file order is not a time order (``Interactions`` keeps its pairs sorted
by user and item), so no window could be trusted.

Example::

    >>> d = power_law_stream(n_users=100, n_items=150, n_windows=4, seed=0)
    >>> w = time_windows(d)
    >>> bool((w == d.timestamps).all()), int(w.max())
    (True, 3)
    >>> born_late = d.truth.item_birth > 0
    >>> bool((d.timestamps >= d.truth.item_birth[d.items]).all())   # none consumed unborn
    True
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from embtab._checks import check_memory
from embtab.data.containers import Interactions
from embtab.data.generator_v2 import DEFAULT_RANK, LatentTruth, power_law_v2, power_law_v2_bytes
from embtab.data.synthetic import check_name, exp_rows, expected_interactions, lognormal_mu
from embtab.data.truth import Truth

__all__ = ["STREAM_KEYS", "StreamTruth", "WindowTruth", "power_law_stream", "time_windows"]

#: The arguments of :func:`power_law_stream` that are its own (the rest go to
#: :func:`~embtab.data.power_law_v2`).
STREAM_KEYS = frozenset({"n_windows", "interactions_per_window", "item_birth_share",
                         "half_life", "user_join_share"})


@dataclass(frozen=True, eq=False)
class StreamTruth(Truth):
    """The truth of :func:`power_law_stream`: a v2 taste with item life cycles and user joins.

    As a :class:`~embtab.data.Truth` it is the time-free taste p(i|u) of ``base``;
    :meth:`at` gives the truth of one window, p_w(i|u) ∝ p(i|u) · v_w(i).

    Attributes
    ----------
    base : LatentTruth
        The users' taste (generator v2).
    item_birth : ndarray of int64, shape [I]
        Window in which each item is born.
    user_join : ndarray of int64, shape [U]
        Window in which each user joins.
    half_life : float
        Windows after which an item's vitality halves (``inf``: no fading).
    n_windows : int
    params : dict
        The generator's own arguments (those of :data:`STREAM_KEYS`).
    """

    base: LatentTruth
    item_birth: np.ndarray
    user_join: np.ndarray
    half_life: float
    n_windows: int
    params: dict

    @property
    def n_users(self) -> int:
        return self.base.n_users

    @property
    def n_items(self) -> int:
        return self.base.n_items

    def prob(self, users=None) -> np.ndarray:
        """The time-free taste p(i|u), float64 [len(users), I] (all users when ``None``)."""
        return self.base.prob(users)

    def pair_prob(self, users, items) -> np.ndarray:
        """The time-free taste p(i|u) of parallel users and items, float64 [n]."""
        return self.base.pair_prob(users, items)

    def vitality(self, window: int) -> np.ndarray:
        """v_w(i), float64 [I]: 0 before the item's birth, ``2**(-(w - birth) / half_life)``
        from it on (1 for every born item when ``half_life`` is inf)."""
        w = _window(window, self.n_windows)
        age = w - self.item_birth
        with np.errstate(over="ignore"):
            v = np.exp2(-age / self.half_life) if math.isfinite(self.half_life) \
                else np.ones(self.n_items)
        return np.where(age >= 0, v, 0.0)

    def log_vitality(self, window: int) -> np.ndarray:
        """ln v_w(i), float64 [I]: −inf before the item's birth, ``−(w − birth) · ln 2 /
        half_life`` from it on, computed directly (v_w itself underflows to 0 for a tiny
        ``half_life``, while the ratios between items of one window stay finite)."""
        w = _window(window, self.n_windows)
        age = w - self.item_birth
        with np.errstate(over="ignore"):   # a huge rate · age: -inf, vitality 0
            lv = -age * (math.log(2.0) / self.half_life) if math.isfinite(self.half_life) \
                else np.zeros(self.n_items)
        return np.where(age >= 0, lv, -np.inf)

    def alive(self, window: int) -> np.ndarray:
        """Items born by ``window``, bool [I]."""
        return self.item_birth <= _window(window, self.n_windows)

    def at(self, window: int, users=None, items=None) -> WindowTruth:
        """The truth of ``window``: p_w(i|u) ∝ p(i|u) · v_w(i), over the items where ``items``
        (bool [I], default all) is true; rows follow ``users`` (default all users)."""
        users = np.arange(self.n_users) if users is None else np.asarray(users, np.int64)
        weight = self.vitality(window)
        log_weight = self.log_vitality(window)
        if items is not None:
            items = np.asarray(items, dtype=bool)
            if items.shape != (self.n_items,):
                raise ValueError(f"items must be a bool mask of shape ({self.n_items},); got "
                                 f"{items.shape}")
            weight = weight * items
            log_weight = np.where(items, log_weight, -np.inf)
        return WindowTruth(self.base, users, weight, log_weight)


@dataclass(frozen=True, eq=False)
class WindowTruth(Truth):
    """p_w(i|u) ∝ p(i|u) · weight(i) for the users ``users`` (row r is user ``users[r]``).

    A row whose support is empty (no item of positive weight the user likes) is all zeros.
    """

    base: LatentTruth
    users: np.ndarray
    weight: np.ndarray
    log_weight: np.ndarray | None = None  # ln weight, finite where weight underflowed

    @property
    def n_users(self) -> int:
        return int(self.users.size)

    @property
    def n_items(self) -> int:
        return self.base.n_items

    def prob(self, users=None) -> np.ndarray:
        rows = self.users if users is None else self.users[np.asarray(users, np.int64)]
        if self.log_weight is not None:  # in logs: no underflowed weight empties a row
            with np.errstate(divide="ignore"):
                return exp_rows(np.log(self.base.prob(rows)) + self.log_weight[None, :])
        p = self.base.prob(rows) * self.weight[None, :]
        s = p.sum(axis=1, keepdims=True)
        return np.divide(p, s, out=np.zeros_like(p), where=s > 0)

    def pair_prob(self, users, items) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return self.prob(users)[np.arange(users.size), np.asarray(items, np.int64)]


#: power_law_v2 arguments that power_law_stream refuses, each with the reason: it draws its
#: own per-window interactions, and the crowding setting has no time line.
_REFUSED_WHY = {
    "interactions_per_user": "it draws its own interactions: use interactions_per_window",
    "crowding": "the crowding setting has no time line",
    "crowding_split": "it belongs to the crowding setting, which has no time line",
}
REFUSED_V2_KEYS = tuple(_REFUSED_WHY)


def power_law_stream_bytes(n_users, n_items, n_windows, interactions_per_window,
                           rank) -> int:
    """An upper-ish estimate of :func:`power_law_stream`'s peak memory in bytes (beyond the
    interpreter and its imports), computed before anything is allocated: the v2 base data set
    (:func:`~embtab.data.generator_v2.power_law_v2_bytes` at ``round(interactions_per_window)``
    per user; its blocks of 1,024 users × ``n_items`` keys are as large as the stream's own and
    freed before them, so they count once), the ``n_users`` × ``n_items`` bool matrix of the
    items each user has consumed, and 160 bytes per interaction of the stream (at most
    min(``interactions_per_window`` · ``n_windows`` + 1, ``n_items``) per user: the windows'
    users, items and times, their concatenation and the final :class:`Interactions`).

    Measured by ``bench/parts/generator_memory.py`` (the process's peak RSS less its peak
    after the imports; rank 16, 8 windows and 8 per window unless said): 2,000 users × 3,000
    items 181 MB against 180 MB estimated; 20,000 × 10,000 with 4 windows 574 MB / 844 MB;
    5,000 × 50,000 at 20 per window 2.1 GB / 2.9 GB.
    """
    U, I = int(n_users), int(n_items)
    per_user = max(1, round(interactions_per_window))
    stream = expected_interactions(U, I, float(interactions_per_window) * int(n_windows))
    return power_law_v2_bytes(U, I, rank, per_user) + U * I + 160 * stream


def power_law_stream(n_users: int = 2000, n_items: int = 3000, *, n_windows: int = 8,
                     interactions_per_window: float = 8.0, item_birth_share: float = 0.5,
                     half_life: float = 2.0, user_join_share: float = 0.5,
                     activity_sigma: float = 0.5, seed: int = 0, name: str = "stream",
                     **v2) -> Interactions:
    """A seeded time-ordered stream on a generator-v2 truth (see the module docstring).

    Parameters
    ----------
    n_users, n_items : int
        All users and items over the whole stream (those born or joining later included).
    n_windows : int
        W >= 1 time windows; ``timestamps`` hold the window index 0 .. W−1.
    interactions_per_window : float > 0
        Mean items an active user consumes per window.
    item_birth_share : float in [0, 1)
        Share of items born after window 0 (exactly ``round(share · I)`` items, born uniformly
        over windows 1 .. W−1); > 0 needs W >= 2.
    half_life : float > 0 or inf
        Windows after which an item's vitality halves; inf: items never fade. The decay rate
        ln 2 / half_life must be finite (a subnormal half_life such as 5e-324 is refused).
    user_join_share : float in [0, 1)
        Share of users joining after window 0 (``round(share · U)``, uniformly over 1 .. W−1).
    activity_sigma : float >= 0
        Log-sd of the users' rates.
    seed : int
        Seeds the taste (passed to :func:`~embtab.data.power_law_v2`) and the time line.
    name : str
    **v2
        Other arguments of :func:`~embtab.data.power_law_v2` (``rank``, ``merit``,
        ``exposure``, ``zipf_s``, ``n_genres``, ...): the taste and the exposure bias.

    Returns
    -------
    Interactions
        ``truth`` is a :class:`StreamTruth`; the raw IDs and genres are those of the v2 data
        set with the same arguments and seed.

    Raises
    ------
    ValueError
        An argument out of range, naming it; ``interactions_per_user``, ``crowding`` and
        ``crowding_split`` (the stream draws its own interactions, and the crowding setting
        has no time line).
    MemoryError
        Sizes whose estimated peak memory (:func:`power_law_stream_bytes`: with the
        ``n_users`` × ``n_items`` record of consumed items) exceeds this machine's RAM + swap,
        naming them, before anything is allocated.

    Warns
    -----
    UserWarning
        When the stream holds less than half of the interactions the users' rates drew: each
        user consumes an item at most once, and only an item already born that they can
        like, so a catalogue small against ``interactions_per_window · n_windows``, a narrow
        taste or most items born late runs the users dry (the message gives both counts). A
        tiny ``half_life`` does not: a faded item's weight shrinks against the newer ones' but
        stays > 0, so it can still be consumed.

    Example::

        >>> d = power_law_stream(n_users=200, n_items=300, n_windows=4, item_birth_share=0.5,
        ...                      seed=1)
        >>> int((d.truth.item_birth > 0).sum())            # round(0.5 * 300) items born late
        150
    """
    W = _count(n_windows, "n_windows")
    check_name(name)
    for what, v, hi in (("item_birth_share", item_birth_share, 1.0),
                        ("user_join_share", user_join_share, 1.0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v < hi:
            raise ValueError(f"{what} must be a number in [0, 1); got {v!r}")
        if v > 0 and W < 2:
            raise ValueError(f"{what} > 0 needs n_windows >= 2 (something must happen after "
                             f"window 0); got n_windows={W}")
    if isinstance(half_life, bool) or not isinstance(half_life, numbers.Real) \
            or not half_life > 0 or math.isnan(half_life):
        raise ValueError(f"half_life must be a number > 0 (inf: no fading); got {half_life!r}")
    if math.isfinite(half_life) and not math.isfinite(math.log(2.0) / half_life):
        # the decay rate ln 2 / half_life overflowed: 0 · inf made every window-0 weight NaN
        # and the stream came out empty
        raise ValueError(f"half_life must be a number > 0 with a finite decay rate ln 2 / "
                         f"half_life (inf: no fading); got {half_life!r}")
    if isinstance(interactions_per_window, bool) or \
            not isinstance(interactions_per_window, numbers.Real) or \
            not (interactions_per_window > 0 and math.isfinite(interactions_per_window)):
        raise ValueError("interactions_per_window must be a finite number > 0; got "
                         f"{interactions_per_window!r}")
    if isinstance(activity_sigma, bool) or not isinstance(activity_sigma, numbers.Real) or \
            not (activity_sigma >= 0 and math.isfinite(activity_sigma)):
        raise ValueError(f"activity_sigma must be a finite number >= 0; got {activity_sigma!r}")
    unknown = sorted(set(v2) - set(inspect.signature(power_law_v2).parameters)
                     - {"n_users", "n_items", "interactions_per_user", "activity_sigma", "seed"})
    if unknown:
        raise TypeError(f"power_law_stream() got an unexpected keyword argument "
                        f"{unknown[0]!r} (it takes its own arguments and those of "
                        "power_law_v2)")
    for key, why in _REFUSED_WHY.items():
        if key in v2:
            raise ValueError(f"power_law_stream takes no {key} ({why})")
    _check_stream_memory(n_users, n_items, W, interactions_per_window, v2)
    with warnings.catch_warnings():
        # the base's interactions are not the stream's (only its truth, IDs and genres are
        # used): its warning that they fall short of interactions_per_user would mislead
        warnings.filterwarnings("ignore", r"power_law_v2: interactions_per_user=", UserWarning)
        base = power_law_v2(n_users, n_items, interactions_per_user=max(
            1, round(interactions_per_window)), activity_sigma=activity_sigma, seed=seed, **v2)
    truth = base.truth
    U, I = truth.n_users, truth.n_items
    rng = np.random.default_rng([int(seed), 0x5EA])

    item_birth = np.zeros(I, dtype=np.int64)
    late = rng.permutation(I)[: int(round(item_birth_share * I))]
    item_birth[late] = rng.integers(1, max(W, 2), size=late.size)
    user_join = np.zeros(U, dtype=np.int64)
    late = rng.permutation(U)[: int(round(user_join_share * U))]
    user_join[late] = rng.integers(1, max(W, 2), size=late.size)
    stream = StreamTruth(base=truth, item_birth=item_birth, user_join=user_join,
                         half_life=float(half_life), n_windows=W,
                         params=dict(n_windows=W, interactions_per_window=
                                     float(interactions_per_window),
                                     item_birth_share=float(item_birth_share),
                                     half_life=float(half_life),
                                     user_join_share=float(user_join_share),
                                     activity_sigma=float(activity_sigma), seed=seed))

    mu = lognormal_mu(interactions_per_window, activity_sigma)
    rate = np.minimum(rng.lognormal(mu, activity_sigma, size=U), I)  # none consumes > I items
    consumed = np.zeros((U, I), dtype=bool)
    users, items, times = [], [], []
    drawn = 0   # the interactions the users' rates drew, before each window's cap
    for w in range(W):
        log_vit = stream.log_vitality(w)
        active = np.flatnonzero(user_join <= w)
        n_w = rng.poisson(rate[active])
        drawn += int(n_w.sum())
        for s in range(0, active.size, 1024):
            rows = active[s:s + 1024]
            # ln(p · exposure · vitality), summed in logs (an extreme exposure cannot underflow
            # a row); items already consumed get -inf
            lw = truth.log_consumption_weight(rows) + log_vit[None, :]
            lw[consumed[rows]] = -np.inf
            n = np.minimum(n_w[s:s + 1024], np.count_nonzero(lw > -np.inf, axis=1))
            keys = lw + rng.gumbel(size=lw.shape)
            kmax = max(int(n.max(initial=0)), 1)
            top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1),
                                                     axis=1, kind="stable"), axis=1)
            take = np.arange(kmax)[None, :] < n[:, None]
            u, i = np.repeat(rows, n), top[take]
            consumed[u, i] = True
            users.append(u)
            items.append(i)
            times.append(np.full(u.size, w, dtype=np.int64))
    users, items = np.concatenate(users), np.concatenate(items)
    _warn_capped_windows(interactions_per_window, drawn, users.size, U, I, W)
    return Interactions(name=name, user_ids=base.user_ids, item_ids=base.item_ids,
                        users=users, items=items,
                        timestamps=np.concatenate(times), item_genres=base.item_genres,
                        genre_names=base.genre_names, truth=stream)


def _check_stream_memory(n_users, n_items, W, interactions_per_window, v2) -> None:
    """MemoryError naming the sizes when the stream would need more than this machine's RAM +
    swap (:func:`power_law_stream_bytes`), before the base data set is drawn. Sizes of the
    wrong type or range are left to :func:`~embtab.data.power_law_v2`, which refuses them
    before it allocates anything."""
    rank = v2.get("rank")
    sizes = (n_users, n_items) + (() if rank is None else (rank,))
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1
           for v in sizes):
        return
    r = min(DEFAULT_RANK, int(n_users), int(n_items)) if rank is None else int(rank)
    check_memory(power_law_stream_bytes(n_users, n_items, W, interactions_per_window, r),
                 f"n_users={n_users}, n_items={n_items}, n_windows={W}, "
                 f"interactions_per_window={interactions_per_window}: power_law_stream")


def _warn_capped_windows(interactions_per_window, drawn: int, got: int, U: int, I: int,
                         W: int) -> None:
    """Warn (``UserWarning``, pointing at the caller of :func:`power_law_stream`) when the
    stream holds less than half of the interactions the users' rates drew: a user consumes
    each item at most once, and only items already born and liked (p(i|u) > 0), so a
    catalogue small against ``interactions_per_window · n_windows``, a narrow taste (``rank``,
    ``n_genres``) or most items born late (``item_birth_share``) leaves the later windows with
    far fewer interactions than asked."""
    if drawn == 0:
        warnings.warn(f"power_law_stream: interactions_per_window={interactions_per_window} "
                      f"drew no interaction over {W} window{'s' if W != 1 else ''}: the "
                      "stream is empty", UserWarning, stacklevel=3)
        return
    if got >= 0.5 * drawn:
        return
    warnings.warn(
        f"power_law_stream: interactions_per_window={interactions_per_window} drew {drawn:,} "
        f"interactions over {W} window{'s' if W != 1 else ''}, but the stream holds only "
        f"{got:,} ({got / drawn:.0%}): each of the {U:,} users consumes an item at most once, "
        f"and only items of the {I:,} already born that they can like; a catalogue small for "
        f"the windows (n_items against interactions_per_window x n_windows), a narrow taste "
        f"(rank, n_genres) or most items born late (item_birth_share) runs the users dry",
        UserWarning, stacklevel=3)


def time_windows(data: Interactions, n_windows: int | None = None) -> np.ndarray:
    """The time window of each interaction, int64 [N] in 0 .. n_windows−1.

    Equal-width windows over the timestamps: with t0, t1 the first and last timestamp and
    span = t1 − t0 + 1, an interaction at t is in window ``floor((t − t0) · n / span)`` (exact
    integer arithmetic). On a :func:`power_law_stream` data set with ``n_windows`` equal to its
    own (the default there), it is the generator's window index, the timestamp itself, also
    when the first or last windows hold no interaction (equal-width windows over the
    timestamps present would have shifted them).

    Parameters
    ----------
    data : Interactions
        Must have ``timestamps``.
    n_windows : int, optional
        Default: the stream's own count for :func:`power_law_stream` data; required otherwise.
        At most 2**63 (the window indices are int64). The cost does not grow with
        ``n_windows`` beyond the N interactions: the window boundaries are listed only when
        there are fewer of them than interactions.

    Raises
    ------
    ValueError
        ``data`` has no timestamps (message names the data set: file order is not a time
        order), or ``n_windows`` is missing, < 1 or > 2**63.

    Example::

        >>> d = Interactions.from_raw([1, 1, 2, 2], [5, 6, 5, 7], timestamps=[0, 99, 50, 100])
        >>> time_windows(d, 2).tolist()        # span 101: windows [0, 50] and [51, 100]
        [0, 1, 0, 1]
    """
    if data.timestamps is None:
        raise ValueError(f"data set {data.name!r} has no timestamps, so it has no time line: "
                         "give the interactions file a 4th column (user item weight "
                         "timestamp), or use a 'stream:...' data set (file order is not used "
                         "as time: it is lost when the pairs are sorted)")
    if n_windows is None:
        if not isinstance(data.truth, StreamTruth):
            raise ValueError(f"n_windows is required for data set {data.name!r} (only a "
                             "'stream:' data set knows its own window count)")
        n_windows = data.truth.n_windows
    n = _count(n_windows, "n_windows")
    if n > 1 << 63:
        raise ValueError(f"n_windows must be <= 2**63 (window indices are int64); got {n}")
    t = data.timestamps
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(data.truth, StreamTruth) and n == data.truth.n_windows \
            and int(t.min()) >= 0 and int(t.max()) < n:
        return t.astype(np.int64)   # the stream's own windows (see above)
    t0, t1 = int(t.min()), int(t.max())
    span = t1 - t0 + 1
    if n - 1 > t.size:
        # more boundaries than interactions (n_windows = 2**62 listed 2**62 of them): the
        # formula itself, in Python ints, once per distinct timestamp
        uniq, inverse = np.unique(t, return_inverse=True)
        win = [(int(v) - t0) * n // span for v in uniq.tolist()]
        return np.array(win, dtype=np.int64)[inverse.ravel()]
    # Window j starts at offset ceil(j * span / n) from t0 (Python ints). Offsets t - t0 are
    # in [0, span) and the starts in [0, span] (span <= 2**64, a start < 2**64): both fit in
    # uint64, where a start past INT64_MAX (span < n near the top of the range) does too.
    starts = np.array([-(-j * span // n) for j in range(1, n)], dtype=np.uint64)
    offsets = t.astype(np.int64).view(np.uint64) - np.uint64(t0 % (1 << 64))
    return np.searchsorted(starts, offsets, side="right").astype(np.int64)


def _count(v, what) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be an integer >= 1; got {v!r}")
    return int(v)


def _window(w, n_windows) -> int:
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= w < n_windows:
        raise ValueError(f"window must be an integer in [0, {n_windows}); got {w!r}")
    return int(w)
