"""Matrix factorisation on embtab tables: model, BPR training loop, scoring and baselines.

The model scores a (user, item) pair by the dot product of their embeddings, ``s(u, i) =
<e_u, e_i>``, with no bias terms (so the embedding dimension alone limits what it can express;
see experiment E1). Both tables are ``embtab.nn`` modules fed the **raw 64-bit IDs** of
:class:`embtab.data.Interactions`:

* ``table="cuckoo"``: :class:`embtab.nn.CuckooEmbedding`, one row per ID (collisionless). By
  default every ID is inserted up front and the table holds them all. With ``on_full=
  "evict_lru"`` / ``"evict_lfu"`` it holds at most ``max(1, round(rows_per_id * n))`` rows and
  evicts by that policy; with ``min_count > 1`` an ID gets a row from its ``min_count``-th
  sighting in training (frequency admission through a count-min sketch of ``admission_eps``,
  ``admission_delta``); with ``expire_after`` an ID not looked up for that many training
  steps gives its row back (Monolith's expiry). A capped or admitting table starts empty and
  fills as training sees IDs (every training lookup is a sighting: positives, and for BPR the
  sampled negatives); an ID without a row reads the zero vector.
* ``table="hashed"``: :class:`embtab.nn.HashedEmbedding` with
  ``m = max(1, round(rows_per_id * n))`` rows, row = ``mix64(id, seed) % m``.
* ``table="double_hashed"``: :class:`embtab.nn.DoubleHashedEmbedding`, ``m`` rows as above,
  each ID the sum of two rows chosen by two hashes.
* ``table="qr"``: :class:`embtab.nn.QREmbedding` (quotient-remainder, Shi et al. 2020) over
  ``V = max(1, round(rows_per_id * n))`` virtual rows with ``num_collisions = ceil(sqrt(V))``
  (the smallest tables: ``ceil(V / num_collisions) + num_collisions`` rows stored), the two
  rows multiplied elementwise.

``n`` is the number of distinct IDs of the table (items, or users). The item table takes the
design above; the user table is a plain collisionless cuckoo table unless ``hash_users=True``,
which gives the users the same design (kind, ``rows_per_id`` and policies, with ``n`` the
number of users). Keeping users collisionless isolates the effect of item collisions (E2).
:func:`table_design` names a design; the budget experiment (docs/experiments.md) compares them
at equal bytes.

**Multi-persona users** (``personas=K > 1``, AMP-CF: Barkan et al., "Attentive Multi-Persona
Collaborative Filtering", arXiv 2010.07042): user u has K persona vectors p_u1..p_uK of
dimension ``dim`` (the items' dimension), and the score attends over them conditioned on the
candidate item:

    s(u, i) = Σ_k a_k(u, i) <p_uk, q_i>,    a_k(u, i) = softmax_k(<p_uk, q_i> / τ),

τ = ``persona_temperature`` (AMP-CF builds the item-conditioned user vector Σ_k a_k p_uk and
dots it with q_i, which is the same number). The K persona vectors live in **one user table
with K·dim columns** (row = user ID; columns k·dim .. (k+1)·dim − 1 are persona k), so a user is
one lookup, every table design above applies unchanged, and the table's bytes are K times the
single-vector table's at equal ``dim``. An equal-parameter comparison therefore gives the
persona model ``dim = d / K`` (docs/experiments.md, "personas"). ``personas=1`` is the
single-vector model, bit for bit (the same code path).

Training minimises the BPR loss ``-log sigmoid(s(u, i) - s(u, j))`` over the training pairs
``(u, i)`` with one negative ``j`` drawn uniformly from the catalogue per pair (no rejection),
plus ``l2 * (|e_u|^2 + |e_i|^2 + |e_j|^2)`` averaged over the batch, with Adam (default) or
Adagrad, in shuffled minibatches. ``loss="softmax"`` minimises instead the multinomial
negative log-likelihood ``-s(u, i) + log Σ_j exp s(u, j)`` over the full catalogue, plus
``l2 * (|e_u|^2 + |e_i|^2)`` averaged over the batch (Liang et al.'s multinomial likelihood
for implicit feedback, here on dot-product MF). All randomness comes from ``seed``
(``torch.manual_seed`` for nothing but the module init, a ``numpy.random.Generator`` for
shuffling and negatives), so a run is reproducible. ``torch.manual_seed`` seeds torch's
global generator: :func:`fit` (and E5's arms) restart a caller's torch random stream.

Evaluation scores the full catalogue (user vectors @ item vectors for all items), masks each
user's training items to ``-inf`` and takes the top k (:func:`recommend`). The sanity
baselines :func:`most_popular` and :func:`random_topk` obey the same contract. A user with fewer
than k untrained items gets a shorter list, padded with -1 (docs/metrics.md).

Example::

    >>> from embtab.data import power_law, train_test_split
    >>> from embtab.train import TrainConfig, fit, recommend
    >>> data = power_law(n_users=100, n_items=150, interactions_per_user=10, seed=0)
    >>> train, test = train_test_split(data, seed=0)
    >>> model = fit(train, TrainConfig(dim=8, epochs=2), quiet=True)
    >>> recommend(model, train, k=10).shape
    (100, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from embtab._checks import check_int, check_real, check_seed, chunk_rows
from embtab._research import topk_indices
from embtab.data import Interactions, Truth

__all__ = [
    "MIN_PERSONA_TEMPERATURE",
    "MFModel",
    "ModelTruth",
    "OnlineTrainer",
    "TrainConfig",
    "bpr_loss",
    "collision_share",
    "drop_excluded",
    "expected_optimizer_bytes",
    "fit",
    "item_vectors",
    "model_bytes",
    "most_popular",
    "persona_scores",
    "random_topk",
    "recommend",
    "score_matrix",
    "softmax_loss",
    "table_bytes",
    "table_design",
    "user_vectors",
]

_TABLES = ("cuckoo", "hashed", "qr", "double_hashed")
_ON_FULL = ("grow", "evict_lru", "evict_lfu")
_OPTIMIZERS = ("adam", "adagrad")
_LOSSES = ("bpr", "softmax")

#: The smallest ``TrainConfig.persona_temperature``: the persona attention divides float32 dot
#: products by τ, so τ must stay a normal float32 and keep <p, q> / τ below float32's maximum
#: (3.4e38) for every dot product below 3.4e32, far beyond what a model that has not diverged
#: produces; at τ = 1e-6 the softmax over personas is already a hard maximum.
MIN_PERSONA_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (validated on construction; never mutated).

    Parameters
    ----------
    dim : int
        Embedding dimension d (>= 1).
    table : {"cuckoo", "hashed", "qr", "double_hashed"}
        Item (and with ``hash_users`` user) table kind, see the module docstring.
    rows_per_id : float
        Rows m per distinct ID n (m/n > 0): the rows of a hashed or double-hashed table, the
        virtual rows of a quotient-remainder table, the row cap of a cuckoo table with an
        eviction policy. A cuckoo table with ``on_full="grow"`` holds every ID,
        so it needs the default 1.
    hash_users : bool
        The user table takes the item table's design (kind, ``rows_per_id``, policies)
        instead of a plain collisionless cuckoo table (named for the hashed kind; it applies
        to every kind).
    on_full : {"grow", "evict_lru", "evict_lfu"}
        Cuckoo tables only: what a table does when it is full (:class:`embtab.nn.OnFull`).
        ``"grow"`` (default) holds every ID; the eviction policies cap the table at
        ``rows_per_id * n`` rows.
    min_count : int
        Cuckoo tables only: an ID gets a row from its ``min_count``-th sighting (>= 1; 1 = at
        once, the default).
    admission_eps, admission_delta : float
        Cuckoo tables with ``min_count > 1`` only: the count-min sketch's error and failure
        probability (:class:`embtab.nn.CuckooEmbedding`); its size, and so its bytes, is
        ``ceil(e / admission_eps) * ceil(ln(1 / admission_delta))`` int64 counters.
    expire_after : int or None
        Cuckoo tables only: an ID not looked up for ``expire_after`` training steps of its
        table gives its row back (:class:`embtab.nn.CuckooEmbedding`; a step is one
        training-mode forward of the table: one per batch for users, two for items under BPR,
        positives and negatives). ``None`` (default): never.
    loss : {"bpr", "softmax"}
        ``"bpr"``: pairwise BPR with uniform sampled negatives. ``"softmax"``: the multinomial
        likelihood over the whole catalogue, ``-log softmax_i(s(u, ·))`` per training pair
        (every item is a negative; no sampling).
    optimizer : {"adam", "adagrad"}
    lr : float
        Learning rate.
    l2 : float
        L2 penalty on the embeddings of each batch (per example).
    epochs : int >= 0
        Passes over the training pairs. 0 trains nothing: :func:`fit` returns the model as
        initialised (the ``recommend`` scaling benchmark and tests of untrained tables build
        models that way).
    batch_size : int
    init_std : float
        Initial vectors ~ N(0, init_std^2), a function of (seed, ID).
    seed : int
        Seeds the tables' hashing and init, the shuffling and the negatives.
    personas : int
        K >= 1 persona vectors per user, scored by candidate-conditioned attention (module
        docstring); 1 = the single-vector model. The user table then has K·dim columns.
    persona_temperature : float
        τ >= 1e-6 (:data:`MIN_PERSONA_TEMPERATURE`) of the persona attention softmax (ignored
        with one persona). The attention divides float32 dot products by τ: a smaller τ rounds
        to 0 in float32 or overflows the quotient, giving inf and NaN scores.

    The defaults learn the default synthetic data set (2,000 x 3,000, ~100K interactions) in a
    few seconds on 2 cores, well above the most-popular baseline.
    """

    dim: int = 32
    table: str = "cuckoo"
    rows_per_id: float = 1.0
    hash_users: bool = False
    on_full: str = "grow"
    min_count: int = 1
    admission_eps: float = 1e-5
    admission_delta: float = 0.01
    expire_after: int | None = None
    loss: str = "bpr"
    optimizer: str = "adam"
    lr: float = 0.02
    l2: float = 1e-4
    epochs: int = 10
    batch_size: int = 4096
    init_std: float = 0.1
    seed: int = 0
    personas: int = 1
    persona_temperature: float = 1.0

    def __post_init__(self):
        # Types and ranges by field name: TypeError for a wrong type (a string, a float where
        # a whole number belongs), ValueError for a value out of range, each naming the field.
        def whole(name, lo, none_ok=False):
            v = getattr(self, name)
            if not (none_ok and v is None):
                check_int(v, f"TrainConfig.{name}", min=lo)

        def real(name, **bounds):
            check_real(getattr(self, name), f"TrainConfig.{name}", **bounds)

        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"TrainConfig.{name} must be one of {options}, "
                                 f"got {getattr(self, name)!r}")

        whole("dim", 1)
        choice("table", _TABLES)
        real("rows_per_id", min=0.0, min_open=True)
        if not isinstance(self.hash_users, bool):
            raise TypeError(f"TrainConfig.hash_users must be a bool, got {self.hash_users!r}")
        choice("on_full", _ON_FULL)
        whole("min_count", 1)
        for name in ("admission_eps", "admission_delta"):
            real(name, min=0.0, max=1.0, min_open=True, max_open=True)
        whole("expire_after", 1, none_ok=True)
        if self.table != "cuckoo":
            for name, default in (("on_full", "grow"), ("min_count", 1), ("expire_after", None)):
                if getattr(self, name) != default:
                    raise ValueError(f"TrainConfig.{name} applies to table='cuckoo' only, "
                                     f"got {name}={getattr(self, name)!r} with "
                                     f"table={self.table!r}")
        elif self.on_full == "grow" and self.rows_per_id != 1.0:
            raise ValueError(f"TrainConfig.rows_per_id caps a cuckoo table only with an "
                             f"eviction policy (on_full='evict_lru' or 'evict_lfu'); with "
                             f"on_full='grow' it must be 1, got {self.rows_per_id!r}")
        choice("loss", _LOSSES)
        choice("optimizer", _OPTIMIZERS)
        real("lr", min=0.0, min_open=True)
        real("l2", min=0.0)
        whole("epochs", 0)
        whole("batch_size", 1)
        real("init_std", min=0.0)
        check_seed(self.seed, "TrainConfig.seed")
        whole("personas", 1)
        real("persona_temperature", min=0.0, min_open=True)
        if self.persona_temperature < MIN_PERSONA_TEMPERATURE:
            raise ValueError(
                f"TrainConfig.persona_temperature must be >= {MIN_PERSONA_TEMPERATURE:g}, got "
                f"{self.persona_temperature!r}: the attention divides float32 dot products by "
                f"it, and a smaller temperature rounds to 0 in float32 or makes the quotient "
                f"overflow float32's maximum (3.4e38) for dot products above "
                f"{3.4e38 * MIN_PERSONA_TEMPERATURE:.1e}, giving inf and NaN scores (at "
                f"{MIN_PERSONA_TEMPERATURE:g} the attention is already a hard maximum)")

    def to_dict(self) -> dict:
        return asdict(self)


