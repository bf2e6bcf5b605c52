// cpp/bindings/optim.cpp: Python binding of embtab/optim.hpp (private helper of embtab.optim).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>
#include <string>

#include "common.hpp"
#include "embtab/optim.hpp"

namespace py = pybind11;
using embtab_py::check_threads;
using embtab_py::dtype_str;
using embtab_py::shape_str;

namespace {

// float_kind returns 4 or 8 for a native-order float32 / float64 array, else 0.
int float_kind(const py::array& a) {
    if (!embtab_py::native_order(a) || a.dtype().kind() != 'f') return 0;
    const auto s = a.dtype().itemsize();
    return s == 4 || s == 8 ? static_cast<int>(s) : 0;
}

// as_float_array checks `obj` is a C-contiguous ndarray of the weight's dtype (itemsize `fk`)
// with `ndim` dimensions, writeable if asked; throws TypeError / ValueError naming `name`.
py::array as_float_array(const py::handle& obj, const char* name, int fk, int ndim, bool writeable) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (float_kind(a) != fk) {
        throw py::type_error(std::string(name) + " must have the weight's dtype " + (fk == 4 ? "float32" : "float64") +
                             ", got " + dtype_str(a));
    }
    if (a.ndim() != ndim) {
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    if (writeable && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    if (!writeable) return embtab_py::aligned_input(a);  // (see embtab_py::is_aligned)
    embtab_py::check_aligned(a, name);
    return a;
}

// as_grad_array checks `obj` is a 2-D ndarray of the weight's dtype (itemsize `fk`) whose rows
// are contiguous (column stride one element) and whose row stride is a non-negative multiple of
// the element size: packed, a column slice of a wider array, or 0 (one row broadcast over all);
// or one value broadcast over everything (strides (0, 0)), returned as one row broadcast.
py::array as_grad_array(const py::handle& obj, int fk) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error("grad must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (float_kind(a) != fk) {
        throw py::type_error(std::string("grad must have the weight's dtype ") + (fk == 4 ? "float32" : "float64") +
                             ", got " + dtype_str(a));
    }
    if (a.ndim() != 2) throw py::value_error("grad must be 2-D, got shape " + shape_str(a));
    const auto rs = a.strides(0), cs = a.strides(1);
    if (a.shape(0) > 0 && a.shape(1) > 1 && rs == 0 && cs == 0) {
        // one value broadcast over rows and columns (what a sum() loss's backward gives): read
        // as one contiguous row for every row (row stride 0)
        py::array row(a.dtype(), std::vector<py::ssize_t>{a.shape(1)});
        auto* dst = static_cast<char*>(row.mutable_data());
        for (py::ssize_t j = 0; j < a.shape(1); ++j) std::memcpy(dst + j * fk, a.data(), static_cast<std::size_t>(fk));
        return py::array(a.dtype(), std::vector<py::ssize_t>{a.shape(0), a.shape(1)},
                         std::vector<py::ssize_t>{0, fk}, row.data(), row);
    }
    // (no rows: nothing is read, whatever the strides; NumPy gives an empty array strides 0)
    if (a.shape(0) > 0 && ((a.shape(1) > 1 && cs != fk) || rs < 0 || rs % fk != 0)) {
        throw py::value_error("grad's rows must be contiguous with a non-negative row stride (got strides (" +
                              std::to_string(rs) + ", " + std::to_string(cs) + ")); use numpy.ascontiguousarray");
    }
    return embtab_py::aligned_input(a);  // a copy (packed) when not aligned
}

// as_i64 checks `obj` is a 1-D C-contiguous native int64 ndarray.
py::array as_i64(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray of int64, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!embtab_py::native_order(a) || a.dtype().kind() != 'i' || a.dtype().itemsize() != 8) {
        throw py::type_error(std::string(name) + " must have dtype int64, got " + dtype_str(a));
    }
    if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D, got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    return embtab_py::aligned_input(a);
}

