// cpp/bindings/rerank.cpp: embtab._core.rerank_calibrated and embtab._core.topk.
//
// These are private entry points: python/embtab/rerank.py validates values (distributions,
// lam, alpha, k) and builds the item CSR; here we check dtypes, shapes and layout again so a
// direct call cannot read out of bounds, take the buffers with the GIL held, allocate the
// outputs, and run the batch with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common.hpp"
#include "embtab/rerank.hpp"

namespace py = pybind11;
using embtab_py::check_threads;
using embtab_py::dtype_str;
using embtab_py::shape_str;

namespace {

// has_dtype says whether a's dtype is T's (numpy's equivalence, not object identity: an
// unpickled array carries an equal but distinct dtype object).
template <class T>
bool has_dtype(const py::array& a) {
    return py::isinstance<py::array_t<T>>(a);
}

// require_array checks that obj is a C-contiguous ndarray of dtype T with `ndim` dims.
template <class T>
py::array require_array(const py::handle& obj, const char* name, int ndim) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!has_dtype<T>(a)) {
        throw py::type_error(std::string(name) + " must have dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
                             ", got " + dtype_str(a));
    }
    if (a.ndim() != ndim) {
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    return embtab_py::aligned_input(a);
}

bool is_f32(const py::array& a) { return has_dtype<float>(a); }
bool is_f64(const py::array& a) { return has_dtype<double>(a); }

py::array require_scores(const py::handle& obj) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error("scores must be a numpy.ndarray of float32 or float64, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!is_f32(a) && !is_f64(a)) throw py::type_error("scores must have dtype float32 or float64, got " + dtype_str(a));
    if (a.ndim() != 2) throw py::value_error("scores must be 2-D [U, C], got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error("scores must be C-contiguous (use numpy.ascontiguousarray)");
    return embtab_py::aligned_input(a);
}

[[noreturn]] void throw_rerank_error(const embtab::RerankError& e, bool has_candidates) {
    using embtab::RerankStatus;
    const std::string at = "[" + std::to_string(e.row) + ", " + std::to_string(e.col) + "]";
    switch (e.status) {
        case RerankStatus::nan_score:
            throw py::value_error("scores row " + std::to_string(e.row) + " holds NaN (at scores" + at + ")");
        case RerankStatus::posinf_score:
            throw py::value_error("scores row " + std::to_string(e.row) + " holds +inf (at scores" + at +
                                  "); only -inf (never pick) is allowed");
        case RerankStatus::bad_candidate:
            if (!has_candidates) {  // candidate j is item j: scores has more columns than items
                throw py::value_error("scores has a column " + std::to_string(e.col) +
                                      " but item_dist has fewer rows (items): without candidates, "
                                      "column j of scores is item j");
            }
            throw py::value_error("candidates row " + std::to_string(e.row) + " holds item id " +
                                  std::to_string(e.value) + " (at candidates" + at +
                                  "), outside [0, n_items) of item_dist");
        default: throw py::value_error("rerank: unknown error");
    }
}

template <class S>
py::object run_calibrated(const py::array& scores, const py::object& candidates, const embtab::ItemDist& items,
                          const py::array& target, const embtab::RerankParams& prm, int num_threads,
                          bool with_objective) {
    const std::int64_t U = scores.shape(0), C = scores.shape(1);
    const std::int64_t* cand = nullptr;
    if (!candidates.is_none()) cand = static_cast<const std::int64_t*>(py::array(candidates).data());
    py::array_t<std::int64_t> out({U, prm.k});
    py::array_t<double> obj(with_objective ? U : 0), mis(with_objective ? U : 0);
    const S* s = static_cast<const S*>(scores.data());
    const double* p = static_cast<const double*>(target.data());
    std::int64_t* o = out.mutable_data();
    double* po = with_objective ? obj.mutable_data() : nullptr;
    double* pm = with_objective ? mis.mutable_data() : nullptr;
    embtab::RerankError err;
    {
        embtab_py::GilRelease release;
        err = embtab::calibrated_batch<S>(s, cand, U, C, items, p, prm, o, po, pm, num_threads);
    }
    if (err.status != embtab::RerankStatus::ok) throw_rerank_error(err, cand != nullptr);
    if (with_objective) return py::make_tuple(out, obj, mis);
    return out;
}

template <class S>
py::tuple run_topk(const py::array& scores, std::int64_t k, int num_threads) {
    const std::int64_t U = scores.shape(0), N = scores.shape(1);
    py::array_t<S> vals({U, k});
    py::array_t<std::int64_t> ids({U, k});
    const S* s = static_cast<const S*>(scores.data());
    S* v = vals.mutable_data();
    std::int64_t* ix = ids.mutable_data();
    std::int64_t bad;
    {
        embtab_py::GilRelease release;
        bad = embtab::topk<S>(s, U, N, k, v, ix, num_threads);
    }
    if (bad >= 0) throw py::value_error("scores row " + std::to_string(bad) + " holds NaN");
    return py::make_tuple(vals, ids);
}

}  // namespace

