"""The C++ helpers behind embtab.nn (embtab._core ops) and a property test of the ID map."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtab import _core
from embtab._core import _testing
from embtab._hashing import mix64_array
from embtab.nn import CuckooEmbedding


def test_ops_identical_for_any_thread_count():
    ids = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)
    sk = np.zeros((4, 1000), dtype=np.int64)
    _core.cms_add(ids[:1000], sk, 1)
    one = _core.hashed_rows(ids, 12345, 7, 1), _core.cms_query(ids, sk, 1, 1)
    out1 = np.empty((2000, 9), np.float32)
    _core.init_vectors(ids[:2000], out1, 3, "normal", 0.0, 1.0, 1)
    for threads in (0, 2, 3):
        assert np.array_equal(_core.hashed_rows(ids, 12345, 7, threads), one[0])
        assert np.array_equal(_core.cms_query(ids, sk, 1, threads), one[1])
        out = np.empty((2000, 9), np.float32)
        _core.init_vectors(ids[:2000], out, 3, "normal", 0.0, 1.0, threads)
        assert np.array_equal(out, out1)


def test_init_float64_and_float32_agree():
    ids = np.arange(10, dtype=np.uint64)
    a, b = np.empty((10, 5), np.float32), np.empty((10, 5), np.float64)
    _core.init_vectors(ids, a, 1)
    _core.init_vectors(ids, b, 1)
    assert np.array_equal(a, b.astype(np.float32))


def test_ops_refuse_bad_arguments():
    ids = np.arange(4, dtype=np.int64)
    with pytest.raises(TypeError, match="ids must have dtype int64 or uint64, got float64"):
        _core.hashed_rows(ids.astype(np.float64), 4, 0)
    with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(2, 2\)"):
        _core.hashed_rows(ids.reshape(2, 2), 4, 0)
    with pytest.raises(ValueError, match="m"):
        _core.hashed_rows(ids, 0, 0)
    with pytest.raises(ValueError, match=r"out must have shape \(4, dim\), got \(3, 2\)"):
        _core.init_vectors(ids, np.empty((3, 2), np.float32), 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.init_vectors(ids, np.empty((4, 2), np.float16), 0)
    with pytest.raises(ValueError, match="kind"):
        _core.init_vectors(ids, np.empty((4, 2), np.float32), 0, "xavier")
    with pytest.raises(TypeError, match="sketch"):
        _core.cms_query(ids, np.zeros((2, 3), np.int32), 0)
    with pytest.raises(ValueError, match=r"sketch must be 2-D"):
        _core.cms_query(ids, np.zeros(3, np.int64), 0)
    with pytest.raises(ValueError, match="num_threads"):
        _core.hashed_rows(ids, 4, 0, -1)


batches = st.lists(st.lists(st.integers(-3, 12), min_size=1, max_size=6), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    batches=batches,
    policy=st.sampled_from(["grow", "evict_lru", "evict_lfu"]),
    min_count=st.integers(1, 3),
)
def test_id_map_invariants(batches, policy, min_count):
    """After any sequence of batches: one distinct row per live ID, buffers mirror the table,
    the size bound holds, and every batch's IDs read their own rows (or the zero row)."""
    emb = CuckooEmbedding(6, 2, on_full=policy, min_count=min_count, padding_id=0)
    for b in batches:
        x = torch.tensor(b)
        with torch.no_grad():  # no graph outlives its batch: eviction may take any other row
            out = emb(x)
        rows = emb.lookup(x)
        for i, v in enumerate(b):
            if v == 0 or rows[i] < 0:
                assert torch.count_nonzero(out[i]) == 0
            else:
                assert torch.equal(out[i], emb.weight[rows[i]])
        keys, trows = emb._table.items()
        live = torch.nonzero(emb.row_live).reshape(-1).numpy()
        assert sorted(trows.tolist()) == live.tolist()
        assert np.array_equal(emb.row_ids.numpy()[trows], keys.view(np.int64))
        assert emb.num_ids == len(live) <= emb.num_embeddings
        assert 0 not in keys.view(np.int64).tolist()
        if policy != "grow":
            assert emb.num_embeddings == 6