embtab::OptimKind parse_kind(const std::string& kind) {
    if (kind == "sgd") return embtab::OptimKind::kSGD;
    if (kind == "adagrad") return embtab::OptimKind::kAdagrad;
    if (kind == "rowwise_adagrad") return embtab::OptimKind::kRowWiseAdagrad;
    if (kind == "adam") return embtab::OptimKind::kAdam;
    throw py::value_error("kind must be 'sgd', 'adagrad', 'rowwise_adagrad' or 'adam', got '" + kind + "'");
}

// Span is the bytes [lo, hi) an array's elements lie in (empty for an array with no elements).
struct Span {
    std::uintptr_t lo = 0, hi = 0;
    bool overlaps(const Span& o) const noexcept { return lo < hi && o.lo < o.hi && lo < o.hi && o.lo < hi; }
};

Span span_of(const py::array& a) {
    if (a.size() == 0) return {};
    auto lo = reinterpret_cast<std::uintptr_t>(a.data()), hi = lo;
    for (py::ssize_t k = 0; k < a.ndim(); ++k) {
        const auto step = a.strides(k) * (a.shape(k) - 1);
        if (step < 0) lo -= static_cast<std::uintptr_t>(-step);
        else hi += static_cast<std::uintptr_t>(step);
    }
    return {lo, hi + static_cast<std::uintptr_t>(a.itemsize())};
}

// check_apart throws ValueError when an array the step writes (weight, state1, state2) shares
// memory with another array of the call: the update would read what it has just written (or
// two states would be one), which no order of the updates makes right.
void check_apart(const std::vector<std::pair<const char*, py::object>>& written,
                 const std::vector<std::pair<const char*, py::object>>& read) {
    for (std::size_t i = 0; i < written.size(); ++i) {
        if (written[i].second.is_none()) continue;
        const Span a = span_of(py::reinterpret_borrow<py::array>(written[i].second));
        auto refuse = [&](const char* other) {
            throw py::value_error(std::string(written[i].first) + " shares memory with " + other +
                                  "; the step writes it in place, so each must be an array of its own");
        };
        for (std::size_t j = i + 1; j < written.size(); ++j) {
            if (!written[j].second.is_none() &&
                a.overlaps(span_of(py::reinterpret_borrow<py::array>(written[j].second))))
                refuse(written[j].first);
        }
        for (const auto& [name, obj] : read) {
            if (!obj.is_none() && a.overlaps(span_of(py::reinterpret_borrow<py::array>(obj)))) refuse(name);
        }
    }
}

// check_hyper throws ValueError naming a hyperparameter that is not a finite number (a NaN or
// infinite lr would write NaN into every row the step touches).
void check_hyper(std::initializer_list<std::pair<const char*, double>> values) {
    for (const auto& [name, v] : values) {
        if (!std::isfinite(v)) throw py::value_error(std::string(name) + " must be finite, got " + std::to_string(v));
    }
}

// PreparedStep is one checked fused_step call: the arrays it reads and writes, kept alive, and
// `run`, which applies the step with the GIL released (it touches no Python object).
struct PreparedStep {
    std::vector<py::object> keep;
    const std::int64_t* rows = nullptr;
    std::size_t n = 0, num_rows = 0;
    std::int64_t skip_row = 0;
    std::function<std::size_t(int)> run;
    std::vector<Span> writes, reads;  // the memory the step writes, and what else it reads
};