def _ids(raw: np.ndarray) -> torch.Tensor:
    """uint64 raw IDs as an int64 tensor with the same bits (what embtab.nn reads)."""
    return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.uint64).view(np.int64))


def persona_scores(user: torch.Tensor, items: torch.Tensor, personas: int,
                   temperature: float = 1.0) -> torch.Tensor:
    """Attention scores of users against items (AMP-CF, arXiv 2010.07042).

    ``s(u, i) = Σ_k softmax_k(<p_uk, q_i> / τ) <p_uk, q_i>`` with user rows holding the K
    persona vectors side by side.

    Parameters
    ----------
    user : Tensor [n, K·d]
        User rows (persona k = columns k·d .. (k+1)·d − 1).
    items : Tensor [n, d] or [m, d]
        Items paired with the users (``[n, d]``, ``pairs``), or a catalogue ``[m, d]`` scored
        against every user; which one is decided by ``items.dim()``: 2-D items with the same
        row count as ``user`` are ambiguous, so pass ``[n, 1, d]`` for pairs.
    personas : int
        K.
    temperature : float
        τ > 0.

    Returns
    -------
    Tensor [n] for paired ``[n, 1, d]`` items, [n, m] for a catalogue ``[m, d]``.

    Example::

        >>> import torch
        >>> from embtab.train import persona_scores
        >>> u = torch.tensor([[1.0, 0.0, 0.0, 1.0]])          # personas (1, 0) and (0, 1)
        >>> q = torch.tensor([[2.0, 0.0]])                    # dots 2 and 0
        >>> float(persona_scores(u, q, 2)[0, 0])              # (2 e^2 + 0) / (e^2 + e^0)
        1.761594...
    """
    n = user.shape[0]
    p = user.reshape(n, personas, -1)                                   # [n, K, d]
    if items.dim() == 3:                                                # pairs [n, 1, d]
        dots = (p * items).sum(-1)                                      # [n, K]
        return (torch.softmax(dots / temperature, dim=1) * dots).sum(1)
    dots = (p.reshape(n * personas, -1) @ items.T).reshape(n, personas, -1)   # [n, K, m]
    return (torch.softmax(dots / temperature, dim=1) * dots).sum(1)


