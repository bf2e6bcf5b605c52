// cpp/bindings/ops.cpp: Python bindings of embtab/ops.hpp (private helpers of embtab.nn).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "embtab/ops.hpp"

namespace py = pybind11;
using embtab_py::as_ids;
using embtab_py::check_threads;
using embtab_py::shape_str;

namespace {

// as_sketch checks that `obj` is a writeable C-contiguous 2-D int64 array and returns it.
py::array_t<std::int64_t> as_sketch(const py::handle& obj) {
    if (!py::isinstance<py::array_t<std::int64_t>>(obj)) {
        throw py::type_error("sketch must be a numpy.ndarray of int64");
    }
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() != 'i' || a.dtype().itemsize() != 8) throw py::type_error("sketch must have dtype int64");
    if (a.ndim() != 2 || a.shape(1) == 0) {
        throw py::value_error("sketch must be 2-D [depth, width] with width > 0, got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) throw py::value_error("sketch must be C-contiguous");
    if (!a.writeable()) throw py::value_error("sketch must be writeable");
    embtab_py::check_aligned(a, "sketch");
    return py::reinterpret_borrow<py::array_t<std::int64_t>>(obj);
}

template <class T>
void init_into(const embtab_py::IdView& ids, py::array& out, std::uint64_t seed, embtab::InitKind kind, double a,
               double b, int threads) {
    T* dst = static_cast<T*>(out.mutable_data());
    const std::size_t dim = static_cast<std::size_t>(out.shape(1));
    embtab_py::GilRelease release;
    embtab::init_vectors<T>(ids.data, ids.size, seed, kind, a, b, dst, dim, threads);
}


// float_size is 4 or 8 for a native-order float32/float64 array, else 0.
int float_size(const py::array& a) {
    if (!embtab_py::native_order(a) || a.dtype().kind() != 'f') return 0;
    const auto s = a.dtype().itemsize();
    return s == 4 || s == 8 ? static_cast<int>(s) : 0;
}

// checked_array returns obj as an ndarray that is C-contiguous with `ndim` dimensions; throws
// TypeError / ValueError naming `name`. An array not aligned to its element size is refused
// when `written`, else returned as an aligned copy (see embtab_py::is_aligned).
py::array checked_array(const py::handle& obj, const std::string& name, int ndim, bool written = false) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.ndim() != ndim) throw py::value_error(name + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
    if (written) {
        embtab_py::check_aligned(a, name);
        return a;
    }
    return embtab_py::aligned_input(a);
}

// pool_run converts the checked feature tuples and runs pool_bags without the GIL; throws
// IndexError naming the first feature and entry whose row is out of range.
template <class T>
void pool_run(const py::list& feats, py::array& out, int threads) {
    const std::size_t nf = feats.size();
    std::vector<embtab::PoolFeature<T>> pf(nf);
    T* base = static_cast<T*>(out.mutable_data());
    const auto ld = static_cast<std::size_t>(out.shape(1));
    for (std::size_t f = 0; f < nf; ++f) {
        auto t = feats[f].cast<py::tuple>();
        auto w = py::reinterpret_borrow<py::array>(t[0]);
        auto rows = py::reinterpret_borrow<py::array>(t[1]);
        auto off = py::reinterpret_borrow<py::array>(t[2]);
        embtab::PoolFeature<T>& p = pf[f];
        p.weight = static_cast<const T*>(w.data());
        p.num_rows = static_cast<std::size_t>(w.shape(0));
        p.d = static_cast<std::size_t>(w.shape(1));
        p.rows = static_cast<const std::int64_t*>(rows.data());
        p.offsets = static_cast<const std::int64_t*>(off.data());
        p.num_bags = static_cast<std::size_t>(off.shape(0)) - 1;
        p.psw = t[3].is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(t[3]).data());
        p.mean = t[4].cast<bool>();
        p.skip_row = t[5].cast<std::int64_t>();
        p.out = base + t[6].cast<std::size_t>();
        p.ld = ld;
    }
    embtab::PoolBad bad;
    {
        embtab_py::GilRelease release;
        bad = embtab::pool_bags<T>(pf.data(), nf, threads);
    }
    if (bad.feature != static_cast<std::size_t>(-1)) {
        const auto& p = pf[bad.feature];
        throw py::index_error("features[" + std::to_string(bad.feature) + "]: rows[" + std::to_string(bad.entry) +
                              "] = " + std::to_string(p.rows[bad.entry]) + " is outside [0, " +
                              std::to_string(p.num_rows) + ")");
    }
}

}  // namespace

