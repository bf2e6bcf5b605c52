// cpp/bindings/testing.cpp: embtab._core._testing, the hooks that tests and benchmarks use to
// reach inside the core (ISA dispatch cap, kernels on their own, table internals, the
// benchmark's work floor). Not part of the production surface: embtab's Python API never calls
// them. Each checks its arguments as the production bindings do, so a wrong call raises.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <dlfcn.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "embtab/parallel.hpp"
#include "embtab/rerank.hpp"
#include "embtab/rerank/work_floor.hpp"
#include "embtab/table.hpp"

namespace py = pybind11;
using embtab_py::as_ids;
using embtab_py::check_threads;

void bind_testing(py::module_& m) {
    py::module_ t = m.def_submodule(
        "_testing", "Test and benchmark hooks of embtab's core (not for library use; may change without notice).");

    // reranker and vlog ////////////////////////////////////////////////////////////////////

    t.def(
        "rerank_work_floor",
        [](std::int64_t U, std::int64_t C, std::int64_t k, int width, int n_entries, bool logs_only,
           std::int64_t num_threads) {
            const int nt = check_threads(num_threads);
            if (U < 0 || C < 1 || k < 1 || width < 1 || width > 4 || n_entries < 1 || n_entries > 65535)
                throw py::value_error("rerank_work_floor: need U >= 0, C >= 1, k >= 1, 1 <= width <= 4, "
                                      "1 <= n_entries <= 65535");
            embtab_py::GilRelease release;
            return embtab::work_floor(U, C, k, width, n_entries, logs_only, nt);
        },
        py::arg("U"), py::arg("C"), py::arg("k"), py::arg("width"), py::arg("n_entries"), py::arg("logs_only"),
        py::arg("num_threads") = 1,
        "Benchmark reference: the logs and table gathers of the greedy without anything else.");

    t.def(
        "set_isa_limit",
        [](const std::string& level) {
            int v;
            if (level == "auto") v = 0;
            else if (level == "baseline") v = 1;
            else if (level == "avx2") v = 2;
            else throw py::value_error("set_isa_limit: level must be 'auto', 'baseline' or 'avx2', got '" + level + "'");
            embtab::detail::isa_limit().store(v);
        },
        py::arg("level"),
        "cap the SIMD code the reranker and vlog dispatch to ('auto': the best the CPU has).");
    t.def(
        "ratio_log_block",
        [](py::array_t<double, py::array::c_style | py::array::forcecast> cw,
           py::array_t<double, py::array::c_style | py::array::forcecast> W,
           py::array_t<double, py::array::c_style | py::array::forcecast> p,
           py::array_t<double, py::array::c_style | py::array::forcecast> ap, double oma, double t1,
           py::array_t<double, py::array::c_style | py::array::forcecast> lp) {
            const std::size_t D = static_cast<std::size_t>(cw.size()), G4 = static_cast<std::size_t>(W.size());
            if (G4 % 4 != 0 || p.size() != W.size() || ap.size() != W.size() || lp.size() != W.size())
                throw py::value_error("ratio_log_block: W, p, ap, lp need one equal length, a multiple of 4");
            py::array_t<double> T({D, G4});
            bool ok;
            {
                embtab_py::GilRelease release;
                ok = embtab::ratio_log_block(cw.data(), D, W.data(), p.data(), ap.data(), oma, t1, lp.data(), G4,
                                             T.mutable_data());
            }
            return py::make_tuple(T, ok);
        },
        py::arg("cw"), py::arg("W"), py::arg("p"), py::arg("ap"), py::arg("oma"), py::arg("t1"), py::arg("lp"),
        "the reranker's table block T[d, g] = lp[g] * vlog(1 + cw[d] / o_g) and whether "
        "every ratio was below 1e300.");
    t.def(
        "class_tops",
        [](py::array_t<double, py::array::c_style | py::array::forcecast> T1,
           py::array_t<bool, py::array::c_style | py::array::forcecast> in_use,
           py::array_t<std::int32_t, py::array::c_style | py::array::forcecast> class_top) {
            if (T1.ndim() != 2 || in_use.ndim() != 2 || T1.shape(0) != in_use.shape(0) ||
                T1.shape(1) != in_use.shape(1) || T1.shape(1) % 4 != 0 || class_top.ndim() != 1 ||
                class_top.shape(0) != T1.shape(0))
                throw py::value_error("class_tops: T1 and in_use [D, G4] (G4 a multiple of 4), class_top [D]");
            const std::size_t D = static_cast<std::size_t>(T1.shape(0)), G4 = static_cast<std::size_t>(T1.shape(1));
            std::vector<std::uint64_t> mask(D * G4);
            for (std::size_t i = 0; i < D * G4; ++i) mask[i] = in_use.data()[i] ? ~std::uint64_t{0} : 0;
            for (std::size_t d = 0; d < D; ++d)
                if (class_top.data()[d] < 0 || class_top.data()[d] > 4)
                    throw py::value_error("class_tops: class_top entries must be in [0, 4]");
            py::array_t<double> top({D, std::size_t{4}});
            embtab::detail::class_tops_block(T1.data(), mask.data(), class_top.data(), D, G4, top.mutable_data());
            return top;
        },
        py::arg("T1"), py::arg("in_use"), py::arg("class_top"),
        "the pattern bound's per-class sums of the largest entries.");
    t.def(
        "vlog",
        [](py::array_t<double, py::array::c_style | py::array::forcecast> x, bool baseline) {
            py::array_t<double> y(x.size());
            const double* xp = x.data();
            double* yp = y.mutable_data();
            const std::size_t n = static_cast<std::size_t>(x.size());
            embtab_py::GilRelease release;
#if defined(EMBTAB_VLOG_VECTOR)
            if (baseline) {
                embtab::detail::vlog_batch_base(xp, yp, n);
                return y;
            }
#endif
            embtab::vlog_batch(xp, yp, n);
            return y;
        },
        py::arg("x"), py::arg("baseline") = false,
        "embtab's vectorised log (finite normal x > 0), for tests against the C library's; "
        "baseline=True forces the code compiled for the baseline ISA (no AVX2 dispatch).");


    // parallel loop /////////////////////////////////////////////////////////////////////////

    t.def(
        "parallel_team_sizes",
        [](std::int64_t n, std::int64_t num_threads) {
            const int threads = check_threads(num_threads);
            if (n < 0) throw py::value_error("parallel_team_sizes: n must be >= 0");
            // omp_get_num_threads seen by each of n one-item chunks: the team's size inside an
            // OpenMP region, 1 outside (and 0 when libgomp is not loaded).
            auto* sz = reinterpret_cast<int (*)()>(::dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
            std::vector<int> seen(static_cast<std::size_t>(n));
            {
                embtab_py::GilRelease release;
                embtab::parallel_for(static_cast<std::size_t>(n), threads, 1, [&](std::size_t b, std::size_t e) {
                    for (std::size_t i = b; i < e; ++i) seen[i] = sz == nullptr ? 0 : sz();
                });
            }
            return seen;
        },
        py::arg("n"), py::arg("num_threads"),
        "omp_get_num_threads() as seen by each chunk of an n-chunk parallel_for (0 without libgomp).");

    // table ////////////////////////////////////////////////////////////////////////////////

    t.def(
        "table_candidate_buckets",
        [](const embtab::CuckooTable& table, const py::object& ids) {
            auto v = as_ids(ids, "ids");
            py::array_t<std::uint64_t> b1(static_cast<py::ssize_t>(v.size)), b2(static_cast<py::ssize_t>(v.size));
            auto* p1 = b1.mutable_data();
            auto* p2 = b2.mutable_data();
            for (std::size_t i = 0; i < v.size; ++i) {
                const auto bp = embtab::TableTestAccess::candidate_buckets(table, v.data[i]);
                p1[i] = bp.first;
                p2[i] = bp.second;
            }
            return py::make_tuple(b1, b2);
        },
        py::arg("table"), py::arg("ids"), "The two candidate buckets of each ID at the table's current size.");
    t.def(
        "table_check_invariants",
        [](const embtab::CuckooTable& table) { return embtab::TableTestAccess::check_invariants(table); },
        py::arg("table"), "\"\" if every invariant of the table holds, else the first violation found.");
}
