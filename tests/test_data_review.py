"""Data-layer inputs a review found mishandled: RowSets negative rows, a subnormal half-life,
a huge window count, a spec that is not a string."""

import warnings

import numpy as np
import pytest

from embtab.data import Interactions, RowSets, load_dataset, power_law_stream, time_windows


def test_rowsets_negative_rows_count_from_the_end_like_a_list():
    s = RowSets.from_lists([[0], [1, 2]], 3)
    # s[-1] gave [] (the slice indptr[-1]:indptr[0]); take_rows([-1]) "negative dimensions"
    assert s[-1].tolist() == [1, 2] and s[-2].tolist() == [0]
    assert s[np.int64(-1)].tolist() == [1, 2]
    assert s.take_rows([-1, 0]).indices.tolist() == [1, 2, 0]
    assert s.take_rows(np.array([-2, -1])).lengths().tolist() == [1, 2]
    assert [x.tolist() for x in s] == [[0], [1, 2]]          # iteration stops at the end
    assert s.take_rows([]).n_rows == 0


@pytest.mark.parametrize("row", [2, -3, 10**20])
def test_rowsets_rows_out_of_range_raise_index_error(row):
    s = RowSets.from_lists([[0], [1, 2]], 3)
    with pytest.raises(IndexError, match=f"row {row} out of range for 2 rows"):
        s[row]
    if abs(row) < 2**63:
        with pytest.raises(IndexError, match=f"row {row} out of range for 2 rows"):
            s.take_rows([0, row])
    with pytest.raises(IndexError, match="out of range"):      # no wrap of a uint64 to -1
        s.take_rows(np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(TypeError, match="rows must be integers"):
        s.take_rows([0.5])
    with pytest.raises(TypeError, match="row must be an int"):
        s[1.0]


def test_stream_refuses_a_half_life_whose_decay_rate_overflows():
    # ln 2 / 5e-324 = inf: 0 · inf made every weight NaN, 0 interactions and a RuntimeWarning
    with pytest.raises(ValueError, match="half_life must be .* finite decay rate"):
        power_law_stream(30, 40, n_windows=3, n_genres=3, half_life=5e-324)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = power_law_stream(30, 40, n_windows=3, n_genres=3, half_life=1e-300)
    assert d.n_interactions > 0


def test_time_windows_do_not_list_a_huge_number_of_boundaries():
    # 10**7 windows took 1 s and 2**62 never finished (a Python list of n_windows boundaries)
    d = Interactions.from_raw([1, 1, 2, 2], [5, 6, 5, 7], timestamps=[0, 99, 50, 100])
    for n in (5, 10**7, 2**62, 2**63):
        want = [(int(x) - 0) * n // 101 for x in d.timestamps]
        assert time_windows(d, n).tolist() == want, n
    top = Interactions.from_raw([1, 2], [1, 1], timestamps=[-2**63, 2**63 - 1])
    assert time_windows(top, 2**63).tolist() == [0, 2**63 - 1]
    with pytest.raises(ValueError, match=r"n_windows must be <= 2\*\*63"):
        time_windows(d, 2**63 + 1)


def test_load_dataset_refuses_a_spec_that_is_not_a_string():
    for spec in (None, 3, b"synthetic"):
        with pytest.raises(TypeError, match="spec must be a dataset spec string"):
            load_dataset(spec)
