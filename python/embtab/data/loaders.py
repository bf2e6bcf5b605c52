"""Loaders: MovieLens (100K, 1M, 10M, 20M and later), generic ``user item [weight]`` files, and
CLI spec strings.

Sources reachable through :func:`load_dataset` spec strings (what the CLI passes):

=====================================  ============================================
``synthetic[:key=value,...]``          :func:`embtab.data.power_law`
``movielens:PATH``                     :func:`load_movielens` (any MovieLens layout)
``interactions:PATH[,categories=P]``   :func:`load_interactions` (``user item [weight]``)
=====================================  ============================================
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from embtab._research import U64_MAX
from embtab.data.containers import Interactions
from embtab.data.generator_v2 import V2_KEYS, power_law_v2
from embtab.data.stream import REFUSED_V2_KEYS, power_law_stream
from embtab.data.synthetic import power_law

__all__ = ["HEADER_NAMES", "MOVIELENS_GENRES", "load_dataset", "load_interactions",
           "load_movielens"]

PathLike = Union[str, Path]

#: The 19 genre names of MovieLens-100K, used when ``u.genre`` is absent.
MOVIELENS_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)


#: A UTF-8 byte-order mark as the first characters of a file read as UTF-8 or as latin-1.
_BOMS = ("\ufeff", "\xef\xbb\xbf")


def _strip_bom(text: str) -> str:
    for bom in _BOMS:
        if text.startswith(bom):
            return text[len(bom):]
    return text


def _read_lines(path: Path, encoding="utf-8"):
    """The lines of a text file, without a leading UTF-8 byte-order mark."""
    try:
        text = _strip_bom(path.read_text(encoding=encoding))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; expected a file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not {encoding} text ({e})") from None
    return text.splitlines()


def _check_tabs(path, n, text):
    """Refuse a whitespace-separated line with an empty field between two tabs (``text``
    stripped): splitting on whitespace would shift the fields after it silently."""
    k = next((i for i, f in enumerate(text.split("\t"), 1) if not f.strip()), None)
    if k is not None:
        raise ValueError(f"{path}, line {n}: field {k} is empty (two tabs in a row); every "
                         "field needs a value")


def _split_lines(lines, sep, path=None):
    """Return (rows of fields, 1-based line numbers) skipping blank and '#' comment lines.
    Whitespace-separated lines (``sep`` None) with an empty field between tabs are refused."""
    if sep is None:
        rows = [ln.split() for ln in lines]
        for n, ln in enumerate(lines, 1):
            if "\t" in ln:
                text = ln.strip()
                if text and not text.startswith("#"):
                    _check_tabs(path, n, text)
    else:
        rows = [[f.strip() for f in ln.split(sep)] if ln.strip() else [] for ln in lines]
    keep = [n for n, r in enumerate(rows) if r and not r[0].startswith("#")]
    return [rows[n] for n in keep], [n + 1 for n in keep]


def _guess_sep(lines):
    """``","`` when a non-comment line among the first 1,000 holds a comma, else ``None``
    (whitespace); ``#`` comment lines do not count."""
    text = (ln for ln in lines if not ln.lstrip().startswith("#"))
    return "," if any("," in ln for ln in itertools.islice(text, 1000)) else None


def _parses(tok: str, conv) -> bool:
    """Whether ``conv(tok)`` (``int`` or ``float``) reads ``tok``."""
    try:
        conv(tok)
        return True
    except ValueError:
        return False


def _is_number(tok: str) -> bool:
    return _parses(tok, float)


def _is_int(tok: str) -> bool:
    return _parses(tok, int)


def _ascii_int_text(text: str) -> bool:
    """Whether ``text`` (a token, or a whole column joined) holds no character that int() reads
    beyond the ASCII digits and signs: int() also reads '1_000' and other scripts' digits
    ('１', '١'), which would turn distinct raw tokens into one ID ('１' and '1'), so an integer
    field (an ID, a timestamp) with a non-ASCII character or a '_' is refused. (Two C-level
    passes over a whole column, not a regular expression.)"""
    return text.isascii() and "_" not in text


def _parse_column(tokens, kind, path, numbers, what):
    """Vectorised parse of a column of strings; on failure find and name the first bad line.

    ``kind`` "id" (an integer in ``[-2^63, 2^64)``), "int" (int64) or "float" (finite).
    Integers are ASCII decimal digits with an optional sign (:func:`_ascii_int_text`)."""
    try:
        if kind != "float" and not _ascii_int_text("".join(tokens)):
            raise ValueError   # find the token below
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
                if not _ascii_int_text(tok):
                    if _is_int(tok):   # int() reads it, as another token's number
                        raise ValueError(
                            f"{path}, line {n}: {what} {tok!r} is not an integer written with "
                            f"the ASCII digits 0-9 and an optional sign (no '_', no other "
                            f"digits: int() would read it as {int(tok)}, the same "
                            f"{'ID' if kind == 'id' else 'number'} as {str(int(tok))!r})")
                    raise ValueError
                v = int(tok)
                hi = U64_MAX if kind == "id" else 2**63 - 1
                if not -(2**63) <= v <= hi:
                    raise ValueError
                v = v & U64_MAX if kind == "id" else v
        except ValueError as e:
            if str(e).startswith(f"{path}, line {n}:"):
                raise
            need = {"id": "an integer ID in [-2^63, 2^64)", "int": "an int64 integer",
                    "float": "a finite number"}[kind]
            raise ValueError(f"{path}, line {n}: {what} {tok!r} is not {need}") from None
        values.append(v)
    # only reached for an ID column mixing negative IDs and IDs >= 2^63
    return np.asarray(values, dtype=np.uint64)