template <class T>
void bind_run(PreparedStep& ps, py::array& w, const py::array& rows, const py::array& grad, const py::object& offsets,
              const py::object& psw, bool mean, bool by_freq, std::int64_t skip_row, py::object& s1, py::object& s2,
              const embtab::OptimStep& p) {
    embtab::BatchGrad<T> bg;
    bg.grad = static_cast<const T*>(grad.data());
    bg.num_bags = static_cast<std::size_t>(grad.shape(0));
    bg.ld = static_cast<std::size_t>(grad.strides(0)) / sizeof(T);
    bg.offsets = offsets.is_none() ? nullptr : static_cast<const std::int64_t*>(py::array(offsets).data());
    bg.psw = psw.is_none() ? nullptr : static_cast<const T*>(py::array(psw).data());
    bg.mean = mean;
    bg.by_freq = by_freq;
    T* wp = static_cast<T*>(w.mutable_data());
    T* s1p = s1.is_none() ? nullptr : static_cast<T*>(py::array(s1).mutable_data());
    T* s2p = s2.is_none() ? nullptr : static_cast<T*>(py::array(s2).mutable_data());
    const auto* rp = static_cast<const std::int64_t*>(rows.data());
    const auto n = static_cast<std::size_t>(rows.shape(0));
    const auto R = static_cast<std::size_t>(w.shape(0));
    const auto d = static_cast<std::size_t>(w.shape(1));
    ps.rows = rp;
    ps.n = n;
    ps.num_rows = R;
    ps.skip_row = skip_row;
    ps.run = [=](int threads) { return embtab::fused_step<T>(wp, R, d, rp, n, skip_row, bg, s1p, s2p, p, threads); };
    ps.keep = {w, rows, grad, offsets, psw, s1, s2};
    for (const py::object* o : {&s1, &s2})
        if (!o->is_none()) ps.writes.push_back(span_of(py::reinterpret_borrow<py::array>(*o)));
    ps.writes.push_back(span_of(w));
    for (const py::object* o : {&offsets, &psw})
        if (!o->is_none()) ps.reads.push_back(span_of(py::reinterpret_borrow<py::array>(*o)));
    ps.reads.push_back(span_of(rows));
    ps.reads.push_back(span_of(grad));
}

