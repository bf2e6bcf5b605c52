"""embtab: collisionless embedding tables, calibrated reranking and popularity-bias experiments.

The compiled core is the private module ``embtab._core``; use the names exported here and in
the submodules ``embtab.nn``, ``embtab.rerank``, ``embtab.metrics``, ``embtab.data``,
``embtab.train`` and ``embtab.experiments``.
"""

from embtab._core import __version__
from embtab._errors import TableFullError
from embtab.table import CuckooTable

__all__ = ["CuckooTable", "TableFullError", "__version__"]
