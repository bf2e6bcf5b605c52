"""Argument validators of the core layer (``table``, ``rerank``, ``nn``, ``distributed``).

One copy of each check, so that every public function refuses the same bad input with the same
message. Each validator takes ``(value, name, ...)``, returns the value converted to the plain
Python type the caller uses (``int``, ``float``, a NumPy array) and raises

- ``TypeError`` when the value has the wrong type or dtype, naming the argument and the type;
- ``ValueError`` when it has the right type but a bad value or shape, naming the argument and
  quoting the value or the shape.

Nothing here casts silently: a float is not an int, a ``bool`` is neither, an ``int32`` ID array
is not an ID array.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import numpy as np

__all__ = [
    "MAX_THREADS",
    "U64",
    "check_bytes",
    "check_id_array",
    "check_int",
    "check_memory",
    "check_ndarray",
    "check_real",
    "check_seed",
    "check_threads",
    "chunk_rows",
    "is_sparse",
    "machine_memory",
    "raw_id",
    "refuse_masked",
    "refuse_non_probabilities",
    "shape_str",
]

#: 2**64: raw IDs are 64-bit patterns, seeds are in ``[0, U64)``.
U64 = 1 << 64

#: Exclusive upper bound of ``num_threads`` (the C++ core counts threads in a C ``int``).
MAX_THREADS = 1 << 31

#: The most elements of one chunk's [rows, columns] array in the loops that score users
#: against the whole catalogue (2^24: 128 MiB of float64), whatever their ``chunk``.
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(chunk: int, n_cols: int) -> int:
    """Rows per chunk of a loop over [rows, ``n_cols``] arrays: ``chunk``, or fewer (at least 1)
    when ``chunk * n_cols`` would pass :data:`CHUNK_ELEMENTS` (a catalogue of 400,000 items
    made a 1,024-user chunk 3 GiB of float64). Catalogues of up to CHUNK_ELEMENTS / chunk
    columns keep ``chunk``.

    Example::

        >>> chunk_rows(1024, 3000), chunk_rows(1024, 400_000)
        (1024, 41)
    """
    return max(1, min(int(chunk), CHUNK_ELEMENTS // max(int(n_cols), 1)))


def shape_str(a: Any) -> str:
    """The shape of ``a`` as Python prints a tuple: ``"(3, 4)"``, ``"(5,)"``, ``"()"``."""
    return str(tuple(np.shape(a)))


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a scipy.sparse matrix or array (scipy is imported only if ``x`` could be one)."""
    if not type(x).__module__.startswith("scipy"):
        return False
    import scipy.sparse as sp

    return bool(sp.issparse(x))


