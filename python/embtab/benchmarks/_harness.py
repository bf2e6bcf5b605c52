"""What every embtab benchmark shares: the machine description, the timer and the Zipf sampler.

The benchmark modules (``embtab.benchmarks.table``, ``module``, ``rerank``, ``distributed``), the
scripts in ``bench/`` and the pytest-benchmark suites in ``bench/test_*.py`` all take these from
here, so that every figure names its machine the same way and every workload draws its IDs the
same way.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import subprocess
import time
import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np

__all__ = ["ISA_CAPS", "Timing", "interleaved", "isa_cap", "machine", "machine_line", "time_calls",
           "torch_threads", "zipf_ranks", "zipf_stream"]

# the x86 feature flags that decide which of embtab's code paths run (docs: README, "Binary wheels")
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512vl", "avx512bw")


#: the levels :func:`isa_cap` accepts, lowest last ("auto": what the CPU has)
ISA_CAPS = ("auto", "avx2", "baseline")
_isa_cap = "auto"


class isa_cap:
    """Cap the SIMD code embtab dispatches to, for timing a lower ISA level on this CPU.

    A context manager: ``with isa_cap("avx2"): ...`` runs the reranker and the vectorised logs
    as on an AVX2-only CPU (``"baseline"``: SSE2), and :func:`machine` reports the capped level;
    on exit the cap returns to what it was. Only the dispatching kernels are capped: code the
    compiler vectorised for the build's target is not, so a capped run approximates, and does not
    replace, a run on a CPU without AVX-512.
    """

    def __init__(self, level: str = "auto"):
        if level not in ISA_CAPS:
            raise ValueError(f"isa must be one of {ISA_CAPS}; got {level!r}")
        self.level = level

    def __enter__(self) -> "isa_cap":
        global _isa_cap
        from embtab import _core

        self._prev = _isa_cap
        _core._testing.set_isa_limit(self.level)
        _isa_cap = self.level
        return self

    def __exit__(self, *exc) -> None:
        global _isa_cap
        from embtab import _core

        _core._testing.set_isa_limit(self._prev)
        _isa_cap = self._prev


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_level(flags: set, vector_code: bool, cap: str = "auto") -> str:
    """The ISA level embtab's run-time dispatch picks on a CPU with these /proc/cpuinfo flags.

    Parameters
    ----------
    flags : set of str
        CPU feature flags as /proc/cpuinfo spells them.
    vector_code : bool
        ``embtab._core._vector_code``: False for a build with only the scalar forms.
    cap : {"auto", "avx2", "baseline"}
        The :class:`isa_cap` in force; a level below the CPU's is reported as "(capped)".

    Returns
    -------
    str
        ``"AVX-512 (F/DQ/VL)"``, ``"AVX2"``, ``"baseline"`` (SSE2 on x86-64, or a non-x86 CPU),
        either of the last two with " (capped)" when :class:`isa_cap` lowered it, or
        ``"scalar build"``.
    """
    if not vector_code:
        return "scalar build"
    if {"avx512f", "avx512dq", "avx512vl"} <= flags and cap == "auto":
        return "AVX-512 (F/DQ/VL)"
    if "avx2" in flags and cap in ("auto", "avx2"):
        return "AVX2" if cap == "auto" or "avx512f" not in flags else "AVX2 (capped)"
    return "baseline" if cap == "auto" or "avx2" not in flags else "baseline (capped)"


def _commit() -> Optional[str]:
    """The git commit of the embtab source tree this module was imported from, if it is one,
    with ``-dirty`` when tracked files differ from it (the figures are then not that commit's)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    head = out.stdout.strip()
    if not head:
        return None
    return head + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def machine() -> dict:
    """Describe this machine and software for a benchmark's results (JSON-serialisable).

    Returns
    -------
    dict
        ``cpu`` (lscpu's model name), ``cores``, ``hypervisor`` (or None), ``cpu_flags`` (the
        x86 features that decide embtab's code paths), ``isa`` (the level embtab's dispatch
        picks, see :func:`isa_level`), ``python``, ``numpy``, ``torch`` (None without torch),
        ``embtab``, ``thread_pool`` (:func:`embtab.thread_pool`), ``commit`` (None outside a git
        checkout) and ``date`` (UTC).
    """
    import embtab
    from embtab import _core

    info = _lscpu()
    flags = _cpu_flags()
    try:
        import torch

        torch_version: Optional[str] = torch.__version__
        torch_threads: Optional[int] = torch.get_num_threads()
    except ImportError:  # torch is a dependency; keep the description usable without it
        torch_version, torch_threads = None, None
    return {
        "cpu": info.get("Model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "hypervisor": info.get("Hypervisor vendor"),
        "cpu_flags": [f for f in _FLAGS if f in flags],
        "isa": isa_level(flags, bool(_core._vector_code), _isa_cap),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version,
        "torch_threads": torch_threads,
        "embtab": _core.__version__,
        "thread_pool": embtab.thread_pool(),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(m: Optional[dict] = None) -> str:
    """One line naming the machine, ISA level, versions, commit and date (for reports).

    Parameters
    ----------
    m : dict, optional
        A :func:`machine` description (default: this machine now).
    """
    m = machine() if m is None else m
    g = lambda k: m.get(k) or "?"  # noqa: E731  (older results files lack some fields)
    where = f"{g('cpu')}, {g('cores')} cores" + (f", {m['hypervisor']}" if m.get("hypervisor") else "")
    soft = f"Python {g('python')}, NumPy {g('numpy')}" + (f", torch {m['torch']}" if m.get("torch") else "")
    at = f"embtab {g('embtab')}" + (f" at {m['commit']}" if m.get("commit") else "")
    pool = f"; thread pool {m['thread_pool']}" if m.get("thread_pool") else ""
    return f"{where}; ISA level {g('isa')}; {soft}; {at}{pool}; {g('date')}"


class Timing(NamedTuple):
    """Result of :func:`time_calls`: the median and every call's seconds, and the last output."""

    median: float
    times: List[float]
    output: Any


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``torch.set_num_threads(threads)`` (``threads`` > 0; 0 leaves torch's
    setting alone), and restore torch's previous setting after it."""
    import torch

    saved = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def time_calls(fn: Callable[[], Any], repeats: int, *, warmup: int = 0,
               check: Optional[Callable[[Any], None]] = None, keep_output: bool = False,
               collect: bool = True) -> Timing:
    """Time ``repeats`` calls of ``fn`` (wall clock, ``time.perf_counter``).

    Parameters
    ----------
    fn : callable
        The timed call; its workload must be built before (nothing is generated here).
    repeats : int
        Timed calls (>= 1); the median is reported.
    warmup : int
        Untimed calls first (the first calls in a fresh process can run slow while memory
        settles).
    check : callable, optional
        Called with each timed call's output, outside the timed region; raises if the output
        is wrong, so that no benchmark can time a call whose work was skipped.
    keep_output : bool
        Keep the last output in the result; otherwise each output is released before the next
        call (two large tables alive at once would skew the next timing).
    collect : bool
        Run the garbage collector before each timed call.

    Returns
    -------
    Timing
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times: List[float] = []
    out = None
    for _ in range(repeats):
        if not keep_output:
            out = None
        if collect:
            gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if check is not None:
            check(out)
    return Timing(float(np.median(times)), times, out if keep_output else None)


def interleaved(impls: Dict[str, Callable[[int], Any]], n_batches: int, repeats: int, *,
                warmup: bool = False, check: Optional[Callable[[List[Any]], None]] = None,
                collect: bool = True) -> Dict[str, float]:
    """Median seconds per step of each implementation, their timed passes interleaved.

    Each pass calls one implementation on batches ``0 .. n_batches - 1`` and is timed with
    :func:`time_calls`; the order of the implementations rotates from one repeat to the next, so
    that a slow spell on a shared machine falls on all of them alike.

    Parameters
    ----------
    impls : dict of str to callable
        Name -> ``step(batch_index)``.
    n_batches : int
        Steps per pass.
    repeats : int
        Timed passes per implementation (the median is reported).
    warmup : bool
        One untimed pass of each implementation first.
    check : callable, optional
        Called with the list of one pass's step outputs; raises if they are wrong.
    collect : bool
        A full garbage collection before each pass (:func:`time_calls`). It walks every
        Python object, which evicts the steps' working set from the caches, so each pass then
        starts cold; False times the steps back to back, as a training loop runs them.

    Returns
    -------
    dict of str to float
        Name -> median seconds per step.
    """
    names = list(impls)
    if warmup:
        for k in names:
            for b in range(n_batches):
                impls[k](b)
    times: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            step = impls[k]
            t = time_calls(lambda step=step: [step(b) for b in range(n_batches)], 1, check=check,
                           collect=collect)
            times[k].append(t.median / n_batches)
    return {k: float(np.median(v)) for k, v in times.items()}


def zipf_ranks(n: int, size: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` ranks in ``[0, n)`` with P(r) proportional to (r + 1) ** -s (inverse CDF).

    Parameters
    ----------
    n : int
        Number of distinct ranks.
    size : int
        Number of draws.
    s : float
        Zipf exponent (1.1 in every embtab benchmark).
    rng : numpy.random.Generator
        Source of the uniform draws (one ``rng.random(size)`` call).

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(size,)``.
    """
    weights = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(ranks, n - 1).astype(np.int64)


def zipf_stream(keys: np.ndarray, n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``keys`` with P(keys[r]) proportional to (r + 1) ** -s.

    Parameters
    ----------
    keys : numpy.ndarray
        The distinct keys, most popular first.
    n : int
        Number of draws.
    s : float
        Zipf exponent.
    rng : numpy.random.Generator
        Source of the uniform draws.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, the dtype of ``keys``.
    """
    return keys[zipf_ranks(len(keys), n, s, rng)]
