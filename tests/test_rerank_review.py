"""rerank.smoothed_kl refuses infinite distributions (+inf in q gave -inf)."""

import numpy as np
import pytest

from embtab import rerank


@pytest.mark.parametrize("p, q, name", [
    ([0.5, 0.5], [np.inf, 0.0], "q"),
    ([np.inf, 0.5], [0.5, 0.5], "p"),
    ([0.5, 0.5], [-np.inf, 1.0], "q"),
    ([[0.5, 0.5], [0.2, np.inf]], [0.5, 0.5], "p"),
])
def test_smoothed_kl_refuses_infinite_values(p, q, name):
    with pytest.raises(ValueError, match=f"^{name} must be non-negative and finite"):
        rerank.smoothed_kl(np.array(p), np.array(q))


def test_smoothed_kl_of_unnormalised_finite_rows_is_unchanged():
    got = rerank.smoothed_kl(np.array([1e300, 1e300]), np.array([2.0, 2.0]), alpha=0.5)
    assert np.isfinite(got)