class MFModel(nn.Module):
    """Dot-product matrix factorisation over two embtab tables taking raw IDs.

    Parameters
    ----------
    users, items : nn.Module
        ``embtab.nn`` embedding modules (raw int64 IDs ``(*)`` -> ``(*, K·d)`` and
        ``(*, d)``), K = ``config.personas``.
    config : TrainConfig
        Kept for reports; ``personas`` and ``persona_temperature`` set the scoring.

    ``forward(raw_users, raw_items)`` returns the scores ``[n]`` of parallel ID tensors
    (the dot product, or :func:`persona_scores` with several personas); :meth:`score`
    scores given user rows against given item rows.
    """

    def __init__(self, users: nn.Module, items: nn.Module, config: TrainConfig):
        super().__init__()
        self.users = users
        self.items = items
        self.config = config
        self.history: list[float] = []

    @property
    def personas(self) -> int:
        return self.config.personas

    def forward(self, raw_users: torch.Tensor, raw_items: torch.Tensor) -> torch.Tensor:
        if self.personas == 1:
            return (self.users(raw_users) * self.items(raw_items)).sum(-1)
        return self.score(self.users(raw_users), self.items(raw_items), pairs=True)

    def score(self, user: torch.Tensor, items: torch.Tensor, *, pairs: bool = False
              ) -> torch.Tensor:
        """Scores of user rows ``[n, K·d]`` against item rows: ``[n, d]`` paired (``pairs``)
        -> ``[n]``, or a catalogue ``[m, d]`` -> ``[n, m]``."""
        if self.personas == 1:
            return (user * items).sum(-1) if pairs else user @ items.T
        q = items[:, None, :] if pairs else items
        return persona_scores(user, q, self.personas, self.config.persona_temperature)


def table_design(config: TrainConfig) -> str:
    """A short name of the item table's design, e.g. ``"cuckoo"``, ``"hashed m/n=0.25"``,
    ``"cuckoo evict_lru m/n=0.5 min_count=2"``; ``"+users"`` when the users share it."""
    parts = [config.table]
    if config.table != "cuckoo" or config.on_full != "grow":
        if config.table == "cuckoo":
            parts.append(config.on_full)
        parts.append(f"m/n={config.rows_per_id:g}")
    if config.min_count > 1:
        parts.append(f"min_count={config.min_count}")
    if config.expire_after is not None:
        parts.append(f"expire_after={config.expire_after}")
    name = " ".join(parts)
    return name + " +users" if config.hash_users and name != "cuckoo" else name


def _fills_up_front(config: TrainConfig) -> bool:
    """Whether a cuckoo table of ``config`` gets every ID inserted before training (it holds
    them all: grows on demand, admits at once)."""
    return config.on_full == "grow" and config.min_count == 1


