"""Pure-Python mirror of ``cpp/include/embtab/hash.hpp`` (tested to agree bit for bit).

``mix64(x, seed)`` is the 64-bit mixer every embtab component hashes with; ``mix64_array``
applies it to a NumPy array. The hashing-trick baseline maps an ID to row
``mix64(id, seed) % m`` (plain modulo, see :func:`hashed_row`).
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(x: int, seed: int) -> int:
    """Return the SplitMix64-style mix of the 64-bit value ``x`` keyed by ``seed``.

    ``x`` may be negative (an int64 ID); it is taken modulo 2**64, as the C++ core does.
    """
    x = (x + _GOLDEN * (seed + 1)) & _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def mix64_array(ids: np.ndarray, seed: int) -> np.ndarray:
    """Vectorised :func:`mix64` over an int64 or uint64 array; returns uint64."""
    x = (
        np.asarray(ids).view(np.uint64)
        if np.asarray(ids).dtype == np.int64
        else np.asarray(ids, np.uint64)
    )
    with np.errstate(over="ignore"):
        x = x + np.uint64((_GOLDEN * (seed + 1)) & _MASK)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def hashed_row(x: int, m: int, seed: int) -> int:
    """Row of ID ``x`` in a hashed table of ``m`` rows: ``mix64(x, seed) % m``."""
    return mix64(x, seed) % m