def load_interactions(path: PathLike, categories: PathLike | None = None, *,
                      name: str | None = None) -> Interactions:
    """Load a generic ``user item [weight [timestamp]]`` file.

    Format: one interaction per line, fields separated by whitespace, or by commas when a line
    that is not a comment contains a comma. Blank lines and lines starting with ``#`` are
    skipped, and so is a UTF-8 byte-order mark. The first line is a header when none of its
    fields is a number; a first line with a number in it is data, and a bad field there is
    reported as on any line. A line separated by ``;``, ``|`` or ``:`` (one field, with a digit
    in it on the first line) is data too, refused with a message naming the separators taken.
    A header whose every name is one of :data:`HEADER_NAMES` (``user``, ``item_id``,
    ``rating``, ``timestamp``, ...; any order) picks the columns by name, and must name a user
    and an item column (``item,rating,timestamp`` is refused, naming the file and the missing
    column); a header with any other name in it is skipped and the columns are taken by
    position, unless one of its known names contradicts its position (``item_id,user_id,label``
    would read the items as users: refused, naming the column and the unknown name).
    A header field with no name (pandas' index column) is refused, and so is an empty field
    between two tabs.
    User and item IDs are integers in ``[-2^63, 2^64)`` (negative ones are stored as their
    uint64 bit pattern); ``weight`` is a finite float, ``timestamp`` an int64 integer. IDs and
    timestamps are written with the ASCII digits 0-9 and an optional sign: ``1_000``, ``0x10``
    and other scripts' digits (``１``) are refused, naming the file, line and token (Python's
    ``int()`` would read ``１`` as 1, merging two distinct raw IDs). Every line
    has the same number of fields (2, 3 or 4; with a header of known names, 2 to 4 of them).
    Repeated (user, item) pairs are merged: weights
    summed, latest timestamp kept. Every line is one positive interaction: training and the
    metrics read which (user, item) pairs occur, not their weights (kept in
    ``Interactions.weights``), so a file with negative feedback (label 0, a low rating) must be
    filtered first; a weight <= 0 draws a ``UserWarning`` saying so.

    The optional ``categories`` file has lines ``item category`` (same separator rules; the
    category is the rest of the line after the first separator, so it may contain spaces in a
    whitespace file), one or several lines per item; a first line without a number is a header.
    Items absent from the interactions are ignored; the genres are every category the file
    names, sorted (so data sets read with one categories file, e.g. a train and a test file,
    share their genre indices, as MovieLens's do; a category only absent items hold is a genre
    no item holds). Items of the data without a line have no genre, and a
    ``UserWarning`` naming the file counts them; when no item listed in the file occurs in the
    data, a ``UserWarning`` says so and the data set has no categories. A file with no
    ``item category`` line at all (empty, or a header alone) is refused with ``ValueError``:
    without categories, E3 would measure popularity bins instead, silently.

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
    sep = _guess_sep(lines)
    rows, numbers = _split_lines(lines, sep, path)
    header = None
    if rows and not any(map(_is_number, rows[0])) and not _other_separator(rows[0], data=True):
        header = (numbers[0], (sep or " ").join(rows[0]), rows[0])
        roles = _header_roles(path, numbers[0], rows[0])
        rows, numbers = rows[1:], numbers[1:]
    else:
        roles = None
    if not rows:
        raise ValueError(f"{path}: no interactions (expected lines 'user item [weight]')"
                         + (f"; line {header[0]}, {header[1]!r}, was read as a header"
                            if header else ""))
    try:
        return _interactions_from_rows(path, rows, numbers, categories, name, roles)
    except ValueError as e:
        if header is None or not str(e).startswith(f"{path}, line {numbers[0]}:") \
                or _other_separator(header[2], data=True) or _other_separator(rows[0]):
            raise   # (lines in ';', '|' or ':': the error names the separators taken)
        # the first data line is bad too: say which line was taken for a header
        raise ValueError(f"{e} (line {header[0]}, {header[1]!r}, has no number and was read "
                         "as a header)") from None


#: Field separators that load_interactions does not take (it takes whitespace and commas).
_OTHER_SEPARATORS = ";|:"


def _other_separator(fields, data=False) -> str | None:
    """The first of ``;``, ``|`` and ``:`` in ``fields`` when they are one field (a line
    separated by one of them), else None; with ``data`` only when the line split at it is 2 to
    4 numbers (a data line such as ``0;24;1``, not a header such as ``user|item`` or a title
    such as ``exported 2024-01-05 12:30``)."""
    if len(fields) != 1:
        return None
    sep = next((c for c in fields[0] if c in _OTHER_SEPARATORS), None)
    if sep is None or not data:
        return sep
    parts = [p.strip() for p in fields[0].split(sep)]
    return sep if 2 <= len(parts) <= 4 and all(map(_is_number, parts)) else None


#: Header names recognised by load_interactions, per column (compared lowercased, without
#: spaces, '_' and '-'): a header made only of these names picks the columns by name.
HEADER_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users", "customer", "customerid", "visitorid"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid"),
    "weight": ("weight", "rating", "ratings", "score", "count", "value", "clicks"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "unixtimestamp"),
}


def _header_roles(path, n, names):
    """``{column: position}`` from a header line (line ``n``) whose every field is one of
    :data:`HEADER_NAMES`; None when some name is not (the columns are then taken by position),
    unless a known name contradicts its column's position (refused: ``item_id,user_id,label``).
    A header of known names only that lacks a user or an item column (``item,rating``) is
    refused, naming the file and the missing column: by position it would read one column as
    another. A header field with no name is refused too: it is a column of row numbers, as
    pandas' ``to_csv`` writes by default, and would shift every column."""
    for i, x in enumerate(names, 1):
        if not x.strip():
            raise ValueError(f"{path}, line {n}: header field {i} has no name (a column of row "
                             "numbers, as pandas' to_csv writes by default? write the file "
                             "with index=False, or drop that column)")
    def role_of(x):
        key = "".join(c for c in x.lower() if c not in " _-")
        return next((r for r, known in HEADER_NAMES.items() if key in known), None)

    found = [role_of(x) for x in names]
    if None in found:
        # Some name is unknown: the header is skipped and the columns taken by position, unless
        # a known name says its column is another one than its position makes it
        # ('item_id,user_id,label' read the items as users)
        by_position = ("user", "item", "weight", "timestamp")
        clash = [(x, r, by_position[i]) for i, (x, r) in enumerate(zip(names, found))
                 if r is not None and i < len(by_position) and r != by_position[i]]
        if clash:
            x, r, pos = clash[0]
            unknown = [x for x, r in zip(names, found) if r is None]
            raise ValueError(
                f"{path}, line {n}: the header names {x!r} as the {r} column, but it is the "
                f"{pos} column by position, and the header cannot be read by name: "
                f"{', '.join(map(repr, unknown))} is not a known column name (known: "
                f"{', '.join(f'{k} {v[0]!r}' for k, v in HEADER_NAMES.items())}, or their "
                f"variants); rename or drop that column")
        return None
    roles: dict = {}
    for i, (x, role) in enumerate(zip(names, found)):
        if role in roles:
            raise ValueError(f"{path}, line {n}: the header names two {role} columns, "
                             f"{names[roles[role]]!r} and {x!r}")
        roles[role] = i
    missing = [r for r in ("user", "item") if r not in roles]
    if missing:
        # (it was skipped and the columns taken by position: 'item,rating,timestamp' read the
        # items as users and the ratings as items)
        raise ValueError(
            f"{path}, line {n}: the header {', '.join(map(repr, names))} names known columns "
            f"but no {' and no '.join(missing)} column; name the columns (a user and an item "
            f"column, such as {HEADER_NAMES[missing[0]][0]!r}, are required), or drop the "
            "header to take the columns by position ('user item [weight [timestamp]]')")
    return roles


