"""What runs embtab's parallel loops: torch's OpenMP team or embtab's own pool
(``embtab.set_thread_pool``). Oracles: the chunks' own view of their OpenMP team
(``omp_get_num_threads`` inside the loop), and the same results, bit for bit, on either pool."""

import ctypes
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import embtab
import embtab.optim as eo
from embtab import _core
from embtab.nn import CuckooEmbeddingBag


def _has_libgomp() -> bool:
    try:
        ctypes.CDLL(None).GOMP_parallel  # noqa: B018 (a lookup, as the core does)
    except AttributeError:
        return False
    return True


needs_gomp = pytest.mark.skipif(
    not _has_libgomp(), reason="GNU OpenMP (libgomp) is not loaded: this torch build uses another runtime"
)


@pytest.fixture
def restore():
    pool, threads = embtab.thread_pool(), torch.get_num_threads()
    yield
    embtab.set_thread_pool(pool)
    torch.set_num_threads(threads)


def test_set_thread_pool_returns_the_previous_setting_and_checks_its_argument(restore):
    assert embtab.thread_pool() == "openmp"  # the default
    assert embtab.set_thread_pool("embtab") == "openmp"
    assert embtab.thread_pool() == "embtab"
    assert embtab.set_thread_pool("openmp") == "embtab"
    with pytest.raises(ValueError, match="pool must be 'openmp' or 'embtab', got 'omp'"):
        embtab.set_thread_pool("omp")
    with pytest.raises(TypeError, match="pool must be a str"):
        embtab.set_thread_pool(1)
    assert embtab.thread_pool() == "openmp"


@needs_gomp
def test_loops_run_on_the_openmp_team_when_torch_allows_the_threads(restore):
    torch.set_num_threads(2)
    torch.ones(1 << 20).sum()  # torch's own team has run
    assert _core.openmp_team_active(2)
    assert set(_core._testing.parallel_team_sizes(64, 2)) == {2}
    # torch at 1 thread (a DataLoader worker's setting): embtab's own pool
    torch.set_num_threads(1)
    assert not _core.openmp_team_active(2)
    assert set(_core._testing.parallel_team_sizes(64, 2)) == {1}
    torch.set_num_threads(2)
    embtab.set_thread_pool("embtab")
    assert not _core.openmp_team_active(2)
    assert set(_core._testing.parallel_team_sizes(64, 2)) == {1}
    # one thread asked for: no team either way
    embtab.set_thread_pool("openmp")
    assert set(_core._testing.parallel_team_sizes(64, 1)) == {1}


def _train(pool: str, threads: int):
    """Three fused Adagrad steps of a bag module on batches large enough to be split, with every
    new-ID path (inserts and growth), then an eval lookup; the weights, state and rows."""
    embtab.set_thread_pool(pool)
    rng = np.random.default_rng(5)
    m = CuckooEmbeddingBag(1000, 8, mode="mean", seed=3, num_threads=threads,
                           optimizer=eo.Adagrad(lr=0.1))
    for step in range(3):
        ids = torch.from_numpy(rng.zipf(1.2, 20_000).astype(np.int64) * (step + 1))
        offsets = torch.arange(0, ids.numel(), 4)
        m(ids, offsets).pow(2).sum().backward()
    table = embtab.CuckooTable()
    rows = table.lookup_or_insert(rng.integers(0, 1 << 62, 50_000), num_threads=threads)
    return m.weight.detach().clone(), m.opt_sum.clone(), rows


@needs_gomp
def test_the_same_bits_on_either_pool(restore):
    torch.set_num_threads(2)
    w0, s0, r0 = _train("embtab", 1)
    for pool in ("embtab", "openmp"):
        w, s, r = _train(pool, 2)
        assert torch.equal(w, w0) and torch.equal(s, s0), pool
        np.testing.assert_array_equal(r, r0)


@needs_gomp
def test_an_error_in_a_chunk_is_raised_from_the_team(restore):
    torch.set_num_threads(2)
    assert _core.openmp_team_active(2)
    w = np.zeros((10, 4), np.float32)
    rows = np.zeros(100_000, np.int64)
    rows[77_777] = 10  # out of range
    off = np.arange(0, 100_001, 10, dtype=np.int64)
    out = np.zeros((10_000, 4), np.float32)
    with pytest.raises(IndexError, match=r"rows\[77777\] = 10 is outside \[0, 10\)"):
        _core.pool_bags([(w, rows, off, None, False, -1, 0)], out, 2)


def _child(q):
    q.put((_core.openmp_team_active(2), sorted(set(_core._testing.parallel_team_sizes(64, 2))),
           int(embtab.CuckooTable().lookup_or_insert(np.arange(100_000), num_threads=2).max())))


@needs_gomp
def test_a_forked_child_uses_embtabs_pool_and_does_not_hang(restore):
    torch.set_num_threads(2)
    torch.ones(1 << 20).sum()
    assert set(_core._testing.parallel_team_sizes(64, 2)) == {2}  # the parent's team has run
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(120)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the forked child hung"
    assert p.exitcode == 0
    assert q.get(timeout=10) == (False, [1], 99_999)