def test_pool_bags_pools_and_refuses_bad_buffers():
    """_core.pool_bags (the collections' pooling pass): a hand-worked case, then each bad
    buffer refused with an error naming it."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = np.array([0, 3, 1], dtype=np.int64)
    off = np.array([0, 2, 3], dtype=np.int64)
    out = np.zeros((2, 5), np.float32)
    _core.pool_bags([(w, rows, off, None, False, 4, 2)], out)
    assert out.tolist() == [[0, 0, 9, 11, 13], [0, 0, 3, 4, 5]]  # rows 0 + 3, then row 1
    psw = np.array([2, 1, 1], dtype=np.float32)
    _core.pool_bags([(w, rows, off, psw, True, 3, 0)], out)  # row 3 skipped: mean of 2 * row 0
    assert out[:, :3].tolist() == [[0, 2, 4], [3, 4, 5]]
    bad = [
        ((w, np.array([0, 4, 1]), off, None, False, -1, 0), IndexError, r"rows\[1\] = 4"),
        ((w, rows, np.array([0, 2, 4]), None, False, -1, 0), ValueError, "offsets must lie"),
        ((w, rows, np.array([0, 2, 1]), None, False, -1, 0), ValueError, "non-decreasing"),
        ((w, rows, off[:2], None, False, -1, 0), ValueError, "out.shape"),
        ((w, rows, off, None, False, -1, 3), ValueError, "col = 3"),
        ((w.astype(np.float64), rows, off, None, False, -1, 0), TypeError, "out's dtype"),
        ((w, rows.astype(np.int32), off, None, False, -1, 0), TypeError, "int64"),
        ((w, rows, off, psw[:2], False, -1, 0), ValueError, "psw"),
    ]
    for feat, exc, match in bad:
        with pytest.raises(exc, match=match):
            _core.pool_bags([feat], out)


@pytest.mark.parametrize("B", [3000, 30])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pool_bags_reports_the_first_bad_entry(B, threads):
    """Oracle: the first out-of-range entry by lowest feature, then lowest entry (a brute-force
    scan), whatever the threads and however the bags and features are split among tasks
    (B = 3000: several chunks of bags; B = 30: one chunk, the features split among tasks)."""
    rng = np.random.default_rng(B + threads)
    w = rng.standard_normal((10, 4)).astype(np.float32)
    off = np.arange(B + 1, dtype=np.int64)
    for trial in range(20):
        rows = [rng.integers(0, 10, B).astype(np.int64) for _ in range(5)]
        for f in rng.choice(5, size=int(rng.integers(1, 4)), replace=False):
            for i in rng.choice(B, size=int(rng.integers(1, 3)), replace=False):
                rows[f][i] = 10 + int(rng.integers(0, 5))
        want_f = min(f for f in range(5) if (rows[f] >= 10).any())
        want_i = int(np.flatnonzero(rows[want_f] >= 10)[0])
        feats = [(w, rows[f], off, None, False, -1, 4 * f) for f in range(5)]
        out = np.zeros((B, 20), np.float32)
        with pytest.raises(IndexError, match=rf"features\[{want_f}\]: rows\[{want_i}\] = "):
            _core.pool_bags(feats, out, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_bags_same_bits_at_every_isa_level(dtype):
    """pool_bags dispatches to AVX-512 or AVX2 forms where the CPU has them; capped at AVX2 or
    at the baseline ISA it must give the same bits, for widths below, at and across its column
    block (32 float32 / 16 float64 columns), with weights, mean, skipped rows and empty bags;
    and match a NumPy reference to float tolerance."""
    rng = np.random.default_rng(5)
    B = 700
    feats, want_cols, col = [], [], 0
    for k, d in enumerate((1, 7, 16, 32, 33, 64, 100)):
        w = rng.standard_normal((40 + k, d)).astype(dtype)
        lens = rng.integers(0, 6, B)
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        rows = rng.integers(0, len(w), int(off[-1])).astype(np.int64)
        skip = len(w) - 1
        psw = rng.random(len(rows)).astype(dtype) if k % 2 else None
        mean = k % 3 == 0
        feats.append((w, rows, off, psw, mean, skip, col))
        ref = np.zeros((B, d))
        for b in range(B):
            r = rows[off[b]:off[b + 1]]
            x = w[r].astype(np.float64)
            if psw is not None:
                x = x * psw[off[b]:off[b + 1], None]
            x = x[r != skip]
            if len(x):
                ref[b] = x.mean(0) if mean else x.sum(0)
        want_cols.append(ref)
        col += d
    want = np.concatenate(want_cols, axis=1)
    outs = []
    for level in ("auto", "avx2", "baseline"):
        out = np.full((B, col), np.nan, dtype)
        _testing.set_isa_limit(level)
        try:
            _core.pool_bags(feats, out, 2)
        finally:
            _testing.set_isa_limit("auto")
        outs.append(out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(outs[0], want, rtol=tol, atol=tol)
    assert all(o.tobytes() == outs[0].tobytes() for o in outs[1:])  # bits: -0.0 is not +0.0


@pytest.mark.parametrize("B", [1200, 40])
def test_pool_bags_matches_numpy_and_any_thread_count(B):
    """Two features of two tables (sum with weights, mean with a skipped row) over 3 chunks of
    bags, or over one chunk (B = 40: fewer chunks than threads, so the features are split among
    tasks too): a NumPy reference to float tolerance, and the same bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(1)
    tabs = [rng.standard_normal((50, 3)).astype(np.float32),
            rng.standard_normal((7, 5)).astype(np.float32)]
    lens = [rng.integers(0, 4, B) for _ in tabs]
    offs = [np.concatenate([[0], np.cumsum(n)]).astype(np.int64) for n in lens]
    rows = [rng.integers(0, len(t), int(o[-1])).astype(np.int64) for t, o in zip(tabs, offs)]
    psw = rng.random(len(rows[0])).astype(np.float32)
    feats = [(tabs[0], rows[0], offs[0], psw, False, -1, 0), (tabs[1], rows[1], offs[1], None, True, 6, 3)]
    want = np.zeros((B, 8))
    for b in range(B):
        s0, e0 = offs[0][b], offs[0][b + 1]
        want[b, :3] = (tabs[0][rows[0][s0:e0]] * psw[s0:e0, None]).sum(0)
        r = rows[1][offs[1][b]:offs[1][b + 1]]
        r = r[r != 6]
        if len(r):
            want[b, 3:] = tabs[1][r].mean(0)
    outs = []
    for threads in (1, 2, 3):
        out = np.full((B, 8), np.nan, np.float32)
        _core.pool_bags(feats, out, threads)
        outs.append(out)
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("misalign", [0, 1])
def test_pool_bags_large_output_streamed_or_not(dtype, misalign):
    """An output over 4 MiB is copied out of the staging buffer with non-temporal stores where
    a row's slice is 16-byte aligned (ops.hpp, copy_row): the same values as a NumPy reference
    and the same bits for 1 and 2 threads. The slices are 16, 32, 64, 128 and 256 bytes wide
    (each fixed-size copy), 80 bytes (the loop of 16-byte pieces) and 24, 12 or 8 bytes (plain
    copies); the row stride is not a multiple of 16 bytes, so from row to row each slice is
    aligned or not, with the output aligned or shifted by one element."""
    rng = np.random.default_rng(11)
    B = 9000
    # float32: 16, 32, 64, 128, 256, 12, 80, 24, 8 bytes; 155 columns (620-byte rows)
    # float64: 16, 32, 64, 128, 256, 24, 80, 8, 8 bytes; 77 columns (616-byte rows)
    dims = ((4, 8, 16, 32, 64, 3, 20, 6, 2) if dtype == np.float32
            else (2, 4, 8, 16, 32, 3, 10, 1, 1))
    feats, refs, col = [], [], 0
    for k, d in enumerate(dims):
        w = rng.standard_normal((300 + k, d)).astype(dtype)
        lens = rng.integers(0, 3, B)
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        rows = rng.integers(0, len(w), int(off[-1])).astype(np.int64)
        feats.append((w, rows, off, None, False, -1, col))
        ref = np.zeros((B, d))
        np.add.at(ref, np.repeat(np.arange(B), lens), w[rows].astype(np.float64))
        refs.append(ref)
        col += d
    want = np.concatenate(refs, axis=1)
    assert want.size * np.dtype(dtype).itemsize > 4 << 20  # past kPoolStreamBytes
    outs = []
    for threads in (1, 2):
        buf = np.full(B * col + misalign, np.nan, dtype)
        out = buf[misalign:].reshape(B, col)
        _core.pool_bags(feats, out, threads)
        outs.append(out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(outs[0], want, rtol=tol, atol=tol)
    assert outs[1].tobytes() == outs[0].tobytes()


def _polar_reference(ids: np.ndarray, dim: int, seed: int, draws: int) -> tuple:
    """init_one's normal vectors from its definition (ops.hpp), in NumPy: candidate pair t of an
    ID is u, v = (mix64(2t, key) >> 11) * 2**-52 - 1 and (mix64(2t + 1, key) ...), key =
    mix64(id, seed); the first (dim + 1) // 2 pairs with 0 < u² + v² < 1 give entries 2k, 2k + 1
    = (u, v) * sqrt(-2 ln s / s). ``draws`` candidate pairs per ID are drawn (asserted enough).
    Returns the vectors and, per ID, the candidate pairs drawn up to its last kept one."""
    pairs = (dim + 1) // 2
    key = mix64_array(ids, seed)
    t = np.arange(draws, dtype=np.uint64)
    # mix64(x, key) for x = 2t and 2t + 1, vectorised over IDs and t
    def mix(x):
        with np.errstate(over="ignore"):
            z = x[None, :] + np.uint64(0x9E3779B97F4A7C15) * (key[:, None] + np.uint64(1))
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
    u = (mix(2 * t) >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0
    v = (mix(2 * t + np.uint64(1)) >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0
    s = u * u + v * v
    ok = (s > 0) & (s < 1)
    assert (ok.sum(1) >= pairs).all(), "draw more candidate pairs"
    rank = np.cumsum(ok, 1) - 1
    needed = np.argmax(rank == pairs - 1, 1) + 1  # candidate pairs drawn up to the last kept
    out = np.empty((len(ids), 2 * pairs))
    for k in range(pairs):
        j = np.argmax(ok & (rank == k), 1)  # the k-th accepted pair of each ID
        rows = np.arange(len(ids))
        f = np.sqrt(-2.0 * np.log(s[rows, j]) / s[rows, j])
        out[:, 2 * k], out[:, 2 * k + 1] = u[rows, j] * f, v[rows, j] * f
    return out[:, :dim], needed


@pytest.mark.parametrize("dim", [1, 3, 7, 64, 65])
def test_init_normal_matches_its_definition_at_every_isa_level(dim):
    """The normal initial vectors against a NumPy reference written from the definition (to
    float64 rounding: np.log is not embtab's log), and the same bits at every ISA level.
    Candidate pairs are drawn in blocks (a first block of about 4/3 of the pairs needed, then
    blocks of 16): the IDs include, for every dim tested, some whose first block falls short
    (found by search for dims 1 and 3, where that is rare), so the later blocks run too (under
    AddressSanitizer in CI)."""
    ids = np.concatenate([np.arange(-20, 20000, dtype=np.int64),
                          np.random.default_rng(7).integers(-(2**63), 2**63 - 1, 20000),
                          [1402655, 1706402, 1929283, 153604, 276172, 315632]])
    outs = []
    for level in ("auto", "avx2", "baseline"):
        _testing.set_isa_limit(level)
        try:
            out = np.empty((len(ids), dim), np.float64)
            _core.init_vectors(ids, out, 11, "normal", 0.0, 1.0, 2)
            outs.append(out)
        finally:
            _testing.set_isa_limit("auto")
    assert all(o.tobytes() == outs[0].tobytes() for o in outs[1:])
    want, needed = _polar_reference(ids, dim, 11, draws=(dim + 1) // 2 * 2 + 24)
    pairs = (dim + 1) // 2
    assert (needed > pairs + pairs // 3 + 8).any()  # some ID draws a second block
    np.testing.assert_allclose(outs[0], want, rtol=1e-13, atol=1e-13)


def test_bag_csr_checks_offsets_against_a_reference():
    """_core.bag_csr (a bag module's offsets checked and made CSR in one native pass) against
    a NumPy reading of the rules, on random offsets, some valid and some broken each way."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        nb = int(rng.integers(1, 12))
        o = np.sort(rng.integers(0, 20, nb)).astype(np.int64)
        o[0] = 0 if rng.random() < 0.8 else int(rng.integers(1, 5))
        if rng.random() < 0.3 and nb > 2:
            i = int(rng.integers(1, nb - 1))
            o[i], o[i + 1] = o[i + 1] + 1, o[i]  # a descent at i (or equal values swapped)
        n = int(o.max()) + int(rng.integers(-2, 3))
        n = max(n, 0)
        last = bool(rng.random() < 0.5)
        code, index, csr = _core.bag_csr(o, n, last)
        if o[0] != 0:
            want = (1, 0)
        elif (o[1:] < o[:-1]).any():
            want = (2, int(np.flatnonzero(o[1:] < o[:-1])[0]))
        elif o[-1] > n:
            want = (3, nb - 1)
        elif last and o[-1] != n:
            want = (4, nb - 1)
        else:
            want = (0, 0)
        assert (code, index) == want, (o, n, last)
        if code == 0:
            ref = o if last else np.append(o, n)
            assert csr.dtype == np.int64 and np.array_equal(csr, ref)
            assert not np.shares_memory(csr, o)
        else:
            assert csr is None
    with pytest.raises(TypeError, match="int64"):
        _core.bag_csr(np.zeros(3, np.int32), 3, False)
    with pytest.raises(TypeError, match="C-contiguous"):
        _core.bag_csr(np.zeros(6, np.int64)[::2], 3, False)
    code, _, csr = _core.bag_csr(np.zeros(0, np.int64), 0, False)  # no bags
    assert code == 0 and csr.tolist() == [0]
    with pytest.raises(ValueError, match="empty"):
        _core.bag_csr(np.zeros(0, np.int64), 0, True)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_fused_bag_step_on_a_batch_of_no_bags(mode):
    """A fused bag module's forward and backward on no bags (empty IDs and offsets): a (0, d)
    output, the step counted, no row moved (as torch's EmbeddingBag accepts the batch)."""
    import embtab.nn
    import embtab.optim

    m = embtab.nn.CuckooEmbeddingBag(8, 3, mode=mode, optimizer=embtab.optim.SGD(lr=0.1))
    m(torch.tensor([5, 6]), torch.tensor([0])).sum().backward()
    before = m.weight.detach().clone()
    out = m(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64))
    assert out.shape == (0, 3)
    out.sum().backward()
    assert int(m.opt_step) == 2
    assert torch.equal(m.weight.detach(), before)


def test_fused_backward_refuses_offsets_changed_after_the_forward():
    """Offsets edited in place between a fused bag forward and its backward: RuntimeError
    naming them, and no row is stepped."""
    import embtab.nn
    import embtab.optim

    m = embtab.nn.CuckooEmbeddingBag(8, 3, mode="sum", optimizer=embtab.optim.SGD(lr=0.1))
    ids = torch.tensor([5, 6, 7, 8])
    off = torch.tensor([0, 2])
    out = m(ids, off)
    before = m.weight.detach().clone()
    off[1] = 9  # past the 4 IDs
    with pytest.raises(RuntimeError, match="offsets of this forward were changed"):
        out.sum().backward()
    assert torch.equal(m.weight.detach(), before)
    out = m(ids, off.fill_(0))
    off[1] = 1   # valid bags, but not the forward's
    with pytest.raises(RuntimeError, match="offsets of this forward were changed"):
        out.sum().backward()
    assert torch.equal(m.weight.detach(), before)


def test_fused_backward_steps_the_bags_its_forward_pooled():
    """The backward reuses the CSR its forward's check made: offsets changed behind torch's
    back (through a NumPy view, which no version counter sees) after the forward do not change
    which rows the step reads; changed by torch, they are refused (test above), whether or not
    they still make valid bags."""
    import embtab.nn
    import embtab.optim

    def model():
        return embtab.nn.CuckooEmbeddingBag(8, 3, mode="mean", seed=3,
                                            optimizer=embtab.optim.Adagrad(lr=0.1))

    ids = torch.tensor([5, 6, 7, 8, 9])
    a, b = model(), model()
    off = torch.tensor([0, 1])
    (a(ids, off) * torch.arange(6.0).reshape(2, 3)).sum().backward()
    off2 = torch.tensor([0, 1])
    out = b(ids, off2)
    off2.numpy()[1] = 4   # other bags, unseen by torch
    (out * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert torch.equal(a.weight.detach(), b.weight.detach())
    assert torch.equal(a.opt_sum.detach(), b.opt_sum.detach())
    # offsets that are a strided view: torch copies them, and accepts a change to their base
    # after the forward; so does the fused backward (it steps the forward's bags)
    c = model()
    base = torch.tensor([0, 9, 1, 9])
    out = c(ids, base[::2])
    base[2] = 4
    (out * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert torch.equal(a.weight.detach(), c.weight.detach())