def check_int(value: Any, name: str, *, min: Optional[int] = None, max: Optional[int] = None) -> int:
    """``value`` as an ``int``, checked against ``min <= value <= max`` (both optional, inclusive).

    Accepts Python and NumPy integers; refuses ``bool``, floats (even integral ones) and
    anything else with ``TypeError``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if min is not None and v < min:
        raise ValueError(f"{name} must be >= {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{name} must be <= {max}, got {v}")
    return v


def check_threads(value: Any, name: str = "num_threads", default: Optional[int] = None) -> int:
    """A thread count in ``[0, 2**31)`` (0 = all hardware threads).

    ``None`` gives ``default`` when one is given (a per-call override falling back to the
    object's setting) and is refused otherwise.
    """
    if type(value) is int and 0 <= value < MAX_THREADS:  # the usual case, checked at once
        return value
    if value is None and default is not None:
        return default
    v = check_int(value, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0 (0 = all hardware threads), got {v}")
    if v >= MAX_THREADS:
        raise ValueError(f"{name} must be < 2**31, got {v}")
    return v


def check_real(
    value: Any,
    name: str,
    *,
    min: Optional[float] = None,
    max: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``, finite unless ``finite=False``, within the given bounds.

    ``min``/``max`` are inclusive unless ``min_open``/``max_open``. NaN is always refused (it
    compares false with every bound). Accepts Python and NumPy reals; refuses ``bool``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} must be a finite number, got {value}") from None
    lo_bad = min is not None and not (v > min if min_open else v >= min)
    hi_bad = max is not None and not (v < max if max_open else v <= max)
    if lo_bad or hi_bad:  # NaN fails every bound
        if min is not None and max is not None:
            want = "in " + ("(" if min_open else "[") + f"{min:g}, {max:g}" + (")" if max_open else "]")
        elif min is not None:
            want = (">" if min_open else ">=") + f" {min:g}"
        else:
            want = ("<" if max_open else "<=") + f" {max:g}"
        raise ValueError(f"{name} must be {want}, got {v}")
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def check_seed(value: Any, name: str = "seed") -> int:
    """A 64-bit seed: an int in ``[0, 2**64)``."""
    return check_int(value, name, min=0, max=U64 - 1)


def raw_id(value: Any, name: str) -> int:
    """A raw 64-bit ID (any int in ``[-2**63, 2**64)``) as its int64 bit pattern."""
    v = check_int(value, name)
    if not -(1 << 63) <= v < U64:
        raise ValueError(f"{name} must fit in 64 bits, got {v}")
    return v - U64 if v >= (1 << 63) else v


def check_ndarray(
    a: Any, name: str, *, kinds: str = "", dtypes: Tuple[Any, ...] = (), ndim: Optional[int] = None
) -> np.ndarray:
    """Check that ``a`` is a NumPy array of an accepted dtype and rank; returns it unchanged.

    ``kinds`` lists accepted ``dtype.kind`` letters ("f", "iu", ...), ``dtypes`` accepted exact
    dtypes; an empty one does not restrict. ``bool`` arrays never pass an integer ``kinds``.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    ok_kind = not kinds or a.dtype.kind in kinds
    ok_dtype = not dtypes or any(a.dtype == np.dtype(d) for d in dtypes)
    if not (ok_kind and ok_dtype):
        want = " or ".join(str(np.dtype(d)) for d in dtypes) if dtypes else f"kind {kinds!r}"
        raise TypeError(f"{name} must have dtype {want}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {shape_str(a)}")
    return a


def check_id_array(a: Any, name: str = "ids") -> np.ndarray:
    """A 1-D array of raw IDs: ``int64`` or ``uint64`` in native byte order, never cast.

    Returns it C-contiguous (a copy only when it was not).
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of int64 or uint64, got {type(a).__name__}")
    if a.dtype not in (np.dtype(np.int64), np.dtype(np.uint64)):
        raise TypeError(f"{name} must have dtype int64 or uint64, got {a.dtype} (IDs are never cast implicitly)")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {shape_str(a)}")
    return np.ascontiguousarray(a)


def check_bytes(value: Any, name: str = "data") -> bytes:
    """``bytes``, ``bytearray`` or ``memoryview`` as ``bytes``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def machine_memory() -> Optional[int]:
    """RAM + swap of this machine in bytes (Linux ``/proc/meminfo``: ``MemTotal`` +
    ``SwapTotal``), or None where that is unknown (no ``/proc/meminfo``, another layout)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split()[1:2]}
        return (kib["MemTotal"] + kib.get("SwapTotal", 0)) * 1024
    except (OSError, ValueError, KeyError, IndexError):
        return None


def check_memory(total_bytes: float, what: str) -> None:
    """Refuse, with ``MemoryError``, a computation that would need about ``total_bytes`` at its
    peak when that is more than this machine's RAM + swap (:func:`machine_memory`; nothing is
    refused where that is unknown). ``what`` names the arguments that set the size and the
    computation, e.g. ``"n_users=1000000000, n_items=3000: the generator"``; the message is
    ``"{what} would need about 3.1e+12 bytes, more than this machine's RAM + swap (2.5e+10
    bytes)"``. Called before anything is allocated: an over-committed allocation is not refused
    by the kernel at once, but ends the process (the OOM killer) when it is filled, or runs
    for minutes in swap."""
    have = machine_memory()
    if have is not None and total_bytes > have:
        raise MemoryError(f"{what} would need about {float(total_bytes):.2g} bytes, more than "
                          f"this machine's RAM + swap ({float(have):.2g} bytes)")


def refuse_masked(a: Any, name: str, fill: str = "") -> None:
    """TypeError for a NumPy masked array: every check and the C++ core read its data, mask
    ignored (a masked entry was used at whatever value it held). ``fill`` suggests a value."""
    if isinstance(a, np.ma.MaskedArray):
        how = f"{name}.filled({fill})" if fill else f"{name}.filled(value)"
        raise TypeError(f"{name} is a numpy masked array, whose mask would be ignored (the masked "
                        f"entries read at whatever values they hold); pass a plain ndarray, "
                        f"e.g. {how}")


def refuse_non_probabilities(a: np.ndarray, name: str) -> None:
    """ValueError naming the first entry of ``a`` (``name[i, j, ...]``) outside [0, 1] or NaN."""
    bad = ~((a >= 0) & (a <= 1))   # (NaN fails both)
    if bad.any():
        where = tuple(int(x) for x in np.unravel_index(int(np.argmax(bad)), a.shape))
        raise ValueError(f"{name} must hold probabilities in [0, 1]; "
                         f"{name}[{', '.join(map(str, where))}] is {float(a[where])!r}")