def _interactions_from_rows(path, rows, numbers, categories, name, roles=None):
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ncol = int(widths[0])
    if roles is not None and ncol != len(roles):
        raise ValueError(f"{path}, line {numbers[0]}: expected {len(roles)} fields like the "
                         f"header, found {ncol}")
    if ncol not in (2, 3, 4):
        hint = ""
        other = _other_separator(rows[0])
        if other:
            hint = (f" ({rows[0][0]!r} is separated by {other!r}: fields are separated by "
                    f"whitespace (spaces or tabs) or by commas, not by ';', '|' or ':')")
        raise ValueError(f"{path}, line {numbers[0]}: expected 2 to 4 fields "
                         f"'user item [weight [timestamp]]', found {ncol}{hint}")
    bad = np.flatnonzero(widths != ncol)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{path}, line {numbers[b]}: expected {ncol} fields like line "
                         f"{numbers[0]}, found {widths[b]}")
    flat = list(itertools.chain.from_iterable(rows))
    if roles is None:
        roles = dict(zip(("user", "item", "weight", "timestamp"), range(ncol)))
    cols = {role: flat[c::ncol] for role, c in roles.items()}
    ru = _parse_column(cols["user"], "id", path, numbers, "user")
    ri = _parse_column(cols["item"], "id", path, numbers, "item")
    w = _parse_column(cols["weight"], "float", path, numbers, "weight") if "weight" in cols else None
    if w is not None and (w <= 0).any():
        nonpos = np.flatnonzero(w <= 0)
        warnings.warn(
            f"{path}: {nonpos.size} of {w.size} lines (first: line {numbers[int(nonpos[0])]}) have "
            f"a weight <= 0; every line counts as a positive interaction (training and the "
            f"metrics read which (user, item) pairs occur, not their weights): drop negative "
            f"feedback from the file first if it is that", UserWarning, stacklevel=3)
    t = (_parse_column(cols["timestamp"], "int", path, numbers, "timestamp")
         if "timestamp" in cols else None)
    genres, genre_names = (None, None)
    if categories is not None:
        genres, genre_names = _categories_of(ri, Path(categories))
    return _from_raw(path, ru, ri, w, t, name=name or path.stem, item_genres=genres,
                                 genre_names=genre_names)