// prepare_step checks one fused_step call's arguments (TypeError / ValueError naming the
// argument) and binds them; nothing is written.
PreparedStep prepare_step(const py::handle& weight_obj, const py::handle& rows_obj, const py::handle& grad_obj,
                          const py::handle& offsets_obj, const py::handle& psw_obj, bool mean, bool scale_grad_by_freq,
                          std::int64_t skip_row, const py::handle& state1_obj, const py::handle& state2_obj,
                          const std::string& kind, double lr, double eps, double momentum, bool nesterov,
                          double weight_decay, double beta1, double beta2) {
    if (!py::isinstance<py::array>(weight_obj)) throw py::type_error("weight must be a numpy.ndarray");
    const int fk = float_kind(py::reinterpret_borrow<py::array>(weight_obj));
    if (fk == 0) {
        throw py::type_error("weight must have dtype float32 or float64, got " +
                             dtype_str(py::reinterpret_borrow<py::array>(weight_obj)));
    }
    py::array w = as_float_array(weight_obj, "weight", fk, 2, true);
    const auto R = w.shape(0), d = w.shape(1);
    if (d == 0) {  // (row-wise Adagrad's mean of squares over no column is 0/0: NaN state)
        throw py::value_error("weight must have at least one column, got shape " + shape_str(w));
    }
    py::array rows = as_i64(rows_obj, "rows");
    const auto n = rows.shape(0);
    py::array grad = as_grad_array(grad_obj, fk);
    if (grad.shape(1) != d) {
        throw py::value_error("grad must have " + std::to_string(d) + " columns (the weight's), got shape " +
                              shape_str(grad));
    }
    py::object offsets = py::none();
    if (!offsets_obj.is_none()) {
        py::array off = as_i64(offsets_obj, "offsets");
        if (off.shape(0) != grad.shape(0) + 1) {
            throw py::value_error("offsets must have grad.shape[0] + 1 = " + std::to_string(grad.shape(0) + 1) +
                                  " entries (CSR), got shape " + shape_str(off));
        }
        const auto* o = static_cast<const std::int64_t*>(off.data());
        if (o[0] != 0 || o[off.shape(0) - 1] != n) {
            throw py::value_error("offsets must start at 0 and end at len(rows) = " + std::to_string(n));
        }
        for (py::ssize_t b = 0; b + 1 < off.shape(0); ++b) {
            if (o[b + 1] < o[b]) throw py::value_error("offsets must be non-decreasing");
        }
        offsets = off;
    } else if (grad.shape(0) != n) {
        throw py::value_error("without offsets grad must have one row per entry of rows (" + std::to_string(n) +
                              "), got shape " + shape_str(grad));
    }
    if (mean && offsets.is_none()) throw py::value_error("mean=True needs offsets");
    py::object psw = py::none();
    if (!psw_obj.is_none()) {
        py::array ps = as_float_array(psw_obj, "per_sample_weights", fk, 1, false);
        if (ps.shape(0) != n) {
            throw py::value_error("per_sample_weights must have shape (" + std::to_string(n) + ",), got " +
                                  shape_str(ps));
        }
        psw = ps;
    }
    embtab::OptimStep p;
    p.kind = parse_kind(kind);
    check_hyper({{"lr", lr}, {"eps", eps}, {"momentum", momentum}, {"weight_decay", weight_decay},
                 {"beta1", beta1}, {"beta2", beta2}});
    p.lr = lr;
    p.eps = eps;
    p.momentum = momentum;
    p.nesterov = nesterov;
    p.weight_decay = weight_decay;
    p.beta1 = beta1;
    p.beta2 = beta2;
    const bool need1 = p.kind != embtab::OptimKind::kSGD || momentum != 0.0;
    const bool need2 = p.kind == embtab::OptimKind::kAdam;
    py::object s1 = py::none(), s2 = py::none();
    if (need1) {
        const bool rowwise = p.kind == embtab::OptimKind::kRowWiseAdagrad;
        py::array a = as_float_array(state1_obj, "state1", fk, rowwise ? 1 : 2, true);
        if (a.shape(0) != R || (!rowwise && a.shape(1) != d)) {
            throw py::value_error(std::string("state1 must have shape ") + "(" + std::to_string(R) +
                                  (rowwise ? ",)" : ", " + std::to_string(d) + ")") + ", got " + shape_str(a));
        }
        s1 = a;
    }
    if (need2) {
        py::array a = as_float_array(state2_obj, "state2", fk, 2, true);
        if (a.shape(0) != R || a.shape(1) != d) {
            throw py::value_error("state2 must have shape (" + std::to_string(R) + ", " + std::to_string(d) +
                                  "), got " + shape_str(a));
        }
        s2 = a;
    }
    check_apart({{"weight", w}, {"state1", s1}, {"state2", s2}},
                {{"rows", rows}, {"grad", grad}, {"offsets", offsets}, {"per_sample_weights", psw}});
    PreparedStep ps;
    if (fk == 4) {
        bind_run<float>(ps, w, rows, grad, offsets, psw, mean, scale_grad_by_freq, skip_row, s1, s2, p);
    } else {
        bind_run<double>(ps, w, rows, grad, offsets, psw, mean, scale_grad_by_freq, skip_row, s1, s2, p);
    }
    return ps;
}

// check_rows throws std::out_of_range naming job `j` and the first entry of its rows outside
// [0, num_rows) that is not skip_row (fused_steps checks every job before running any).
void check_rows(const PreparedStep& ps, std::size_t j) {
    for (std::size_t i = 0; i < ps.n; ++i) {
        const std::int64_t r = ps.rows[i];
        if (r == ps.skip_row) continue;
        if (r < 0 || static_cast<std::uint64_t>(r) >= ps.num_rows) {
            throw std::out_of_range("job " + std::to_string(j) + ": rows[" + std::to_string(i) + "] = " +
                                    std::to_string(r) + " is outside the weight's rows [0, " +
                                    std::to_string(ps.num_rows) + ")");
        }
    }
}

}  // namespace

