import sys

import embtab

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

from conftest import REPO


def test_version_matches_pyproject():
    if tomllib is None:
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        expected = tomllib.load(f)["project"]["version"]
    assert embtab.__version__ == expected


def test_core_is_private_compiled_module():
    from embtab import _core

    assert _core.__version__ == embtab.__version__
    assert _core.__file__.endswith((".so", ".pyd"))


# --- the core layer's validators (embtab._checks) ------------------------------------------

import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from embtab import _checks  # noqa: E402


@pytest.mark.parametrize("call, exc, match", [
    (lambda: _checks.check_int(True, "k"), TypeError, "k must be an int, got bool"),
    (lambda: _checks.check_int(2.0, "k"), TypeError, "k must be an int, got float"),
    (lambda: _checks.check_int(0, "k", min=1), ValueError, "k must be >= 1, got 0"),
    (lambda: _checks.check_int(9, "k", max=8), ValueError, "k must be <= 8, got 9"),
    (lambda: _checks.check_threads(-1), ValueError, r"num_threads must be >= 0 \(0 = all hardware threads\)"),
    (lambda: _checks.check_threads(2**31), ValueError, r"num_threads must be < 2\*\*31, got 2147483648"),
    (lambda: _checks.check_threads(None), TypeError, "num_threads must be an int, got NoneType"),
    (lambda: _checks.check_threads(1.0, "workers"), TypeError, "workers must be an int"),
    (lambda: _checks.check_real("1", "lr"), TypeError, "lr must be a real number, got str"),
    (lambda: _checks.check_real(np.bool_(True), "lr"), TypeError, "lr must be a real number"),
    (lambda: _checks.check_real(float("inf"), "lr"), ValueError, "lr must be a finite number, got inf"),
    (lambda: _checks.check_real(float("nan"), "lr"), ValueError, "lr must be a finite number, got nan"),
    (lambda: _checks.check_real(10**400, "lr"), ValueError, "lr must be a finite number"),
    (lambda: _checks.check_real(float("nan"), "lam", min=0, max=1), ValueError, r"lam must be in \[0, 1\], got nan"),
    (lambda: _checks.check_real(1.0, "a", min=0, max=1, max_open=True), ValueError, r"a must be in \[0, 1\), got 1.0"),
    (lambda: _checks.check_real(1.0, "g", min=1, min_open=True), ValueError, "g must be > 1, got 1.0"),
    (lambda: _checks.check_real(17.0, "g", max=16), ValueError, "g must be <= 16, got 17.0"),
    (lambda: _checks.check_seed(2**64), ValueError, "seed must be <= 18446744073709551615"),
    (lambda: _checks.check_seed(-1), ValueError, "seed must be >= 0"),
    (lambda: _checks.raw_id(2**64, "padding_id"), ValueError, "padding_id must fit in 64 bits"),
    (lambda: _checks.raw_id(-(2**63) - 1, "padding_id"), ValueError, "padding_id must fit in 64 bits"),
    (lambda: _checks.check_id_array([1], "ids"), TypeError, "ids must be a numpy.ndarray of int64 or uint64, got list"),
    (lambda: _checks.check_id_array(np.arange(3, dtype=np.int32)), TypeError, "got int32"),
    (lambda: _checks.check_id_array(np.arange(3, dtype=">i8")), TypeError, "int64 or uint64, got >i8"),
    (lambda: _checks.check_id_array(np.zeros((2, 2), dtype=np.int64)), ValueError, r"ids must be 1-D, got shape \(2, 2\)"),
    (lambda: _checks.check_ndarray([1.0], "x"), TypeError, "x must be a numpy.ndarray, got list"),
    (lambda: _checks.check_ndarray(np.zeros(2, dtype=bool), "x", kinds="iu"), TypeError, "x must have dtype"),
    (lambda: _checks.check_ndarray(np.zeros(2), "x", dtypes=(np.float32,)), TypeError, "x must have dtype float32, got float64"),
    (lambda: _checks.check_ndarray(np.zeros(2), "x", ndim=2), ValueError, r"x must be 2-D, got shape \(2,\)"),
    (lambda: _checks.check_bytes("s"), TypeError, "data must be bytes, got str"),
])
def test_checks_refuse_with_a_message_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_checks_return_plain_values():
    assert type(_checks.check_int(np.int32(3), "k")) is int
    assert _checks.check_threads(None, default=4) == 4
    assert _checks.check_threads(2**31 - 1) == 2**31 - 1
    assert type(_checks.check_real(np.float32(0.5), "x")) is float
    assert _checks.check_real(float("inf"), "x", finite=False) == float("inf")
    assert _checks.raw_id(2**64 - 1, "i") == -1 and _checks.raw_id(-1, "i") == -1
    assert _checks.check_seed(2**64 - 1) == 2**64 - 1
    a = np.arange(10, dtype=np.uint64)[::2]
    assert _checks.check_id_array(a).flags.c_contiguous
    assert _checks.check_bytes(memoryview(b"ab")) == b"ab"
    assert _checks.shape_str(np.zeros((2,))) == "(2,)"
    assert not _checks.is_sparse(np.zeros((2, 2)))