def _make_table(kind: str, n_ids: int, config: TrainConfig, salt: int,
                width: int | None = None) -> nn.Module:
    """The table of ``n_ids`` distinct IDs: ``kind`` "plain" (collisionless cuckoo, every ID)
    or ``config.table``'s design (module docstring)."""
    from embtab.nn import CuckooEmbedding, EmbeddingInit, HashedEmbedding

    init = EmbeddingInit("normal", 0.0, config.init_std)
    seed = (config.seed * 1_000_003 + salt) % (1 << 63)
    dim = config.dim if width is None else width
    if kind == "plain":
        return CuckooEmbedding(max(1, n_ids), dim, init=init, seed=seed)
    rows = max(1, round(config.rows_per_id * n_ids))
    if config.table == "hashed":
        return HashedEmbedding(rows, dim, init=init, seed=seed)
    if config.table == "qr":
        from embtab.nn import QREmbedding

        return QREmbedding(rows, dim, num_collisions=math.isqrt(rows - 1) + 1, init=init,
                           seed=seed)
    if config.table == "double_hashed":
        from embtab.nn import DoubleHashedEmbedding

        return DoubleHashedEmbedding(rows, dim, init=init, seed=seed)
    return CuckooEmbedding(rows, dim, init=init, seed=seed, on_full=config.on_full,
                           min_count=config.min_count, admission_eps=config.admission_eps,
                           admission_delta=config.admission_delta,
                           expire_after=config.expire_after)


def _check_cap(config: TrainConfig, data: Interactions) -> None:
    """ValueError when a capped table is smaller than the distinct IDs one batch reads (an
    evicting table keeps the rows of the batch in flight, so such a batch cannot be served)."""
    if config.table != "cuckoo" or config.on_full == "grow":
        return
    bs = config.batch_size
    need_items = data.n_items if config.loss == "softmax" else min(2 * bs, data.n_items)
    tables = [("item", data.n_items, need_items)]
    if config.hash_users:
        tables.append(("user", data.n_users, min(bs, data.n_users)))
    for what, n, need in tables:
        cap = max(1, round(config.rows_per_id * n))
        if cap < need:
            raise ValueError(
                f"TrainConfig.rows_per_id={config.rows_per_id!r} caps the {what} table at {cap} "
                f"rows, fewer than the {need} distinct {what} IDs one batch may read "
                f"(batch_size={bs}, loss={config.loss!r}); raise rows_per_id or lower "
                f"batch_size")


def build_model(data: Interactions, config: TrainConfig) -> MFModel:
    """An untrained :class:`MFModel` for the catalogue of ``data``.

    Cuckoo tables that hold every ID (``on_full="grow"``, ``min_count=1``) get every user and
    item ID inserted up front (in dense-index order), so a catalogue item without training
    interactions still has its own (initial) vector; capped or admitting tables start empty.
    """
    user_kind = "design" if config.hash_users else "plain"
    _check_cap(config, data)
    users = _make_table(user_kind, data.n_users, config, salt=1,
                        width=config.dim * config.personas)
    items = _make_table("design", data.n_items, config, salt=2)
    up_front = config.table == "cuckoo" and _fills_up_front(config)
    with torch.no_grad():
        if user_kind == "plain" or up_front:
            users(_ids(data.user_ids))
        if up_front:
            items(_ids(data.item_ids))
    return MFModel(users, items, config)


def fit(train: Interactions, config: TrainConfig | None = None, *, quiet: bool = False,
        desc: str | None = None, num_threads: int | None = 1,
        on_epoch: Callable[[int, MFModel], None] | None = None) -> MFModel:
    """Train a dot-product MF model (BPR or the softmax likelihood) on the pairs of ``train``.

    Parameters
    ----------
    train : Interactions
        Training pairs; its ``user_ids``/``item_ids`` define the catalogue.
    config : TrainConfig, optional
    quiet : bool
        No progress bar.
    desc : str, optional
        Progress-bar label.
    num_threads : int or None
        torch intra-op threads during training (restored afterwards); ``None`` keeps torch's
        setting. The default 1 is fastest for these small batches, and much faster than several
        threads on a shared, busy machine.
    on_epoch : callable, optional
        Called as ``on_epoch(epoch, model)`` after each epoch (``epoch`` = 1, 2, ...), with the
        model in ``eval()`` mode (e.g. to score a validation split); training then resumes.

    Returns
    -------
    MFModel
        In ``eval()`` mode; ``model.history`` holds the mean loss of each epoch;
        ``model.optimizer_bytes`` the bytes of the optimizer state it kept (``None`` for
        ``epochs=0``: nothing stepped, and :func:`model_bytes` counts
        :func:`expected_optimizer_bytes`).

    Notes
    -----
    ``fit`` calls ``torch.manual_seed(config.seed)``: it reseeds torch's **global** random
    generator (kept so that every stored result stays bit for bit), so a caller's own torch
    random stream restarts from ``config.seed`` after each call; save and restore it with
    ``torch.get_rng_state()`` / ``torch.set_rng_state()`` where that matters. The shuffling
    and negatives come from a local ``numpy.random.Generator``.

    Raises
    ------
    TypeError
        ``train`` is not an :class:`~embtab.data.Interactions`, ``config`` not a
        :class:`TrainConfig`.
    ValueError
        ``train`` holds no interaction, ``num_threads`` < 1, or the training diverged (an
        epoch's mean loss is NaN or infinite: lower ``lr`` or ``init_std``).
    """
    if not isinstance(train, Interactions):
        raise TypeError(f"train must be an embtab.data.Interactions, got {type(train).__name__}")
    if config is None:
        config = TrainConfig()
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (TrainConfig(**d) for a dict d), got "
                        f"{type(config).__name__}")
    if train.n_interactions == 0:
        raise ValueError(f"train ({train.name!r}) holds no interactions: nothing to fit")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(
            num_threads, (int, np.integer)) or num_threads < 1):
        raise ValueError(f"num_threads must be None or an integer >= 1, got {num_threads!r}")
    saved = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit(train, config, quiet, desc, on_epoch)
    finally:
        torch.set_num_threads(saved)