@pytest.mark.parametrize("value,ok", [("embtab", True), ("OpenMP", True), ("gomp", False)])
def test_embtab_thread_pool_environment_variable(value, ok):
    env = dict(os.environ, EMBTAB_THREAD_POOL=value)
    r = subprocess.run([sys.executable, "-c", "import embtab; print(embtab.thread_pool())"],
                       env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == value.lower()
    else:
        assert r.returncode != 0
        assert "EMBTAB_THREAD_POOL must be 'openmp' or 'embtab', got 'gomp'" in r.stderr


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=120)


@needs_gomp
def test_the_team_is_looked_up_when_the_torch_modules_are_imported():
    code = ("import torch, embtab; from embtab import _core; torch.set_num_threads(2); "
            "a = set(_core._testing.parallel_team_sizes(64, 2)); import embtab.nn; "
            "print(a, set(_core._testing.parallel_team_sizes(64, 2)))")
    r = _run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["{1}", "{2}"]


@needs_gomp
def test_a_child_forked_under_embtabs_pool_that_switches_to_openmp_does_not_hang():
    # EMBTAB_THREAD_POOL=embtab: the fork guard is installed all the same (when the module loads)
    code = """if True:
        import os, sys, numpy as np, torch, embtab, embtab.nn
        from embtab import _core
        torch.set_num_threads(2)
        torch.ones(1 << 20).sum()
        embtab.set_thread_pool("openmp")
        assert set(_core._testing.parallel_team_sizes(64, 2)) == {2}  # the parent's team ran
        embtab.set_thread_pool("embtab")
        pid = os.fork()
        if pid == 0:
            embtab.set_thread_pool("openmp")
            ok = not _core.openmp_team_active(2)
            rows = embtab.CuckooTable(num_threads=2).lookup_or_insert(np.arange(100_000))
            os._exit(0 if ok and int(rows.max()) == 99_999 else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    r = _run_py(code, EMBTAB_THREAD_POOL="embtab")
    assert r.returncode == 0, (r.returncode, r.stderr)


def test_a_child_forked_while_a_thread_reads_a_table_can_write_it():
    """The table's lock word is copied into a child with the reader count of a parent thread
    that does not exist there; the child's first write re-initialises the lock instead of
    waiting for that reader forever (cpp/include/embtab/rwlock.hpp)."""
    code = """if True:
        import os, sys, threading, numpy as np, embtab
        t = embtab.CuckooTable()
        t.lookup_or_insert(np.arange(1 << 20))
        stop = threading.Event()
        keys = np.arange(1 << 20)

        def read():
            while not stop.is_set():
                t.lookup(keys, num_threads=1)

        th = threading.Thread(target=read)
        th.start()
        bad = 0
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                rows = t.lookup_or_insert(np.array([-1, -2, 5]), num_threads=1)
                t.erase(np.array([-1]))
                os._exit(0 if rows.tolist() == [1 << 20, (1 << 20) + 1, 5] and len(t) == (1 << 20) + 1 else 3)
            _, status = os.waitpid(pid, 0)
            bad += os.waitstatus_to_exitcode(status) != 0
        stop.set()
        th.join()
        sys.exit(bad)
    """
    r = _run_py(code)  # a hung child would end in subprocess's TimeoutExpired
    assert r.returncode == 0, (r.returncode, r.stderr)


def test_a_daemon_thread_inside_a_table_call_at_exit_does_not_abort_the_process():
    """At the interpreter's exit a daemon thread still in a call that released the GIL used to
    abort the process when it asked for the GIL back ("terminate called without an active
    exception"); it now sleeps until the process is gone (cpp/bindings/common.hpp)."""
    code = """if True:
        import threading, time, numpy as np, embtab
        t = embtab.CuckooTable()
        keys = np.arange(1 << 20)
        t.lookup_or_insert(keys)
        calls = []

        def read():
            while True:
                t.lookup(keys, num_threads=1)
                calls.append(1)

        threading.Thread(target=read, daemon=True).start()
        while len(calls) < 3:  # the thread is in its loop of calls
            time.sleep(0.01)
        print("main exiting")
    """
    for _ in range(3):
        r = _run_py(code)
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert "terminate called" not in r.stderr


def test_a_table_call_from_a_del_run_at_exit_returns():
    """Objects freed while Python finalizes run their __del__ on the finalizing thread; a
    table call there must keep the GIL and return, not sleep like a daemon thread would."""
    code = """if True:
        import sys, numpy as np, embtab
        t = embtab.CuckooTable()
        t.lookup_or_insert(np.arange(10))

        class Holder:
            def __del__(self):
                rows = t.lookup(np.arange(3))
                sys.stderr.write(f"del done {len(t)} {rows.tolist()}\\n")

        h = Holder()
    """
    r = _run_py(code)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "del done 10 [0, 1, 2]" in r.stderr