def _from_raw(path: Path, *args, **kwargs) -> Interactions:
    """:meth:`Interactions.from_raw`, whose refusal of repeated pairs whose weights sum past
    float64's range (``"weights: ..."``) names the file ``path`` they came from."""
    try:
        return Interactions.from_raw(*args, **kwargs)
    except ValueError as e:
        if str(e).startswith("weights:"):
            raise ValueError(f"{path}: {e}") from None
        raise


#: A categories line: the item, one separator (a comma or whitespace, with spaces around it),
#: and the category: the rest of the line, which may hold spaces and commas.
_CATEGORY_LINE = re.compile(r"([^\s,]+)\s*[,\s]\s*(\S.*)")


def _load_categories(path: Path):
    lines = _read_lines(path)
    items, cats, numbers = [], [], []
    for n, ln in enumerate(lines, 1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        m = _CATEGORY_LINE.fullmatch(s)   # per line: no separator guessed from other lines
        if m is None or not m.group(2).strip(", \t"):   # ('10 ,': no category after all)
            raise ValueError(f"{path}, line {n}: expected 'item category', found {s!r}")
        items.append(m.group(1))
        cats.append(m.group(2).strip())
        numbers.append(n)
    if items and not _is_number(items[0]):
        items, cats, numbers = items[1:], cats[1:], numbers[1:]   # header line
    if not items:
        # refused rather than read as "no categories": the run would then measure popularity
        # bins in place of the categories asked for, with nothing to say so
        raise ValueError(f"{path}: no 'item category' lines (the file is empty or holds only "
                         "a header, blank or '#' lines); give a categories file with a line "
                         "per item and category, or leave out categories= to load the "
                         "interactions without categories")
    listed = [c for c in dict.fromkeys(cats) if "|" in c or "," in c]
    if listed:
        warnings.warn(f"{path}: {len(listed)} category names hold ',' or '|' (first: "
                      f"{listed[0]!r}); each is kept whole as one category. An item with several "
                      f"categories needs a line per category", UserWarning, stacklevel=5)
    raw = _parse_column(items, "id", path, numbers, "item")
    names, gidx = np.unique(np.asarray(cats, dtype=str), return_inverse=True)
    mapping: dict = {}
    for r, g in zip(raw.tolist(), gidx.ravel().tolist()):
        mapping.setdefault(r, []).append(g)
    return mapping, tuple(str(x) for x in names)


def _categories_of(raw_items: np.ndarray, path: Path):
    """``({raw item: [genre index]}, genre names)`` of the items of the interactions
    (``raw_items``, uint64) from the categories file ``path``: the lines of items absent from
    the interactions are ignored; the genres are every category the file names (sorted), so
    that data sets read with one categories file (a train and a test file) share their genre
    indices, as MovieLens's genres do. Warns (``UserWarning``, naming the file) when items of
    the data have no line there, and when no item listed there occurs in the data (then no item
    has a category: (None, None))."""
    mapping, names = _load_categories(path)
    rated = set(np.unique(raw_items).tolist())
    present = {k: g for k, g in mapping.items() if k in rated}
    if not present:
        warnings.warn(f"{path}: none of the {len(mapping)} items listed there occurs in the "
                      f"{len(rated)} items of the interactions, so no item has a category and "
                      "the data set has none (are they the same kind of item ID?)",
                      UserWarning, stacklevel=4)
        return None, None
    _warn_unlisted(raw_items, present, path, "items of the interactions", "category",
                   stacklevel=5)
    return present, tuple(names)


#: MovieLens layouts, by the ratings file that marks each: (file, layout, field separator).
_MOVIELENS_LAYOUTS = (("u.data", "100k", None), ("ratings.dat", "dat", "::"),
                      ("ratings.csv", "csv", ","))

#: Lines of a ratings file parsed at a time (bounds the memory of a 25M-line file).
_CHUNK_LINES = 1 << 19


def _movielens_ratings_file(path: Path) -> tuple:
    """(layout, separator, ratings file) of a MovieLens folder or ratings file."""
    layouts = {f: (lay, sep) for f, lay, sep in _MOVIELENS_LAYOUTS}
    if path.is_file():
        if path.name in layouts:
            return (*layouts[path.name], path)
        # another ratings file (100K's u1.base .. ub.test): the layout its first line shows
        with open(path, encoding="latin-1") as f:
            first = next((ln for ln in map(_strip_bom, f) if ln.strip() and not ln.startswith("#")), "")
        if "::" in first:
            return "dat", "::", path
        return ("csv", ",", path) if "," in first else ("100k", None, path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for f, lay, sep in _MOVIELENS_LAYOUTS:
        if (path / f).is_file():
            return lay, sep, path / f
    raise FileNotFoundError(f"{path / 'u.data'}: no such file (nor ratings.dat or ratings.csv in "
                            f"{path}: not a MovieLens folder)")


def _read_ratings(data_file: Path, sep, encoding: str):
    """The user, item, rating and timestamp columns of a file of ``user item rating timestamp``
    lines (fields split by ``sep``, whitespace when None), read a chunk of lines at a time.
    Blank and ``#`` lines are skipped, and so is a first line none of whose fields is a number
    (a header). ValueError naming the file and line for anything else."""
    what = {None: "tab-separated", "::": "'::'-separated", ",": "comma-separated"}[sep]
    cols: tuple = ([], [], [], [])
    first = True
    header = None   # (line number, text) of a first line skipped as a header
    try:
        with open(data_file, encoding=encoding) as f:
            done = 0
            while True:
                lines = list(itertools.islice(f, _CHUNK_LINES))
                if not lines:
                    break
                rows, numbers = [], []
                for n, ln in enumerate(lines, done + 1):
                    text = (_strip_bom(ln) if n == 1 else ln).strip()
                    if not text or text.startswith("#"):
                        continue
                    if sep is None and "\t" in text:
                        _check_tabs(data_file, n, text)
                    fields = text.split(sep) if sep else text.split()
                    if first and not any(_is_number(x.strip()) for x in fields):
                        first = False
                        header = (n, text)
                        continue  # a header: no field is a number
                    first = False
                    rows.append(fields)
                    numbers.append(n)
                done += len(lines)
                if not rows:
                    continue
                widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
                bad = np.flatnonzero(widths != 4)
                if bad.size:
                    b = int(bad[0])
                    raise ValueError(f"{data_file}, line {numbers[b]}: expected 4 {what} fields "
                                     f"'user item rating timestamp', found {widths[b]}")
                flat = [x.strip() for x in itertools.chain.from_iterable(rows)]
                for c, (k, kind) in enumerate((("user", "id"), ("item", "id"),
                                               ("rating", "float"), ("timestamp", "int"))):
                    cols[c].append(_parse_column(flat[c::4], kind, data_file, numbers, k))
    except FileNotFoundError:
        raise FileNotFoundError(f"{data_file}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{data_file}: not {encoding} text ({e})") from None
    except ValueError as e:
        if header is None or cols[0] or not any(
                _is_number(x) for x in re.split(r"::|[,;|\s]+", header[1])):
            raise
        # nothing was read after the line taken for a header, and that line holds numbers
        # under another separator: say so (e.g. a comma-separated u.data, whose first line
        # has no tab-separated number); a header of names only is not the cause
        raise ValueError(f"{e} (line {header[0]}, {header[1]!r}, has no {what} field that "
                         "is a number, so it was read as a header)") from None
    if not cols[0]:
        raise ValueError(f"{data_file}: no ratings"
                         + (f" (line {header[0]}, {header[1]!r}, was read as a header)"
                            if header else ""))
    return tuple(np.concatenate(parts) for parts in cols)


def _movies_genres(movies_file: Path, layout: str) -> tuple:
    """``({item: [genre index]}, genre names)`` from MovieLens-1M/10M ``movies.dat``
    (``id::title::A|B``, latin-1) or MovieLens-20M/25M/32M/latest ``movies.csv``
    (``movieId,title,genres`` with a header and quoted titles, UTF-8). Genre names are sorted;
    ``(no genres listed)`` gives the item no genre."""
    import csv

    lines = _read_lines(movies_file, "latin-1" if layout == "dat" else "utf-8-sig")
    if layout == "dat":
        rows = [(n, ln.split("::")) for n, ln in enumerate(lines, 1) if ln.strip()]
        form = "id::title::genres"
    else:
        rows = [(n, r) for n, r in enumerate(csv.reader(lines), 1) if r]
        form = "movieId,title,genres"
        if rows and not _is_int(rows[0][1][0].strip()):
            rows = rows[1:]  # the header
    items, tags, where = [], [], []
    for n, parts in rows:
        if len(parts) < 3 or not _is_int(parts[0].strip()):
            raise ValueError(f"{movies_file}, line {n}: expected '{form}', found {len(parts)} "
                             "fields")
        items.append(int(parts[0]))
        tags.append({g.strip() for g in parts[-1].split("|")} - {"", "(no genres listed)"})
        where.append(n)
    _check_repeated_items(movies_file, items, [sorted(t) for t in tags], where)
    names = tuple(sorted(set().union(*tags)))
    index = {g: i for i, g in enumerate(names)}
    return {i: sorted(index[g] for g in t) for i, t in zip(items, tags)}, names


def _check_repeated_items(genre_file: Path, items: list, genres: list, lines: list) -> None:
    """ValueError naming both lines when an item is listed twice with other genres (which
    line holds would be a guess); a line repeated as it is changes nothing."""
    seen: dict = {}
    for i, g, n in zip(items, genres, lines):
        if i in seen and seen[i][0] != g:
            raise ValueError(f"{genre_file}, line {n}: item {i} is listed again with other "
                             f"genres than on line {seen[i][1]}; list each item once")
        seen.setdefault(i, (g, n))


def load_movielens(path: PathLike, *, name: str | None = None) -> Interactions:
    """Load a MovieLens download: 100K, 1M, 10M, 20M, 25M, 32M, latest or latest-small.

    The layout is found from the ratings file in the folder (or given as ``path``):

    - ``u.data`` (100K): tab-separated ``user item rating timestamp`` lines; genres from
      ``u.item`` (pipe-separated lines, latin-1, ``id|title|release date|video release
      date|IMDb URL`` followed by one 0/1 flag per genre), names from ``u.genre``
      (``name|index``, indices 0..G-1) when present, else :data:`MOVIELENS_GENRES` (19). The
      flag count of every ``u.item`` line must equal the number of genres.
    - ``ratings.dat`` (1M, 10M): ``user::item::rating::timestamp``; genres from ``movies.dat``
      (``id::title::Genre1|Genre2``, latin-1).
    - ``ratings.csv`` (20M and later, latest, latest-small): ``userId,movieId,rating,timestamp``
      with a header; genres from ``movies.csv`` (``movieId,title,genres``, quoted titles, UTF-8).

    In the last two, genre names are the sorted names that occur, and ``(no genres listed)``
    gives an item no genre. Ratings become ``weights`` (every rating counts as an
    interaction); timestamps are kept. Lines that repeat a (user, item) pair are merged into
    one interaction (ratings summed, the latest timestamp) with a warning; an item listed
    twice in the genre file with other genres is refused. Items listed in the genre file but
    never rated are dropped; the genre file is optional (no genres, and no genre names, without
    it). A UTF-8 byte-order mark is skipped; an empty field between two tabs is refused.

    Parameters
    ----------
    path : str or Path
        The folder of the download, or a ratings file: one of the names above, or another
        (100K's ``u1.base`` .. ``ub.test``) whose layout its first line shows (``::``: 1M/10M,
        a comma: CSV, else tab-separated 100K); genres come from the same folder.
    name : str, optional
        The data set's name (default ``"ml-100k"`` for the 100K layout holding the published
        data's 100,000 ratings of 943 users on 1,682 items, else the folder's name; for a
        ratings file of another name, such as ``u1.base``, ``"FOLDER/u1.base"``).

    Returns
    -------
    Interactions
        For ml-100k: 943 users, 1682 items, 100,000 interactions, 19 genres.

    Raises
    ------
    FileNotFoundError
        No ratings file.
    ValueError
        Malformed input, naming the file and line.

    Example::

        >>> d = load_movielens("../shared/data/ml-100k")   # doctest: +SKIP
        >>> d.n_users, d.n_items, d.n_interactions, d.n_genres   # doctest: +SKIP
        (943, 1682, 100000, 19)
    """
    layout, sep, data_file = _movielens_ratings_file(Path(path))
    folder = data_file.parent
    ru, ri, w, t = _read_ratings(data_file, sep, "latin-1" if layout != "csv" else "utf-8-sig")
    _warn_cut_short(data_file)
    if name is None:
        # "ml-100k" only for the published data's size; another folder in its layout (a subset,
        # a copy with rows removed) is named by its folder, so reports do not mislabel it.
        full = (layout == "100k" and len(ru) == 100_000 and len(np.unique(ru)) == 943
                and len(np.unique(ri)) == 1682)
        name = "ml-100k" if full else folder.resolve().name
        if data_file.name not in {f for f, _, _ in _MOVIELENS_LAYOUTS}:
            name = f"{name}/{data_file.name}"   # a split such as u1.base, not the whole data set
    if layout != "100k":
        movies = folder / ("movies.dat" if layout == "dat" else "movies.csv")
        genres, names = _movies_genres(movies, layout) if movies.is_file() else (None, ())
        if genres is not None:
            _warn_unlisted(ri, genres, movies)
        return _warn_repeated_ratings(data_file, len(ru), _from_raw(data_file,
            ru, ri, w, t, name=name, item_genres=genres,
            genre_names=names if genres is not None else None))

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
        pairs.sort()
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise ValueError(f"{genre_file}: genre indices must be 0, 1, ..., {len(pairs) - 1} "
                             f"once each; found {[i for i, _ in pairs]}")
        names = tuple(nm for _, nm in pairs)
        where = f"{genre_file} lists"
    else:
        where = f"MovieLens-100K has (no {genre_file.name} in {folder})"
    genres = None
    item_file = folder / "u.item"
    if item_file.is_file():
        G = len(names)
        ids, flags, at = [], [], []
        lead = "id|title|release date|video release date|IMDb URL"
        for n, ln in enumerate(_read_lines(item_file, "latin-1"), 1):
            if not ln.strip():
                continue
            parts = ln.rstrip("\r\n").split("|")
            if len(parts) < 6 or not _is_int(parts[0]):
                raise ValueError(f"{item_file}, line {n}: expected '{lead}' followed by {G} "
                                 f"genre flags, found {len(parts)} fields")
            tail = [f.strip() for f in parts[5:]]
            if len(tail) != G:
                raise ValueError(f"{item_file}, line {n}: {len(tail)} genre flags after "
                                 f"'{lead}', but {where} {G} genres; the counts must match")
            bad = next((k for k, f in enumerate(tail) if f not in ("0", "1")), None)
            if bad is not None:
                raise ValueError(f"{item_file}, line {n}: genre flags must be 0 or 1; flag "
                                 f"{bad + 1} ({names[bad]}) is {parts[5 + bad]!r}")
            ids.append(int(parts[0]))
            flags.append([f == "1" for f in tail])
            at.append(n)
        _check_repeated_items(item_file, ids, flags, at)
        fl = np.asarray(flags, dtype=bool).reshape(-1, G)
        genres = {i: np.flatnonzero(f).tolist() for i, f in zip(ids, fl)}
        _warn_unlisted(ri, genres, item_file)
    # without u.item no item has a genre: no genre names either, as in the other layouts
    return _warn_repeated_ratings(data_file, len(ru), _from_raw(data_file,
        ru, ri, w, t, name=name, item_genres=genres,
        genre_names=names if genres is not None else None))


def _warn_cut_short(data_file: Path) -> None:
    """Warn when a MovieLens ratings file does not end with a line end, as every published one
    does: a download cut short ends mid-line, and its last line may have parsed as a shorter
    number (a timestamp cut to its first digits) without any error."""
    with open(data_file, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) not in (b"\n", b"\r"):
            warnings.warn(f"{data_file}: the last line has no line end, as a file cut short "
                          "has (the published MovieLens files end with one); if the download "
                          "was interrupted, its last rating may be wrong", stacklevel=3)


def _warn_repeated_ratings(data_file: Path, lines: int, data: Interactions) -> Interactions:
    """``data``, after a warning when its ``lines`` rating lines held repeated (user, item)
    pairs (MovieLens has one rating per pair), which :meth:`Interactions.from_raw` merged."""
    repeated = lines - data.n_interactions
    if repeated:
        warnings.warn(f"{data_file}: {repeated} rating line(s) repeat the (user, item) pair of "
                      "another line; each pair is one interaction, its weight the sum of its "
                      "ratings and its timestamp the latest", stacklevel=3)
    return data


def _warn_unlisted(items: np.ndarray, genres: dict, genre_file: Path,
                   what: str = "rated items", genre: str = "genre",
                   stacklevel: int = 3) -> None:
    """Warn (``UserWarning``) when items of the data (``items``, raw IDs) have no line in the
    genre or categories file (a cut or partial file, another file's IDs): they get no
    ``genre``, which calibration and the genre metrics then read as such. ``what`` names the
    items in the message; ``stacklevel`` 3 points at the caller of the loader that calls this
    function itself."""
    rated = set(np.unique(items).tolist())
    missing = len(rated - {int(k) & U64_MAX for k in genres})
    if missing:
        warnings.warn(f"{genre_file}: {missing} of the {len(rated)} {what} have no line "
                      f"there, so they have no {genre}", UserWarning, stacklevel=stacklevel)


def load_dataset(spec: str, *, seed: int = 0) -> Interactions:
    """Load a data set from a CLI spec string.

    ``"synthetic"`` or ``"synthetic:n_users=5000,n_items=8000,zipf_s=1.2"`` (keyword arguments of
    :func:`power_law`; ``seed`` comes from this function unless given; a spec naming a key of
    :data:`~embtab.data.generator_v2.V2_KEYS`, e.g. ``"synthetic:rank=8,merit=0"``, is generated
    by :func:`~embtab.data.generator_v2.power_law_v2` instead), ``"stream"`` or
    ``"stream:n_windows=6,half_life=1.5,rank=8"`` (keyword arguments of
    :func:`~embtab.data.stream.power_law_stream`, the time-ordered stream), ``"movielens:PATH"``,
    ``"interactions:PATH"`` or ``"interactions:PATH,categories=PATH"``.

    Values are integers, numbers or words (``crowding=true``). The arguments that take three
    probabilities (for 1, 2, 3), ``genres_per_item`` and ``interests_per_user``, take them
    separated by ``/``: ``"synthetic:genres_per_item=0.3/0.5/0.2"`` (a comma would end the
    value). ``crowding_split`` needs ``crowding=1`` (ValueError naming both otherwise; a
    ``stream`` refuses both). A generator's warnings (users holding far fewer interactions
    than asked) point at the line that called this function. Sizes too large for this
    machine are refused with ``MemoryError`` naming the spec and the sizes, before anything
    is generated.

    Example::

        >>> load_dataset("synthetic:n_users=30,n_items=40,interactions_per_user=5").n_users
        30
        >>> d = load_dataset("synthetic:n_users=30,n_items=40,interactions_per_user=5,"
        ...                  "genres_per_item=1/0/0")
        >>> int(d.item_genres.lengths().max())   # every item has 1 genre
        1
    """
    if not isinstance(spec, str):   # (None raised AttributeError from partition)
        raise TypeError(f"spec must be a dataset spec string such as 'synthetic' or "
                        f"'movielens:PATH', got {type(spec).__name__}")
    kind, _, arg = spec.partition(":")
    if kind in ("synthetic", "stream"):
        kwargs: dict = {"seed": seed}
        given: set = set()
        # the arguments that take a sequence (their default is a tuple): 'key=a/b/c'
        triples = {k: prm.default for f in (power_law, power_law_v2)
                   for k, prm in inspect.signature(f).parameters.items()
                   if isinstance(prm.default, tuple)}
        for item in filter(None, arg.split(",")):
            k, eq, v = item.partition("=")
            if not eq:
                raise ValueError(f"dataset spec {spec!r}: expected key=value, found {item!r}")
            k = k.strip()
            if k in given:  # the last value won silently
                raise ValueError(f"dataset spec {spec!r}: key {k!r} is given more than once")
            given.add(k)
            if k in triples:
                parts = [_literal(x.strip()) for x in v.split("/")]
                if len(parts) != 3 or not all(isinstance(x, (int, float)) for x in parts):
                    raise ValueError(f"dataset spec {spec!r}: {k} takes 3 probabilities (for "
                                     f"1, 2, 3) separated by '/', e.g. {k}="
                                     f"{'/'.join(map(str, triples[k]))}; got {v.strip()!r}")
                kwargs[k] = tuple(float(x) for x in parts)
            else:
                kwargs[k] = _literal(v.strip())
        if kind == "stream":
            # its own arguments; the rest go to power_law_v2 (**v2)
            generate = power_law_stream
            known = (set(inspect.signature(power_law_stream).parameters) - {"v2"}) | set(
                inspect.signature(power_law_v2).parameters)
            listed = known - set(REFUSED_V2_KEYS)   # those pass on, to power_law_stream's refusal
        else:
            generate = power_law_v2 if V2_KEYS & kwargs.keys() else power_law
            known = set(inspect.signature(power_law).parameters) | set(
                inspect.signature(power_law_v2).parameters)
            listed = known
        unknown = sorted(given - known)
        if unknown:
            raise ValueError(f"dataset spec {spec!r}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)}; {kind} data sets take "
                             + ", ".join(f"{k}=P1/P2/P3" if k in triples else k
                                         for k in sorted(listed)))
        v1_only = sorted(given - set(inspect.signature(power_law_v2).parameters))
        if generate is power_law_v2 and v1_only:   # (TypeError: unexpected keyword argument)
            v2 = sorted(V2_KEYS & given)
            raise ValueError(f"dataset spec {spec!r}: {', '.join(v1_only)} "
                             f"{'is an argument' if len(v1_only) == 1 else 'are arguments'} of "
                             f"power_law, not of power_law_v2, which {', '.join(v2)} "
                             f"select{'s' if len(v2) == 1 else ''}")
        crowding = kwargs.get("crowding", False)
        if kind == "synthetic" and "crowding_split" in given and (
                isinstance(crowding, str) and crowding.lower() == "false"
                or not isinstance(crowding, str) and crowding in (0, False)):
            # (crowding_split selects power_law_v2 on its own, and had no effect there)
            raise ValueError(f"dataset spec {spec!r}: crowding_split sets the majority genre's "
                             "weight of the crowding setting and needs crowding=1 too (without "
                             "it, crowding_split would have no effect)")
        # the generator's warnings (capped activity, a stream that runs dry) come out, as they
        # are, at the line that called load_dataset rather than at this one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                data = generate(**kwargs)
            except (TypeError, ValueError) as e:
                raise ValueError(f"dataset spec {spec!r}: {e}") from None
            except MemoryError as e:   # sizes too large for this machine (check_memory)
                raise MemoryError(f"dataset spec {spec!r}: {e}") from None
        for w in caught:
            warnings.warn(w.message, stacklevel=2)
        return data
    if kind == "movielens" and arg:
        return load_movielens(arg)
    if kind == "interactions" and arg:
        path, sep, cats = arg.partition(",categories=")
        if ",categories=" in cats or (sep and not cats.strip()):
            raise ValueError(f"dataset spec {spec!r}: categories= must be given once, with a path")
        _, comma, tail = path.rpartition(",")
        if comma and "=" in tail and not Path(path).exists():   # 'file,key=value', another key
            key = tail.partition("=")[0]
            raise ValueError(f"dataset spec {spec!r}: unknown key {key!r} (interactions data "
                             f"sets take a path and, optionally, categories=PATH)")
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