def bpr_loss(model: MFModel, u: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
             personas: int, l2: float) -> torch.Tensor:
    """BPR loss of one batch: −mean log σ(s(u, p) − s(u, q)) plus ``l2`` times the squared norms
    of the batch's user, positive and negative vectors over the batch size.

    ``u`` [B, personas·d] are user rows, ``p`` and ``q`` [B, d] the positive and sampled negative
    item rows; with ``personas > 1`` the score is :meth:`MFModel.score` (persona attention),
    else the dot product. Used by :func:`fit` and by E5's warm-started arms.
    """
    if personas == 1:
        diff = (u * (p - q)).sum(-1)
    else:
        diff = model.score(u, p, pairs=True) - model.score(u, q, pairs=True)
    loss = -torch.nn.functional.logsigmoid(diff).mean()
    if l2:
        loss = loss + l2 * ((u * u).sum() + (p * p).sum() + (q * q).sum()) / len(u)
    return loss


def softmax_loss(model: MFModel, u: torch.Tensor, items: torch.Tensor, target: torch.Tensor,
                 l2: float) -> torch.Tensor:
    """Softmax loss of one batch: the mean cross-entropy of ``target`` under
    softmax_i(s(u, ·)) over the whole catalogue, plus ``l2`` times the squared norms of the
    batch's user rows and of its positive item rows over the batch size.

    ``u`` [B, personas·d] are user rows, ``items`` [I, d] the catalogue's item rows and
    ``target`` [B] the dense indices of the positive items; the scores are
    :meth:`MFModel.score`. Used by :func:`fit` (``loss="softmax"``) and by E5's warm-started
    arms.
    """
    loss = torch.nn.functional.cross_entropy(model.score(u, items), target)
    if l2:
        p = items[target]
        loss = loss + l2 * ((u * u).sum() + (p * p).sum()) / len(target)
    return loss


