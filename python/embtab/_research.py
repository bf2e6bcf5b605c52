"""Shared helpers of the research layer (``data``, ``metrics``, ``train``, ``experiments``,
``feedback``); see ``docs/architecture.md``.

Private to the layer: the tools layer and users import the public modules instead. Each helper
here is the one definition of its formula or constant; modules of the research layer import it
rather than restating it.
"""

from __future__ import annotations

import numpy as np

#: The largest raw 64-bit ID, 2^64 - 1.
U64_MAX = 2**64 - 1


def as_u64(x, what) -> np.ndarray:
    """Raw IDs as uint64 (int64 values reinterpreted as their bit pattern).

    Raises ``TypeError`` naming ``what`` when ``x`` does not hold integers.
    """
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64).view(np.uint64)
    if a.dtype == object or a.size == 0:
        try:
            return np.asarray([int(v) & U64_MAX for v in a.ravel()],
                              dtype=np.uint64).reshape(a.shape)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{what} must be integer IDs (uint64 or int64); got dtype {a.dtype}")
