// cpp/bindings/ops.cpp: Python bindings of embtab/ops.hpp (private helpers of embtab.nn).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

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
    return py::reinterpret_borrow<py::array_t<std::int64_t>>(obj);
}

template <class T>
void init_into(const embtab_py::IdView& ids, py::array& out, std::uint64_t seed, embtab::InitKind kind, double a,
               double b, int threads) {
    T* dst = static_cast<T*>(out.mutable_data());
    const std::size_t dim = static_cast<std::size_t>(out.shape(1));
    py::gil_scoped_release release;
    embtab::init_vectors<T>(ids.data, ids.size, seed, kind, a, b, dst, dim, threads);
}

}  // namespace

void bind_ops(py::module_& m) {
    m.def(
        "hashed_rows",
        [](const py::handle& ids_obj, std::uint64_t m_rows, std::uint64_t seed, std::int64_t num_threads) {
            auto ids = as_ids(ids_obj, "ids");
            if (m_rows == 0) throw py::value_error("num_embeddings (m) must be > 0, got 0");
            const int threads = check_threads(num_threads);
            py::array_t<std::int64_t> rows(static_cast<py::ssize_t>(ids.size));
            std::int64_t* out = rows.mutable_data();
            {
                py::gil_scoped_release release;
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
                py::gil_scoped_release release;
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
            py::gil_scoped_release release;
            embtab::cms_add(ids.data, ids.size, s, depth, width, seed, delta);
        },
        py::arg("ids"), py::arg("sketch"), py::arg("seed"), py::arg("delta") = 1,
        "add delta to the count of every ids[i] (serial, in place)");
}
