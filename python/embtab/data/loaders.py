"""Loaders: MovieLens-100K, generic ``user item [weight]`` files, and CLI spec strings.

Sources reachable through :func:`load_dataset` spec strings (what the CLI passes):

=====================================  ============================================
``synthetic[:key=value,...]``          :func:`embtab.data.power_law`
``movielens:PATH``                     :func:`load_movielens` (MovieLens-100K layout)
``interactions:PATH[,categories=P]``   :func:`load_interactions` (``user item [weight]``)
=====================================  ============================================
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Union

import numpy as np

from embtab._research import U64_MAX
from embtab.data.containers import Interactions
from embtab.data.generator_v2 import V2_KEYS, power_law_v2
from embtab.data.stream import power_law_stream
from embtab.data.synthetic import power_law

__all__ = ["MOVIELENS_GENRES", "load_dataset", "load_interactions", "load_movielens"]

PathLike = Union[str, Path]

#: The 19 genre names of MovieLens-100K, used when ``u.genre`` is absent.
MOVIELENS_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)


def _read_lines(path: Path, encoding="utf-8"):
    try:
        text = path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; expected a file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not {encoding} text ({e})") from None
    return text.splitlines()


def _split_lines(lines, sep):
    """Return (rows of fields, 1-based line numbers) skipping blank and '#' comment lines."""
    if sep is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = [[f.strip() for f in ln.split(sep)] if ln.strip() else [] for ln in lines]
    keep = [n for n, r in enumerate(rows) if r and not r[0].startswith("#")]
    return [rows[n] for n in keep], [n + 1 for n in keep]


def _is_int(tok: str) -> bool:
    try:
        int(tok)
        return True
    except ValueError:
        return False


def _parse_column(tokens, kind, path, numbers, what):
    """Vectorised parse of a column of strings; on failure find and name the first bad line."""
    try:
        if kind == "id":
            try:
                return np.fromiter(map(int, tokens), np.int64, len(tokens)).view(np.uint64)
            except OverflowError:
                return np.fromiter(map(int, tokens), np.uint64, len(tokens))
        if kind == "int":
            return np.fromiter(map(int, tokens), np.int64, len(tokens))
        out = np.fromiter(map(float, tokens), np.float64, len(tokens))
        if np.all(np.isfinite(out)):
            return out
    except (ValueError, OverflowError):
        pass
    values = []
    for tok, n in zip(tokens, numbers):
        try:
            if kind == "float":
                v = float(tok)
                if not math.isfinite(v):
                    raise ValueError
            else:
                v = int(tok)
                hi = U64_MAX if kind == "id" else 2**63 - 1
                if not -(2**63) <= v <= hi:
                    raise ValueError
                v = v & U64_MAX if kind == "id" else v
        except ValueError:
            need = {"id": "an integer ID in [-2^63, 2^64)", "int": "an int64 integer",
                    "float": "a finite number"}[kind]
            raise ValueError(f"{path}, line {n}: {what} {tok!r} is not {need}") from None
        values.append(v)
    # only reached for an ID column mixing negative IDs and IDs >= 2^63
    return np.asarray(values, dtype=np.uint64)


def load_interactions(path: PathLike, categories: PathLike | None = None, *,
                      name: str | None = None) -> Interactions:
    """Load a generic ``user item [weight [timestamp]]`` file.

    Format: one interaction per line, fields separated by whitespace, or by commas when the file
    contains a comma. Blank lines and lines starting with ``#`` are skipped. The first line is a
    header (and skipped) when its first field is not an integer. User and item IDs are integers in
    ``[-2^63, 2^64)`` (negative ones are stored as their uint64 bit pattern); ``weight`` is a
    finite float, ``timestamp`` an integer. Every line has the same number of fields (2, 3 or 4).
    Repeated (user, item) pairs are merged: weights summed, latest timestamp kept.

    The optional ``categories`` file has lines ``item category`` (same separator rules; the
    category is the rest of the line after the first separator, so it may contain spaces in a
    whitespace file), one or several lines per item. Genre indices follow sorted category names;
    items absent from the interactions are ignored; items without a line have no genre.

    Parameters
    ----------
    path : str or Path
    categories : str or Path, optional
    name : str, optional
        Defaults to the file's stem.

    Returns
    -------
    Interactions
        Dense indices follow ascending raw ID.

    Raises
    ------
    ValueError
        Malformed input; the message names the file and line (``"PATH, line 7: ..."``).
    FileNotFoundError

    Example::

        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "clicks.csv"
        >>> _ = p.write_text("user,item,weight\\n1,100,2.0\\n2,100,1.0\\n2,7,1.0\\n")
        >>> d = load_interactions(p)
        >>> d.n_users, d.n_items, d.weights.tolist()
        (2, 2, [2.0, 1.0, 1.0])
    """
    path = Path(path)
    lines = _read_lines(path)
    sep = "," if any("," in ln for ln in lines[:1000]) else None
    rows, numbers = _split_lines(lines, sep)
    if rows and not (_is_int(rows[0][0]) and len(rows[0]) > 1 and _is_int(rows[0][1])):
        if _is_int(rows[0][0]):
            pass  # a data line with a bad item field: reported below
        else:
            rows, numbers = rows[1:], numbers[1:]
    if not rows:
        raise ValueError(f"{path}: no interactions (expected lines 'user item [weight]')")
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ncol = int(widths[0])
    if ncol not in (2, 3, 4):
        raise ValueError(f"{path}, line {numbers[0]}: expected 2 to 4 fields "
                         f"'user item [weight [timestamp]]', found {ncol}")
    bad = np.flatnonzero(widths != ncol)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{path}, line {numbers[b]}: expected {ncol} fields like line "
                         f"{numbers[0]}, found {widths[b]}")
    flat = list(itertools.chain.from_iterable(rows))
    cols = [flat[c::ncol] for c in range(ncol)]
    ru = _parse_column(cols[0], "id", path, numbers, "user")
    ri = _parse_column(cols[1], "id", path, numbers, "item")
    w = _parse_column(cols[2], "float", path, numbers, "weight") if ncol >= 3 else None
    t = _parse_column(cols[3], "int", path, numbers, "timestamp") if ncol >= 4 else None
    genres, genre_names = (None, None)
    if categories is not None:
        genres, genre_names = _load_categories(Path(categories))
    return Interactions.from_raw(ru, ri, w, t, name=name or path.stem, item_genres=genres,
                                 genre_names=genre_names)


def _load_categories(path: Path):
    lines = _read_lines(path)
    sep = "," if any("," in ln for ln in lines[:1000]) else None
    items, cats, numbers = [], [], []
    for n, ln in enumerate(lines, 1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(sep, 1)
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{path}, line {n}: expected 'item category', found {s!r}")
        items.append(parts[0].strip())
        cats.append(parts[1].strip())
        numbers.append(n)
    if items and not _is_int(items[0]):
        items, cats, numbers = items[1:], cats[1:], numbers[1:]   # header line
    raw = _parse_column(items, "id", path, numbers, "item") if items else np.zeros(0, np.uint64)
    names, gidx = np.unique(np.asarray(cats, dtype=str), return_inverse=True)
    mapping: dict = {}
    for r, g in zip(raw.tolist(), gidx.ravel().tolist()):
        mapping.setdefault(r, []).append(g)
    return mapping, tuple(str(x) for x in names)


def load_movielens(path: PathLike, *, name: str = "ml-100k") -> Interactions:
    """Load MovieLens-100K: ``u.data`` ratings with genres from ``u.item``.

    ``u.data`` holds tab-separated ``user item rating timestamp`` lines; ``u.item`` holds
    pipe-separated lines (latin-1) whose last 19 fields are 0/1 genre flags; genre names come from
    ``u.genre`` (``name|index``) when present, else :data:`MOVIELENS_GENRES`. Ratings become
    ``weights`` (every rating counts as an interaction); timestamps are kept. Items listed in
    ``u.item`` but never rated are dropped; ``u.item`` is optional (no genres without it).

    Parameters
    ----------
    path : str or Path
        The directory holding ``u.data`` (or the ``u.data`` file itself).

    Returns
    -------
    Interactions
        For ml-100k: 943 users, 1682 items, 100,000 interactions, 19 genres.

    Raises
    ------
    ValueError
        Malformed input, naming the file and line.

    Example::

        >>> d = load_movielens("../shared/data/ml-100k")   # doctest: +SKIP
        >>> d.n_users, d.n_items, d.n_interactions, d.n_genres   # doctest: +SKIP
        (943, 1682, 100000, 19)
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    data_file = path if path.is_file() else folder / "u.data"
    rows, numbers = _split_lines(_read_lines(data_file, "latin-1"), None)
    if not rows:
        raise ValueError(f"{data_file}: no ratings")
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(widths != 4)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{data_file}, line {numbers[b]}: expected 4 tab-separated fields "
                         f"'user item rating timestamp', found {widths[b]}")
    flat = list(itertools.chain.from_iterable(rows))
    ru = _parse_column(flat[0::4], "id", data_file, numbers, "user")
    ri = _parse_column(flat[1::4], "id", data_file, numbers, "item")
    w = _parse_column(flat[2::4], "float", data_file, numbers, "rating")
    t = _parse_column(flat[3::4], "int", data_file, numbers, "timestamp")

    names = MOVIELENS_GENRES
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        pairs = []
        for n, ln in enumerate(_read_lines(genre_file, "latin-1"), 1):
            if not ln.strip():
                continue
            parts = ln.strip().rsplit("|", 1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise ValueError(f"{genre_file}, line {n}: expected 'name|index', found {ln!r}")
            pairs.append((int(parts[1]), parts[0]))
        names = tuple(nm for _, nm in sorted(pairs))
    genres = None
    item_file = folder / "u.item"
    if item_file.is_file():
        G = len(names)
        ids, flags = [], []
        for n, ln in enumerate(_read_lines(item_file, "latin-1"), 1):
            if not ln.strip():
                continue
            parts = ln.split("|")
            if len(parts) < G + 2 or not _is_int(parts[0]):
                raise ValueError(f"{item_file}, line {n}: expected 'id|title|...' followed by "
                                 f"{G} genre flags, found {len(parts)} fields")
            tail = parts[-G:]
            if any(f not in ("0", "1") for f in tail):
                raise ValueError(f"{item_file}, line {n}: genre flags must be 0 or 1")
            ids.append(int(parts[0]))
            flags.append([f == "1" for f in tail])
        fl = np.asarray(flags, dtype=bool).reshape(-1, G)
        genres = {i: np.flatnonzero(f).tolist() for i, f in zip(ids, fl)}
    return Interactions.from_raw(ru, ri, w, t, name=name, item_genres=genres, genre_names=names)


def load_dataset(spec: str, *, seed: int = 0) -> Interactions:
    """Load a data set from a CLI spec string.

    ``"synthetic"`` or ``"synthetic:n_users=5000,n_items=8000,zipf_s=1.2"`` (keyword arguments of
    :func:`power_law`; ``seed`` comes from this function unless given; a spec naming a key of
    :data:`~embtab.data.generator_v2.V2_KEYS`, e.g. ``"synthetic:rank=8,merit=0"``, is generated
    by :func:`~embtab.data.generator_v2.power_law_v2` instead), ``"stream"`` or
    ``"stream:n_windows=6,half_life=1.5,rank=8"`` (keyword arguments of
    :func:`~embtab.data.stream.power_law_stream`, the time-ordered stream), ``"movielens:PATH"``,
    ``"interactions:PATH"`` or ``"interactions:PATH,categories=PATH"``.

    Example::

        >>> load_dataset("synthetic:n_users=30,n_items=40,interactions_per_user=5").n_users
        30
    """
    kind, _, arg = spec.partition(":")
    if kind in ("synthetic", "stream"):
        kwargs: dict = {"seed": seed}
        for item in filter(None, arg.split(",")):
            k, eq, v = item.partition("=")
            if not eq:
                raise ValueError(f"dataset spec {spec!r}: expected key=value, found {item!r}")
            kwargs[k.strip()] = _literal(v.strip())
        if kind == "stream":
            generate = power_law_stream
        else:
            generate = power_law_v2 if V2_KEYS & kwargs.keys() else power_law
        try:
            return generate(**kwargs)
        except TypeError as e:
            raise ValueError(f"dataset spec {spec!r}: {e}") from None
    if kind == "movielens" and arg:
        return load_movielens(arg)
    if kind == "interactions" and arg:
        path, _, cats = arg.partition(",categories=")
        return load_interactions(path, categories=cats or None)
    raise ValueError(f"unknown dataset spec {spec!r}; expected 'synthetic[:key=value,...]', "
                     "'stream[:key=value,...]', 'movielens:PATH' or "
                     "'interactions:PATH[,categories=PATH]'")


def _literal(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v