def test_atomic_write_replaces_the_file_and_reports_the_path(tmp_path):
    from embtab import _core

    path = str(tmp_path / "f.bin")
    _core.atomic_write(path, b"old")
    _core.atomic_write(path, b"new" * 1000)
    assert (tmp_path / "f.bin").read_bytes() == b"new" * 1000
    with pytest.raises(FileNotFoundError) as e:
        _core.atomic_write(str(tmp_path / "absent" / "f.bin"), b"x")
    assert e.value.filename == str(tmp_path / "absent" / "f.bin")
    # Writing over a directory fails at the rename: the directory and the old file stay, no
    # temporary is left.
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        _core.atomic_write(str(tmp_path / "d"), b"x")
    assert e.value.filename == str(tmp_path / "d")
    with pytest.raises(ValueError, match="NUL byte"):
        _core.atomic_write(path + "\0x", b"x")
    with pytest.raises(TypeError):
        _core.atomic_write(path, "not bytes")
    assert sorted(os.listdir(tmp_path)) == ["d", "f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == b"new" * 1000


def test_core_entry_points_refuse_thread_counts_beyond_int_with_a_value_error():
    # pybind's int conversion answered 2**31 with "incompatible function arguments".
    from embtab import _core

    ids = np.arange(3, dtype=np.int64)
    calls = [
        lambda n: _core.hashed_rows(ids, 5, 0, n),
        lambda n: _core.topk(np.zeros((1, 3)), 1, n),
        lambda n: _core._CuckooTable(0, 2.0, 0.9, 0, 0).lookup(ids, n),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"num_threads must be < 2\*\*31, got 2147483648"):
            call(2**31)
        with pytest.raises(ValueError, match="num_threads must be >= 0"):
            call(-1)


def test_test_hooks_live_in_the_testing_submodule_only():
    from embtab import _core

    private = {n for n in dir(_core) if n.startswith("_") and not n.startswith("__")}
    assert private == {"_CuckooTable", "_sanitized", "_testing", "_vector_code"}
    assert not [n for n in dir(_core._CuckooTable) if n.startswith("_") and not n.startswith(("__", "_pybind11"))]
    assert {"set_isa_limit", "vlog", "ratio_log_block", "class_tops", "rerank_work_floor",
            "table_check_invariants", "table_candidate_buckets", "parallel_team_sizes"} <= set(dir(_core._testing))


def _signature_params(doc: str) -> list:
    """Parameter names from the first line of a pybind11 docstring ('f(a: int, b: x = 1) -> y')."""
    import re

    head = doc.split("\n")[0]
    inside = head[head.index("(") + 1:head.rindex(") ->")]
    names, depth, cur = [], 0, ""
    for ch in inside + ",":
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            if cur.strip():  # "f()": no parameter
                names.append(re.match(r"\s*(\w+)", cur).group(1))
            cur = ""
        else:
            cur += ch
    return [n for n in names if n not in ("self", "arg0")]


def test_core_stubs_match_the_compiled_module():
    # python/embtab/_core.pyi names every entry point of _core with its parameters, and ships
    # beside py.typed in the package directory (the wheel packs python/embtab whole).
    import ast
    import pathlib

    from embtab import _core

    pkg = pathlib.Path(embtab.__file__).parent
    assert (pkg / "py.typed").is_file()
    tree = ast.parse((pkg / "_core.pyi").read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    runtime = {n for n in dir(_core) if not n.startswith("__") and callable(getattr(_core, n))
               and not isinstance(getattr(_core, n), type)}
    assert set(funcs) == runtime
    for name, node in funcs.items():
        stub = [a.arg for a in node.args.posonlyargs + node.args.args]
        assert stub == _signature_params(getattr(_core, name).__doc__), name
    assert set(classes) == {"_CuckooTable"}
    methods = {n.name: n for n in classes["_CuckooTable"].body if isinstance(n, ast.FunctionDef)}
    public = {n for n in vars(_core._CuckooTable) if not n.startswith("_")} | {"__init__"}
    assert set(methods) == public
    for name, node in methods.items():
        member = getattr(_core._CuckooTable, name)
        if isinstance(member, property):
            continue
        stub = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg != "self"]
        assert stub == [p for p in _signature_params(member.__doc__) if p != "self"], name