void bind_rerank(py::module_& m) {
    m.def(
        "rerank_calibrated",
        [](const py::object& scores_obj, const py::object& candidates, const py::object& indptr_obj,
           const py::object& genre_obj, const py::object& wclass_obj, const py::object& weights_obj,
           const py::object& target_obj, std::int64_t k, double lam, double alpha, std::int64_t num_threads,
           bool with_objective, std::int64_t max_nnz) -> py::object {
            const int nt = check_threads(num_threads);
            py::array scores = require_scores(scores_obj);
            const std::int64_t U = scores.shape(0), C = scores.shape(1);
            py::object cand = py::none();  // the checked (aligned) candidates
            if (!candidates.is_none()) {
                py::array c = require_array<std::int64_t>(candidates, "candidates", 2);
                if (c.shape(0) != U || c.shape(1) != C)
                    throw py::value_error("candidates must have the shape of scores " + shape_str(scores) + ", got " +
                                          shape_str(c));
                cand = c;
            }
            py::array indptr = require_array<std::int64_t>(indptr_obj, "indptr", 1);
            py::array genre = require_array<std::int32_t>(genre_obj, "genre", 1);
            py::array wclass = require_array<std::int32_t>(wclass_obj, "wclass", 1);
            py::array weights = require_array<double>(weights_obj, "weights", 1);
            py::array target = require_array<double>(target_obj, "target", 2);
            if (target.shape(0) != U)
                throw py::value_error("target must be [U, G] with U = " + std::to_string(U) + ", got shape " +
                                      shape_str(target));
            if (indptr.shape(0) < 1) throw py::value_error("indptr must hold n_items + 1 >= 1 entries");
            if (genre.shape(0) != wclass.shape(0))
                throw py::value_error("genre and wclass must have one entry per stored weight");
            if (k <= 0 || k > C)
                throw py::value_error("k must be in [1, C] with C = " + std::to_string(C) + ", got " + std::to_string(k));
            if (!(lam >= 0.0 && lam <= 1.0)) throw py::value_error("lam must be in [0, 1], got " + std::to_string(lam));
            if (!(alpha >= 0.0 && alpha < 1.0))
                throw py::value_error("alpha must be in [0, 1), got " + std::to_string(alpha));
            embtab::ItemDist items;
            items.indptr = static_cast<const std::int64_t*>(indptr.data());
            items.genre = static_cast<const std::int32_t*>(genre.data());
            items.wclass = static_cast<const std::int32_t*>(wclass.data());
            items.weights = static_cast<const double*>(weights.data());
            items.n_items = indptr.shape(0) - 1;
            items.n_genres = static_cast<std::int32_t>(target.shape(1));
            items.n_weights = static_cast<std::int32_t>(weights.shape(0));
            // The CSR must be in bounds before the GIL is released: checked here, O(n_items +
            // nnz), unless the caller passes max_nnz >= 0 for arrays it built and checked (an
            // embtab.rerank.ItemDistribution: read-only, checked once).
            const std::int64_t nnz = genre.shape(0);
            if (max_nnz >= 0) {
                if (nnz > 0 && (items.indptr[0] != 0 || items.indptr[items.n_items] != nnz))
                    throw py::value_error("indptr is not a valid CSR row pointer");
                items.max_nnz = static_cast<std::int32_t>(max_nnz);
            } else {
                max_nnz = 0;
                for (std::int64_t i = 0; i < items.n_items; ++i) {
                    const std::int64_t b = items.indptr[i], e = items.indptr[i + 1];
                    if (b < 0 || e < b || e > nnz) throw py::value_error("indptr is not a valid CSR row pointer");
                    max_nnz = std::max(max_nnz, e - b);
                }
                for (std::int64_t j = 0; j < nnz; ++j) {
                    if (items.genre[j] < 0 || items.genre[j] >= items.n_genres)
                        throw py::value_error("genre holds " + std::to_string(items.genre[j]) + ", outside [0, G)");
                    if (items.wclass[j] < 0 || items.wclass[j] >= items.n_weights)
                        throw py::value_error("wclass holds " + std::to_string(items.wclass[j]) + ", outside [0, D)");
                }
                items.max_nnz = static_cast<std::int32_t>(max_nnz);
            }
            embtab::RerankParams prm;
            prm.k = k;
            prm.lam = lam;
            prm.alpha = alpha;
            if (is_f32(scores))
                return run_calibrated<float>(scores, cand, items, target, prm, nt, with_objective);
            return run_calibrated<double>(scores, cand, items, target, prm, nt, with_objective);
        },
        py::arg("scores"), py::arg("candidates"), py::arg("indptr"), py::arg("genre"), py::arg("wclass"),
        py::arg("weights"), py::arg("target"), py::arg("k"), py::arg("lam"), py::arg("alpha"),
        py::arg("num_threads") = 0, py::arg("with_objective") = false, py::arg("max_nnz") = -1,
        "Private: calibrated greedy rerank over a CSR item distribution (see embtab.rerank.calibrated); "
        "max_nnz >= 0: the CSR arrays are trusted (built and checked by the caller), the longest row given.");

#if defined(EMBTAB_VLOG_VECTOR)
    m.attr("_vector_code") = true;
#else
    m.attr("_vector_code") = false;  // the scalar forms (EMBTAB_NO_VECTOR or no vector extensions)
#endif
    m.def(
        "topk",
        [](const py::object& scores_obj, std::int64_t k, std::int64_t num_threads) -> py::tuple {
            const int nt = check_threads(num_threads);
            py::array scores = require_scores(scores_obj);
            const std::int64_t N = scores.shape(1);
            if (k <= 0 || k > N)
                throw py::value_error("k must be in [1, N] with N = " + std::to_string(N) + ", got " + std::to_string(k));
            if (is_f32(scores)) return run_topk<float>(scores, k, nt);
            return run_topk<double>(scores, k, nt);
        },
        py::arg("scores"), py::arg("k"), py::arg("num_threads") = 0,
        "Private: row-wise top-k (see embtab.rerank.topk).");
}