void bind_optim(py::module_& m) {
    m.def(
        "fused_step",
        [](const py::handle& weight_obj, const py::handle& rows_obj, const py::handle& grad_obj,
           const py::handle& offsets_obj, const py::handle& psw_obj, bool mean, bool scale_grad_by_freq,
           std::int64_t skip_row, const py::handle& state1_obj, const py::handle& state2_obj, const std::string& kind,
           double lr, double eps, double momentum, bool nesterov, double weight_decay, double beta1, double beta2,
           int num_threads) {
            PreparedStep ps = prepare_step(weight_obj, rows_obj, grad_obj, offsets_obj, psw_obj, mean,
                                           scale_grad_by_freq, skip_row, state1_obj, state2_obj, kind, lr, eps,
                                           momentum, nesterov, weight_decay, beta1, beta2);
            const int threads = check_threads(num_threads);
            std::size_t updated;
            {
                embtab_py::GilRelease release;
                updated = ps.run(threads);
            }
            return updated;
        },
        py::arg("weight"), py::arg("rows"), py::arg("grad"), py::arg("offsets"), py::arg("per_sample_weights"),
        py::arg("mean"), py::arg("scale_grad_by_freq"), py::arg("skip_row"), py::arg("state1"), py::arg("state2"),
        py::arg("kind"), py::arg("lr"), py::arg("eps") = 0.0, py::arg("momentum") = 0.0, py::arg("nesterov") = false,
        py::arg("weight_decay") = 0.0, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("num_threads") = 1,
        "one fused optimizer step on the distinct rows of `rows` (in place); returns how many rows it updated");

    m.def(
        "fused_steps",
        [](const py::sequence& jobs, int num_threads) {
            // Every job is checked (arguments, then row ranges) before any runs, so a bad job
            // changes nothing; no two jobs may share a weight or state array (they run at once).
            std::vector<PreparedStep> prepared;
            prepared.reserve(static_cast<std::size_t>(py::len(jobs)));
            for (std::size_t j = 0; j < static_cast<std::size_t>(py::len(jobs)); ++j) {
                py::object job = jobs[j];
                if (!py::isinstance<py::tuple>(job) || py::len(job) != 18) {
                    throw py::type_error("jobs[" + std::to_string(j) +
                                         "] must be a tuple of fused_step's first 18 arguments, got " +
                                         py::str(py::type::of(job).attr("__name__")).cast<std::string>());
                }
                py::tuple t = job;
                prepared.push_back(prepare_step(
                    t[0], t[1], t[2], t[3], t[4], t[5].cast<bool>(), t[6].cast<bool>(), t[7].cast<std::int64_t>(),
                    t[8], t[9], t[10].cast<std::string>(), t[11].cast<double>(), t[12].cast<double>(),
                    t[13].cast<double>(), t[14].cast<bool>(), t[15].cast<double>(), t[16].cast<double>(),
                    t[17].cast<double>()));
            }
            for (std::size_t j = 0; j < prepared.size(); ++j) {
                for (std::size_t k = 0; k < j; ++k) {
                    // the jobs run at once: what one writes, no other may read or write
                    auto clash = [](const PreparedStep& x, const PreparedStep& y) {
                        for (const Span& a : x.writes) {
                            for (const Span& b : y.writes)
                                if (a.overlaps(b)) return true;
                            for (const Span& b : y.reads)
                                if (a.overlaps(b)) return true;
                        }
                        return false;
                    };
                    if (clash(prepared[j], prepared[k]) || clash(prepared[k], prepared[j])) {
                        throw py::value_error("jobs " + std::to_string(k) + " and " + std::to_string(j) +
                                              " share memory that one of them writes (a weight or state array); "
                                              "give each table one job");
                    }
                }
                check_rows(prepared[j], j);
            }
            const int threads = check_threads(num_threads);
            std::size_t updated = 0;
            {
                embtab_py::GilRelease release;
                std::vector<std::size_t> per(prepared.size(), 0);
                // One job per task: each table's step runs on one thread, tables side by side.
                embtab::parallel_for(prepared.size(), threads, 1, [&](std::size_t b, std::size_t e) {
                    for (std::size_t j = b; j < e; ++j) per[j] = prepared[j].run(1);
                });
                for (std::size_t x : per) updated += x;
            }
            return updated;
        },
        py::arg("jobs"), py::arg("num_threads") = 1,
        "one fused optimizer step per job (a tuple of fused_step's first 18 arguments), the jobs "
        "side by side on num_threads threads, each on one; every job is checked before any runs; "
        "returns how many rows were updated in all");
}