void bind_ops(py::module_& m) {
    embtab::detail::install_fork_guard();  // before anything can fork: see parallel.hpp
    m.def(
        "set_thread_pool",
        [](const std::string& kind) {
            embtab::ThreadPoolKind k;
            if (kind == "openmp") k = embtab::ThreadPoolKind::kOpenMP;
            else if (kind == "embtab") k = embtab::ThreadPoolKind::kEmbtab;
            else throw py::value_error("pool must be 'openmp' or 'embtab', got '" + kind + "'");
            const auto prev = embtab::set_thread_pool(k);
            if (k == embtab::ThreadPoolKind::kOpenMP) embtab::detail::find_openmp();
            return std::string(prev == embtab::ThreadPoolKind::kOpenMP ? "openmp" : "embtab");
        },
        py::arg("pool"), "set what runs the core's parallel loops; returns the previous setting");
    m.def(
        "thread_pool",
        []() {
            return std::string(embtab::thread_pool_setting() == embtab::ThreadPoolKind::kOpenMP ? "openmp"
                                                                                             : "embtab");
        },
        "the setting of set_thread_pool");
    m.def(
        "find_openmp", []() { return embtab::detail::find_openmp(); },
        "look libgomp's entry points up in the process (torch loads it); whether found");
    m.def(
        "openmp_team_active",
        [](std::int64_t num_threads) { return embtab::openmp_team_active(check_threads(num_threads)); },
        py::arg("num_threads"),
        "whether a loop on num_threads threads started now on this thread would run on its OpenMP team "
        "(looks libgomp up first)");
    m.def(
        "hashed_rows",
        [](const py::handle& ids_obj, std::uint64_t m_rows, std::uint64_t seed, std::int64_t num_threads) {
            auto ids = as_ids(ids_obj, "ids");
            if (m_rows == 0) throw py::value_error("num_embeddings (m) must be > 0, got 0");
            const int threads = check_threads(num_threads);
            py::array_t<std::int64_t> rows(static_cast<py::ssize_t>(ids.size));
            std::int64_t* out = rows.mutable_data();
            {
                embtab_py::GilRelease release;
                embtab::hashed_rows(ids.data, ids.size, m_rows, seed, out, threads);
            }
            return rows;
        },
        py::arg("ids"), py::arg("m"), py::arg("seed"), py::arg("num_threads") = 1,
        "rows[i] = mix64(ids[i], seed) % m as int64 [n]");

    m.def(
        "init_vectors",
        [](const py::handle& ids_obj, const py::handle& out_obj, std::uint64_t seed, const std::string& kind,
           double a, double b, std::int64_t num_threads) {
            auto ids = as_ids(ids_obj, "ids");
            const int threads = check_threads(num_threads);
            if (!py::isinstance<py::array>(out_obj)) throw py::type_error("out must be a numpy.ndarray");
            py::array out = py::reinterpret_borrow<py::array>(out_obj);
            if (out.ndim() != 2 || static_cast<std::size_t>(out.shape(0)) != ids.size) {
                throw py::value_error("out must have shape (" + std::to_string(ids.size) + ", dim), got " +
                                      shape_str(out));
            }
            if (!(out.flags() & py::array::c_style) || !out.writeable()) {
                throw py::value_error("out must be C-contiguous and writeable");
            }
            embtab_py::check_aligned(out, "out");
            embtab::InitKind k;
            if (kind == "normal") {
                k = embtab::InitKind::kNormal;
            } else if (kind == "uniform") {
                k = embtab::InitKind::kUniform;
            } else {
                throw py::value_error("kind must be 'normal' or 'uniform', got '" + kind + "'");
            }
            const auto dt = out.dtype();
            if (!embtab_py::native_order(out)) {
                throw py::type_error("out must have dtype float32 or float64 in native byte order, got " +
                                     embtab_py::dtype_str(out));
            }
            if (dt.kind() == 'f' && dt.itemsize() == 4) {
                init_into<float>(ids, out, seed, k, a, b, threads);
            } else if (dt.kind() == 'f' && dt.itemsize() == 8) {
                init_into<double>(ids, out, seed, k, a, b, threads);
            } else {
                throw py::type_error("out must have dtype float32 or float64, got " + embtab_py::dtype_str(out));
            }
        },
        py::arg("ids"), py::arg("out"), py::arg("seed"), py::arg("kind") = "normal", py::arg("a") = 0.0,
        py::arg("b") = 1.0, py::arg("num_threads") = 1,
        "fill out[i] with the initial vector of ids[i], a function of (seed, id) only");

    m.def(
        "cms_query",
        [](const py::handle& ids_obj, const py::handle& sketch_obj, std::uint64_t seed, std::int64_t num_threads) {
            auto ids = as_ids(ids_obj, "ids");
            auto sk = as_sketch(sketch_obj);
            const int threads = check_threads(num_threads);
            py::array_t<std::int64_t> est(static_cast<py::ssize_t>(ids.size));
            std::int64_t* out = est.mutable_data();
            const std::int64_t* s = sk.data();
            const auto depth = static_cast<std::size_t>(sk.shape(0));
            const auto width = static_cast<std::size_t>(sk.shape(1));
            {
                embtab_py::GilRelease release;
                embtab::cms_query(ids.data, ids.size, s, depth, width, seed, out, threads);
            }
            return est;
        },
        py::arg("ids"), py::arg("sketch"), py::arg("seed"), py::arg("num_threads") = 1,
        "count-min estimates of ids' counts as int64 [n]");

    m.def(
        "cms_add",
        [](const py::handle& ids_obj, const py::handle& sketch_obj, std::uint64_t seed, std::int64_t delta) {
            auto ids = as_ids(ids_obj, "ids");
            auto sk = as_sketch(sketch_obj);
            if (delta != 1 && delta != -1) throw py::value_error("delta must be +1 or -1");
            std::int64_t* s = sk.mutable_data();
            const auto depth = static_cast<std::size_t>(sk.shape(0));
            const auto width = static_cast<std::size_t>(sk.shape(1));
            embtab_py::GilRelease release;
            embtab::cms_add(ids.data, ids.size, s, depth, width, seed, delta);
        },
        py::arg("ids"), py::arg("sketch"), py::arg("seed"), py::arg("delta") = 1,
        "add delta to the count of every ids[i] (serial, in place)");

    m.def(
        "bag_csr",
        [](const py::handle& off_obj, std::int64_t n, bool include_last_offset) {
            // A bag module's offsets checked and made CSR in one pass (the module's forward calls
            // this on every step, in place of NumPy checks and a concatenation, and its fused
            // backward steps the bags of this copy; bench/README.md, "A step's fixed costs"). Returns (code, index, csr): code 0 and the CSR offsets (num_bags
            // + 1 entries, the last n; [n] for no bags) when they are valid, else what is wrong
            // and csr None:
            // 1 offsets[0] != 0; 2 offsets[index] > offsets[index + 1]; 3 offsets[-1] > n;
            // 4 include_last_offset and offsets[-1] != n. The caller words the error.
            if (!py::isinstance<py::array>(off_obj)) throw py::type_error("offsets must be a numpy.ndarray");
            auto off = py::reinterpret_borrow<py::array>(off_obj);
            if (off.ndim() != 1 || off.dtype().kind() != 'i' || off.dtype().itemsize() != 8 ||
                !embtab_py::native_order(off) || !(off.flags() & py::array::c_style)) {
                throw py::type_error("offsets must be a 1-D C-contiguous int64 array, got " + embtab_py::dtype_str(off));
            }
            off = embtab_py::aligned_input(off);
            if (n < 0) throw py::value_error("n must be >= 0");
            const auto m = static_cast<std::size_t>(off.shape(0));
            const auto* o = static_cast<const std::int64_t*>(off.data());
            auto result = [](int code, std::size_t index, py::object csr) {
                return py::make_tuple(code, index, std::move(csr));
            };
            if (m == 0) {  // no bags: the CSR is [n] (a module's forward allows this only for n = 0)
                if (include_last_offset) {
                    throw py::value_error("offsets must not be empty with include_last_offset=True");
                }
                py::array_t<std::int64_t> csr(1);
                csr.mutable_data()[0] = n;
                return result(0, 0, std::move(csr));
            }
            if (o[0] != 0) return result(1, 0, py::none());
            for (std::size_t i = 0; i + 1 < m; ++i)
                if (o[i + 1] < o[i]) return result(2, i, py::none());
            if (o[m - 1] > n) return result(3, m - 1, py::none());
            if (include_last_offset && o[m - 1] != n) return result(4, m - 1, py::none());
            const std::size_t len = include_last_offset ? m : m + 1;
            py::array_t<std::int64_t> csr(static_cast<py::ssize_t>(len));
            std::int64_t* c = csr.mutable_data();
            std::memcpy(c, o, m * sizeof(std::int64_t));
            if (!include_last_offset) c[m] = n;
            return result(0, 0, std::move(csr));
        },
        py::arg("offsets"), py::arg("n"), py::arg("include_last_offset"),
        "check a bag module's offsets and return (code, index, CSR offsets or None)");

    m.def(
        "pool_bags",
        [](const py::list& feats, const py::handle& out_obj, std::int64_t num_threads) {
            const int threads = check_threads(num_threads);
            py::array out = checked_array(out_obj, "out", 2, true);
            const int fk = float_size(out);
            if (fk == 0) throw py::type_error("out must have dtype float32 or float64, got " + embtab_py::dtype_str(out));
            if (!out.writeable()) throw py::value_error("out must be writeable");
            const auto B = static_cast<std::size_t>(out.shape(0));
            const auto width = static_cast<std::size_t>(out.shape(1));
            py::list checked;  // the features with their checked (aligned) arrays
            for (std::size_t f = 0; f < feats.size(); ++f) {
                const std::string at = "features[" + std::to_string(f) + "]";
                if (!py::isinstance<py::tuple>(feats[f]) || py::len(feats[f]) != 7) {
                    throw py::type_error(at + " must be a tuple (weight, rows, offsets, psw, mean, skip_row, col)");
                }
                auto t = feats[f].cast<py::tuple>();
                py::array w = checked_array(t[0], at + ".weight", 2);
                if (float_size(w) != fk) throw py::type_error(at + ".weight must have out's dtype, got " + embtab_py::dtype_str(w));
                py::array rows = checked_array(t[1], at + ".rows", 1);
                py::array off = checked_array(t[2], at + ".offsets", 1);
                for (const auto& [a, nm] : {std::pair<py::array*, const char*>{&rows, ".rows"}, {&off, ".offsets"}}) {
                    if (!embtab_py::native_order(*a) || a->dtype().kind() != 'i' || a->dtype().itemsize() != 8) {
                        throw py::type_error(at + nm + " must have dtype int64, got " + embtab_py::dtype_str(*a));
                    }
                }
                if (static_cast<std::size_t>(off.shape(0)) != B + 1) {
                    throw py::value_error(at + ".offsets must have out.shape[0] + 1 = " + std::to_string(B + 1) +
                                          " entries, got shape " + shape_str(off));
                }
                const auto* o = static_cast<const std::int64_t*>(off.data());
                const auto n = static_cast<std::int64_t>(rows.shape(0));
                if (o[0] < 0 || o[B] > n) {
                    throw py::value_error(at + ".offsets must lie in [0, " + std::to_string(n) + "], got " +
                                          std::to_string(o[0]) + " .. " + std::to_string(o[B]));
                }
                for (std::size_t b = 0; b < B; ++b) {
                    if (o[b + 1] < o[b]) throw py::value_error(at + ".offsets must be non-decreasing");
                }
                py::object psw_checked = py::none();
                if (!t[3].is_none()) {
                    py::array psw = checked_array(t[3], at + ".psw", 1);
                    if (float_size(psw) != fk || psw.shape(0) != rows.shape(0)) {
                        throw py::value_error(at + ".psw must have out's dtype and rows' shape, got " +
                                              embtab_py::dtype_str(psw) + " " + shape_str(psw));
                    }
                    psw_checked = psw;
                }
                const auto col = t[6].cast<std::int64_t>();
                if (col < 0 || static_cast<std::size_t>(col) + static_cast<std::size_t>(w.shape(1)) > width) {
                    throw py::value_error(at + ".col = " + std::to_string(col) + " puts its " +
                                          std::to_string(w.shape(1)) + " columns outside out's " + std::to_string(width));
                }
                checked.append(py::make_tuple(w, rows, off, psw_checked, t[4], t[5], t[6]));
            }
            if (fk == 4) {
                pool_run<float>(checked, out, threads);
            } else {
                pool_run<double>(checked, out, threads);
            }
        },
        py::arg("features"), py::arg("out"), py::arg("num_threads") = 1,
        "pool each feature's bags (sum or mean of weight rows, skip_row left out) into out[:, col:col + d]; "
        "features: list of (weight [R, d], rows int64 [n], offsets int64 [B + 1], psw [n] or None, mean, "
        "skip_row, col)");
}