def _fit(train: Interactions, config: TrainConfig, quiet: bool, desc: str | None,
         on_epoch=None) -> MFModel:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(train, config)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr)
    else:
        opt = torch.optim.Adagrad(params, lr=config.lr)
    raw_u = train.raw_users.view(np.int64)
    raw_i = train.raw_items.view(np.int64)
    catalogue = train.item_ids.view(np.int64)
    all_items = torch.from_numpy(catalogue)
    pos_index = torch.from_numpy(train.items)
    softmax = config.loss == "softmax"
    n = train.n_interactions
    bs = config.batch_size
    n_batches = (n + bs - 1) // bs
    model.train()
    bar = None
    if not quiet and config.epochs > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs * n_batches, desc=desc or f"train d={config.dim}",
                   leave=False, unit="batch")
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        if not softmax:
            neg = rng.integers(0, catalogue.size, size=n)
        total = 0.0
        for b in range(n_batches):
            idx = order[b * bs:(b + 1) * bs]
            u = model.users(torch.from_numpy(raw_u[idx]))
            if softmax:
                items = model.items(all_items)                          # [I, d]
                target = pos_index[torch.from_numpy(idx)]
                loss = softmax_loss(model, u, items, target, config.l2)
            else:
                p = model.items(torch.from_numpy(raw_i[idx]))
                q = model.items(torch.from_numpy(catalogue[neg[idx]]))
                loss = bpr_loss(model, u, p, q, config.personas, config.l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if bar is not None:
                bar.update(1)
        model.history.append(total / max(n, 1))
        if not math.isfinite(model.history[-1]):
            if bar is not None:
                bar.close()
            raise ValueError(f"training diverged: the mean loss of epoch {epoch + 1} is "
                             f"{model.history[-1]} (lr={config.lr}, init_std={config.init_std}, "
                             f"optimizer={config.optimizer!r}); lower lr or init_std")
        if bar is not None:
            bar.set_postfix(loss=f"{model.history[-1]:.4f}")
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1, model)
            model.train()
    if bar is not None:
        bar.close()
    # (a fit of 0 epochs never steps: Adam holds no state yet, and model_bytes counts the
    # state it will hold, expected_optimizer_bytes)
    model.optimizer_bytes = _state_bytes(opt) if config.epochs > 0 else None
    model.eval()
    return model


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer keeps in its state (Adam: ``exp_avg``, ``exp_avg_sq``
    and ``step`` per parameter; Adagrad: ``sum`` and ``step``)."""
    return int(sum(v.nbytes for st in opt.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor)))


def expected_optimizer_bytes(model: MFModel) -> int:
    """Bytes of the state :func:`fit`'s optimizer keeps for ``model`` once it has stepped: per
    trainable parameter, Adam keeps two tensors of its shape and dtype (``exp_avg``,
    ``exp_avg_sq``) and Adagrad one (``sum``), each beside a float32 ``step`` scalar. Dense
    state, zero row included, whatever rows a batch touched (torch's ``Adam``/``Adagrad`` on
    dense gradients)."""
    per = 2 if model.config.optimizer == "adam" else 1
    return int(sum(per * p.nbytes + 4 for p in model.parameters() if p.requires_grad))


def table_bytes(table: nn.Module) -> dict:
    """``{"weights", "index", "optimizer"}`` bytes of one ``embtab.nn`` table: its parameters;
    its ID map (the persistent buffers: row IDs, live flags, policy counters, admission sketch,
    plus the native cuckoo index); the state of a fused optimizer attached to it (0 for the
    tables :func:`fit` builds: its optimizer is the outer ``torch.optim`` one)."""
    if hasattr(table, "memory_bytes"):
        return dict(table.memory_bytes())
    weights = sum(p.nbytes for p in table.parameters())
    index = sum(b.nbytes for b in table.state_dict(keep_vars=True).values()
                if isinstance(b, torch.Tensor)) - weights
    native = getattr(table, "_table", None)
    if native is not None:
        index += native.stats()["memory_bytes"]
    return {"weights": int(weights), "index": int(index), "optimizer": 0}


def model_bytes(model: MFModel) -> dict:
    """Memory of a model: ``{"weights", "index", "optimizer", "total"}`` bytes.

    ``weights`` and ``index`` sum :func:`table_bytes` of the user and item tables;
    ``optimizer`` adds to theirs the outer optimizer's state as :func:`fit` keeps it (torch's
    dense Adam: two float32 values per weight), measured after training
    (``model.optimizer_bytes``) or, for an untrained model (one :func:`build_model` made, or a
    :func:`fit` of 0 epochs, whose ``optimizer_bytes`` is ``None``),
    :func:`expected_optimizer_bytes`.
    """
    parts = [table_bytes(model.users), table_bytes(model.items)]
    out = {k: int(sum(p[k] for p in parts)) for k in ("weights", "index", "optimizer")}
    outer = getattr(model, "optimizer_bytes", None)
    out["optimizer"] += expected_optimizer_bytes(model) if outer is None else int(outer)
    out["total"] = out["weights"] + out["index"] + out["optimizer"]
    return out


# scoring ////////////////////////////////////////////////////////////////////////////////////


@torch.no_grad()
def user_vectors(model: MFModel, data: Interactions) -> torch.Tensor:
    """Embeddings of all users of ``data`` in dense order, float32 [U, K·d] (K personas side
    by side; [U, d] for the single-vector model)."""
    return model.users(_ids(data.user_ids)).detach()


@torch.no_grad()
def item_vectors(model: MFModel, data: Interactions) -> torch.Tensor:
    """Embeddings of all items of ``data`` in dense order, float32 [I, d]."""
    return model.items(_ids(data.item_ids)).detach()


def _mask_rows(scores: torch.Tensor, train: Interactions, rows: np.ndarray,
               sets=None) -> None:
    """Set scores of (user, training item) pairs to -inf in place; ``rows`` are the users.
    ``sets``: ``train.user_items()``, when the caller has it (a loop over chunks of users)."""
    sets = train.user_items() if sets is None else sets
    sub = sets.take_rows(rows)
    r = torch.from_numpy(np.repeat(np.arange(len(rows)), sub.lengths()))
    c = torch.from_numpy(sub.indices)
    scores[r, c] = -math.inf


@torch.no_grad()
def score_matrix(model: MFModel, train: Interactions, users=None, *,
                 exclude_train: bool = True) -> torch.Tensor:
    """Full-catalogue scores float32 [len(users), I] (all users when ``None``).

    With ``exclude_train`` a user's training items score ``-inf``. ``users`` are dense user
    indices in ``[0, U)`` (TypeError for a non-integer array, ValueError naming ``users``
    for one out of range).
    """
    rows = np.arange(train.n_users) if users is None else _user_rows(users, train.n_users)
    return _scores(model, train, rows, item_vectors(model, train),
                   train.user_items() if exclude_train else None)


def _user_rows(users, n_users: int) -> np.ndarray:
    """``users`` as int64 [n], each a dense user index in [0, n_users); TypeError for a
    non-integer array, ValueError naming ``users`` otherwise."""
    a = np.asarray(users)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"users must hold integer user indices, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"users must be 1-D, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n_users):
        raise ValueError(f"users must lie in [0, {n_users}), got values in "
                         f"[{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def _scores(model: MFModel, train: Interactions, rows: np.ndarray, items: torch.Tensor,
            sets) -> torch.Tensor:
    """:func:`score_matrix` of users ``rows`` given the item vectors (and, to exclude training
    items, ``train.user_items()``): only these users are embedded, so a loop over chunks of
    users costs O(U) in all, not O(U) per chunk."""
    scores = model.score(model.users(_ids(train.user_ids[rows])).detach(), items)
    if sets is not None:
        _mask_rows(scores, train, rows, sets)
    return scores


@torch.no_grad()
def recommend(model: MFModel, train: Interactions, k: int = 10, *, chunk: int = 4096,
              exclude_train: bool = True) -> np.ndarray:
    """Top-k dense item indices per user, int64 [U, k], best first, training items excluded.

    Scores the full catalogue in chunks of ``chunk`` users. A user with fewer than k items
    left to recommend gets a shorter list, padded with -1 (:func:`embtab._research.
    topk_indices`; docs/metrics.md). ``k`` and ``chunk`` are ints >= 1. With
    ``exclude_train=False`` the training items are not masked: every item may be listed
    (a user then always gets min(k, I) items). A NaN score (a diverged model) raises
    ``ValueError``: it has no rank.
    """
    k, chunk = check_int(k, "k", min=1), check_int(chunk, "chunk", min=1)
    chunk = chunk_rows(chunk, train.n_items)   # at most CHUNK_ELEMENTS scores at a time
    out = []
    items = item_vectors(model, train)
    sets = train.user_items() if exclude_train else None
    for start in range(0, train.n_users, chunk):
        rows = np.arange(start, min(start + chunk, train.n_users))
        out.append(topk_indices(_scores(model, train, rows, items, sets), k))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def most_popular(train: Interactions, k: int = 10, *, chunk: int = 4096) -> np.ndarray:
    """Most-popular baseline: the k most-interacted items each user has not trained on, [U, k].

    Ties by lower item index. Users are scored ``chunk`` at a time. Lists of users with fewer
    than k untrained items are padded with -1. ``k`` and ``chunk`` are ints >= 1.
    """
    k, chunk = check_int(k, "k", min=1), check_int(chunk, "chunk", min=1)
    chunk = chunk_rows(chunk, train.n_items)   # at most CHUNK_ELEMENTS scores at a time
    counts = train.item_counts().astype(np.float64)
    # a score that orders by count, ties by lower index
    base = torch.from_numpy(counts - np.arange(train.n_items) / (train.n_items + 1.0))
    out = [np.zeros((0, k), dtype=np.int64)]
    sets = train.user_items()
    for start in range(0, train.n_users, chunk):
        rows = np.arange(start, min(start + chunk, train.n_users))
        scores = base.repeat(len(rows), 1)
        _mask_rows(scores, train, rows, sets)
        out.append(topk_indices(scores, k))
    return np.concatenate(out)


def random_topk(train: Interactions, k: int = 10, seed: int = 0, *,
                chunk: int = 4096) -> np.ndarray:
    """Random baseline: k uniformly random untrained items per user, seeded, [U, k].

    The result does not depend on ``chunk`` (users scored at a time). Lists of users with fewer
    than k untrained items are padded with -1. ``k`` and ``chunk`` are ints >= 1.
    """
    k, chunk = check_int(k, "k", min=1), check_int(chunk, "chunk", min=1)
    chunk = chunk_rows(chunk, train.n_items)   # at most CHUNK_ELEMENTS scores at a time
    rng = np.random.default_rng(check_seed(seed, "seed"))
    out = [np.zeros((0, k), dtype=np.int64)]
    sets = train.user_items()
    for start in range(0, train.n_users, chunk):
        rows = np.arange(start, min(start + chunk, train.n_users))
        scores = torch.from_numpy(rng.random((len(rows), train.n_items)))
        _mask_rows(scores, train, rows, sets)
        out.append(topk_indices(scores, k))
    return np.concatenate(out)


def drop_excluded(top, scores) -> np.ndarray:
    """``top`` [n, k] without the items whose score is ``-inf``, int64 [n, k].

    A reranker that fills k slots from fewer than k listable candidates (the top-C of masked
    scores hold ``-inf`` items) lists excluded items; this removes them (and any -1), moves the
    rest up in their order and pads each row with -1, the short-list form of
    :func:`recommend` (docs/metrics.md, "Short lists"). ``scores`` [n, I] are the masked scores
    the lists were made from (NumPy or torch).

    Example::

        >>> drop_excluded([[1, 2, 0]], np.array([[0.5, -np.inf, 0.1]])).tolist()  # 1 excluded
        [[2, 0, -1]]
    """
    top = np.asarray(top, dtype=np.int64)
    s = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if top.ndim != 2 or s.ndim != 2 or top.shape[0] != s.shape[0]:
        raise ValueError(f"top [n, k] and scores [n, I] must have the same rows; got "
                         f"{top.shape} and {s.shape}")
    keep = top >= 0
    keep[keep] = ~np.isneginf(s[np.nonzero(keep)[0], top[keep]])
    order = np.argsort(~keep, axis=1, kind="stable")          # kept entries first, in order
    out = np.take_along_axis(top, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    return out


def collision_share(model: MFModel, data: Interactions) -> dict:
    """Measured item-ID collisions of a model's item table on the catalogue of ``data``.

    Returns ``{"collision_share", "collision_theory", "rows", "ids"}``: the share of distinct
    item IDs that share their row with another item ID, and the uniform-hashing expectation in
    its usual approximation ``1 - exp(-n/m)`` (n IDs, m rows; docs/experiments.md, E2). The
    exact expectation is ``1 - (1 - 1/m)^(n-1)``; the approximation differs from it by less
    than ``1/m`` (negligible for E2's tables of hundreds of rows or more, visible for tiny
    ones: m = 1, n = 2 gives 0.865 against the exact 1; n = 1 gives ``1 - exp(-1/m)``
    against 0). ``collision_theory`` keeps the approximation, which every stored E2 result
    reports. A cuckoo table has
    share 0 by construction (checked: distinct IDs hold distinct rows). A table that gives
    each ID two rows (quotient-remainder, double hashing) counts the IDs whose pair of rows is
    another ID's (the same vector: for double hashing, whose two rows of one table are summed,
    the pair in either order); ``collision_theory`` is then 0 and ``rows`` the rows stored.
    """
    n = data.n_items
    ids = _ids(data.item_ids)
    tab = model.items
    if hasattr(tab, "collision_report"):
        rep = tab.collision_report(ids)
        m = tab.num_embeddings
        return {"collision_share": rep["colliding_id_share"],
                "collision_theory": float(1.0 - math.exp(-n / m)), "rows": int(m), "ids": n}
    rows = tab.lookup(ids).numpy()
    if rows.ndim == 2:  # two rows per ID: the same vector means the same pair
        from embtab.nn import DoubleHashedEmbedding

        if isinstance(tab, DoubleHashedEmbedding):
            # both rows are of one table and summed: (a, b) and (b, a) give the same vector
            rows = np.sort(rows, axis=1)
        _, counts = np.unique(rows, axis=0, return_counts=True)
        stored = sum(int(p.shape[0]) - 1 for p in tab.parameters())
        return {"collision_share": float(counts[counts > 1].sum() / max(n, 1)),
                "collision_theory": 0.0, "rows": stored, "ids": n}
    rows = rows[rows >= 0]  # IDs without a row (not admitted, evicted) share nothing
    _, counts = np.unique(rows, return_counts=True)
    shared = float((counts[counts > 1]).sum() / max(n, 1))
    return {"collision_share": shared, "collision_theory": 0.0,
            "rows": int(tab.num_embeddings), "ids": n}


# a fitted truth ////////////////////////////////////////////////////////////////////////////


class ModelTruth(Truth):
    """p(i|u) = softmax_i(<e_u, e_i>) of an MF model fitted on the full data (real-data truth).

    A d = 32 cuckoo MF trained with BPR for ``epochs`` epochs on ``data``. Implements the
    :class:`embtab.data.Truth` protocol, as the generator's planted
    :class:`embtab.data.GroundTruth` does, so code written for the truth takes either.
    """

    def __init__(self, data: Interactions, epochs: int = 10, seed: int = 0):
        model = fit(data, TrainConfig(dim=32, epochs=epochs, seed=seed), quiet=True)
        self._u = user_vectors(model, data).double().numpy()
        self._i = item_vectors(model, data).double().numpy()

    @property
    def vectors(self) -> tuple:
        """Copies of the fitted ``(user vectors [U, 32], item vectors [I, 32])``, float64, so
        p(i|u) = softmax_i(user_vectors[u] @ item_vectors.T)."""
        return self._u.copy(), self._i.copy()

    @property
    def n_users(self) -> int:
        return self._u.shape[0]

    @property
    def n_items(self) -> int:
        return self._i.shape[0]

    def prob(self, users=None) -> np.ndarray:
        u = self._u if users is None else self._u[np.asarray(users, np.int64)]
        s = u @ self._i.T
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def pair_prob(self, users, items) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return self.prob(users)[np.arange(users.size), np.asarray(items, np.int64)]


# online training over time windows (embtab experiment stream) //////////////////////////////


class OnlineTrainer:
    """BPR training of an :class:`MFModel` over a stream of time windows, one pass each.

    The tables are given (empty, or as the caller built them) and grow, evict or collide by
    their own policy as IDs arrive; one optimizer (``config.optimizer``, ``config.lr``) lives
    across windows. :meth:`train_window` makes exactly one pass over a window's pairs in
    shuffled minibatches of ``config.batch_size``: per pair the loss of :func:`fit`'s BPR
    objective (one negative drawn uniformly from ``negatives``, plus ``config.l2``), with the
    batch's positive and negative items looked up in **one** call of the item table, so a
    policy that counts steps (LRU, expiry) advances one step per batch. ``config.epochs`` and
    ``config.table`` are not used; ``config.loss`` must be ``"bpr"`` and ``config.personas`` 1.

    Parameters
    ----------
    users, items : nn.Module
        ``embtab.nn`` embedding modules of the same ``embedding_dim`` (raw int64 IDs).
    config : TrainConfig
        ``seed`` seeds the shuffling and the negatives.

    Attributes
    ----------
    model : MFModel
        In ``eval()`` mode between windows.
    pairs_per_window : list of int
        Pairs trained by each call of :meth:`train_window`, in order.

    Example::

        >>> from embtab.data import power_law_stream, time_windows
        >>> from embtab.nn import CuckooEmbedding
        >>> d = power_law_stream(n_users=50, n_items=80, n_windows=3, seed=0)
        >>> w = time_windows(d)
        >>> t = OnlineTrainer(CuckooEmbedding(16, 8), CuckooEmbedding(16, 8),
        ...                   TrainConfig(dim=8, batch_size=64))
        >>> for k in range(3):
        ...     _ = t.train_window(d.subset(w == k), d.item_ids[np.unique(d.items[w <= k])])
        >>> t.pairs_per_window == [int((w == k).sum()) for k in range(3)]
        True
    """

    def __init__(self, users: nn.Module, items: nn.Module, config: TrainConfig):
        if config.loss != "bpr":
            raise ValueError(f"OnlineTrainer trains BPR only; got config.loss={config.loss!r}")
        if config.personas != 1:
            raise ValueError(f"OnlineTrainer trains the single-vector model (personas=1); got "
                             f"config.personas={config.personas!r}")
        if users.embedding_dim != items.embedding_dim:
            raise ValueError(f"users and items must have the same embedding_dim; got "
                             f"{users.embedding_dim} and {items.embedding_dim}")
        self.model = MFModel(users, items, config)
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.Adagrad
        self.optimizer = cls(params, lr=config.lr)
        self.pairs_per_window: list[int] = []
        self.model.eval()

    @classmethod
    def empty(cls, config: TrainConfig, user_rows: int, item_rows: int) -> OnlineTrainer:
        """A trainer over empty tables: users a growing collisionless table of ``user_rows``
        rows; items ``config``'s design (:func:`table_design`) sized for ``item_rows`` IDs
        (``rows_per_id * item_rows`` rows: a hashed table's rows, a capped table's cap, a
        growing table's start). No ID is inserted before training."""
        return cls(_make_table("plain", user_rows, config, salt=1),
                   _make_table("design", item_rows, config, salt=2), config)

    def train_window(self, window: Interactions, negatives: np.ndarray, *,
                     num_threads: int | None = 1) -> float:
        """One pass over the pairs of ``window``; returns their mean loss (NaN when empty).

        Raises ``ValueError`` when the training diverged (the pass's mean loss is NaN or
        infinite), so a NaN return always means an empty window; the model is then unusable.

        Parameters
        ----------
        window : Interactions
            The window's pairs (raw IDs from its ``user_ids`` / ``item_ids``).
        negatives : array_like of uint64 or int64, shape [n >= 1]
            Raw item IDs the negatives are drawn from (uniformly, with replacement).
        num_threads : int or None
            torch intra-op threads during the pass (restored afterwards), as in :func:`fit`.
        """
        neg_pool = np.ascontiguousarray(negatives)
        if neg_pool.dtype not in (np.uint64, np.int64) or neg_pool.ndim != 1 or not neg_pool.size:
            raise ValueError(f"negatives must be a non-empty 1-D array of raw uint64/int64 IDs; "
                             f"got dtype {neg_pool.dtype}, shape {neg_pool.shape}")
        neg_pool = neg_pool.view(np.int64)
        saved = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            return self._pass(window, neg_pool)
        finally:
            torch.set_num_threads(saved)

    def _pass(self, window: Interactions, neg_pool: np.ndarray) -> float:
        cfg, model = self.config, self.model
        raw_u = window.raw_users.view(np.int64)
        raw_i = window.raw_items.view(np.int64)
        n, bs = window.n_interactions, cfg.batch_size
        order = self.rng.permutation(n)
        neg = neg_pool[self.rng.integers(0, neg_pool.size, size=n)]
        total = 0.0
        model.train()
        try:
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                u = model.users(torch.from_numpy(raw_u[idx]))
                pq = model.items(torch.from_numpy(np.concatenate([raw_i[idx], neg[idx]])))
                p, q = pq[:idx.size], pq[idx.size:]
                loss = -torch.nn.functional.logsigmoid((u * (p - q)).sum(-1)).mean()
                if cfg.l2:
                    loss = loss + cfg.l2 * ((u * u).sum() + (pq * pq).sum()) / idx.size
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * idx.size
        finally:
            model.eval()
        mean = total / n if n else float("nan")
        if n and not math.isfinite(mean):
            # (NaN is the empty window's value: a diverged pass must not read as one)
            raise ValueError(f"training diverged: the mean loss of the window's {n} pairs is "
                             f"{mean} (lr={cfg.lr}, init_std={cfg.init_std}, "
                             f"optimizer={cfg.optimizer!r}); lower lr or init_std")
        self.pairs_per_window.append(int(n))
        return mean
