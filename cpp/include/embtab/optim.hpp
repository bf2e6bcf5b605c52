// embtab/optim.hpp: fused sparse optimizer steps on the rows one batch touched, free of torch and
// pybind11 (embtab.optim drives it from the modules' backward).
//
// One call (fused_step) takes a batch's rows (one per ID occurrence), the gradient of the
// lookup's output (per bag for the bag modules, per occurrence otherwise), and applies one
// optimizer step in place to each distinct row touched, with that row's summed gradient:
//
//   1. plan (serial, O(n)): the distinct rows in order of first occurrence and, for each, its
//      occurrences in ascending order (a CSR built by counting, with a marker array indexed by
//      row: no sort);
//   2. step (parallel over distinct rows, fixed chunks of kOptimGrain rows): sum the row's
//      gradient over its occurrences in ascending order, then update the row and its state.
// Each row's arithmetic depends on its own occurrences only and runs in a fixed order, so the
// result is the same bits for any thread count (and any vector width: only IEEE +, -, *, / and
// sqrt, no contraction, see CMakeLists.txt).
//
// The optimizers (g = the row's summed gradient; all state starts at 0 unless stated):
//   SGD            g' = g + wd·w;  with momentum m: b = m·b + g', g' = nesterov ? g' + m·b : b;
//                  w -= lr·g'       (torch.optim.SGD's arithmetic, dampening 0)
//   Adagrad        s += g²; w -= clr · g / (sqrt(s) + eps)    (torch.optim.Adagrad, sparse grad;
//                  clr = lr / (1 + (t - 1)·lr_decay) is resolved by the caller; s starts at
//                  initial_accumulator_value)
//   RowWiseAdagrad s_row += mean_j(g_j²); w -= lr / (sqrt(s_row) + eps) · g
//                  (FBGEMM EXACT_ROWWISE_ADAGRAD; one state value per row)
//   Adam           m += (g - m)(1 - β1); v += (g² - v)(1 - β2); w -= α · m / (sqrt(v) + eps)
//                  (torch.optim.SparseAdam; α = lr·sqrt(1 - β2^t)/(1 - β1^t) resolved by the caller)
// Rows not touched by the batch, their state included, are left alone ("lazy" semantics): SGD
// with momentum or weight decay is torch's dense SGD restricted to the touched rows.
//
// Concurrency: fused_step writes the touched rows of weight and state only. WARNING: it is not
// thread-safe with any other call that reads or writes the same weight or state.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "embtab/parallel.hpp"

namespace embtab {

// kOptimGrain is the number of distinct rows a parallel chunk of fused_step updates.
inline constexpr std::size_t kOptimGrain = 256;

// OptimKind selects the update rule of fused_step.
enum class OptimKind : int { kSGD = 0, kAdagrad = 1, kRowWiseAdagrad = 2, kAdam = 3 };

// OptimStep holds one step's resolved hyperparameters (see the table in the file comment).
struct OptimStep {
    OptimKind kind = OptimKind::kSGD;
    double lr = 0.0;  // SGD and RowWiseAdagrad: lr; Adagrad: clr; Adam: α
    double eps = 0.0;
    double momentum = 0.0;
    bool nesterov = false;
    double weight_decay = 0.0;
    double beta1 = 0.9, beta2 = 0.999;
};

// BatchGrad describes where an occurrence's gradient comes from. Occurrence i reads gradient
// row bag(i) of `grad` ([num_bags, dim], row-major), where bag(i) is i without offsets and the b
// with offsets[b] <= i < offsets[b + 1] with them (CSR, num_bags + 1 entries, offsets[0] = 0,
// non-decreasing, offsets[num_bags] = n). The occurrence's gradient is that row times
// psw[i] (when psw is set) times 1 / (occurrences of bag(i) that are not skip_row) when mean.
// by_freq divides a row's summed gradient by its number of occurrences in the batch.
template <class T>
struct BatchGrad {
    const T* grad = nullptr;
    std::size_t num_bags = 0;
    const std::int64_t* offsets = nullptr;
    const T* psw = nullptr;
    bool mean = false;
    bool by_freq = false;
};

// RowPlan: the distinct rows of a batch and each one's occurrences.
struct RowPlan {
    std::vector<std::int64_t> rows;   // distinct rows, in order of first occurrence
    std::vector<std::int64_t> start;  // rows.size() + 1 offsets into occ
    std::vector<std::int64_t> occ;    // occurrence indices, grouped by row, ascending in a group
};

// plan ///////////////////////////////////////////////////////////////////////////////////////

// build_plan fills `plan` for rows[0, n), leaving out occurrences equal to skip_row (the zero
// row; -1 for none). Throws std::out_of_range naming the first row outside [0, num_rows) and
// std::invalid_argument when n >= 2^31; nothing else. Uses a per-thread marker array of
// num_rows entries that it leaves all -1 on return.
inline void build_plan(const std::int64_t* rows, std::size_t n, std::int64_t skip_row, std::size_t num_rows,
                       RowPlan& plan) {
    if (n >= (std::size_t{1} << 31)) throw std::invalid_argument("more than 2^31 - 1 occurrences in one batch");
    for (std::size_t i = 0; i < n; ++i) {
        if (rows[i] < 0 || static_cast<std::uint64_t>(rows[i]) >= num_rows) {
            throw std::out_of_range("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                    " is outside the weight's rows [0, " + std::to_string(num_rows) + ")");
        }
    }
    thread_local std::vector<std::int32_t> mark;
    if (mark.size() < num_rows) mark.assign(num_rows, -1);
    plan.rows.clear();
    std::vector<std::int32_t> slot(n);
    std::vector<std::int64_t> count;
    for (std::size_t i = 0; i < n; ++i) {
        const std::int64_t r = rows[i];
        if (r == skip_row) {
            slot[i] = -1;
            continue;
        }
        std::int32_t u = mark[static_cast<std::size_t>(r)];
        if (u < 0) {
            u = static_cast<std::int32_t>(plan.rows.size());
            mark[static_cast<std::size_t>(r)] = u;
            plan.rows.push_back(r);
            count.push_back(0);
        }
        ++count[static_cast<std::size_t>(u)];
        slot[i] = u;
    }
    for (std::int64_t r : plan.rows) mark[static_cast<std::size_t>(r)] = -1;
    const std::size_t nu = plan.rows.size();
    plan.start.assign(nu + 1, 0);
    for (std::size_t u = 0; u < nu; ++u) plan.start[u + 1] = plan.start[u] + count[u];
    plan.occ.resize(static_cast<std::size_t>(plan.start[nu]));
    for (std::size_t u = 0; u < nu; ++u) count[u] = plan.start[u];
    for (std::size_t i = 0; i < n; ++i) {
        if (slot[i] >= 0) plan.occ[static_cast<std::size_t>(count[static_cast<std::size_t>(slot[i])]++)] =
                              static_cast<std::int64_t>(i);
    }
}

// row updates ////////////////////////////////////////////////////////////////////////////////

// sqrt_inplace sets x[j] = sqrt(x[j]) for j < n (correctly rounded, so the same bits in the
// vector and the scalar loop).
inline void sqrt_inplace(float* x, std::size_t n) noexcept {
    std::size_t j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= n; j += 4) _mm_storeu_ps(x + j, _mm_sqrt_ps(_mm_loadu_ps(x + j)));
#endif
    for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}

inline void sqrt_inplace(double* x, std::size_t n) noexcept {
    std::size_t j = 0;
#if defined(__SSE2__)
    for (; j + 2 <= n; j += 2) _mm_storeu_pd(x + j, _mm_sqrt_pd(_mm_loadu_pd(x + j)));
#endif
    for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}

// update_row applies one step of `p` to the row w[0, d) with summed gradient g (overwritten)
// and its state (s1, s2: that row's slices; s1 is one value for kRowWiseAdagrad). tmp holds d
// elements of scratch. Never throws.
template <class T>
inline void update_row(const OptimStep& p, T* __restrict w, T* __restrict g, T* __restrict s1, T* __restrict s2,
                       T* __restrict tmp, std::size_t d) noexcept {
    const T lr = static_cast<T>(p.lr);
    const T eps = static_cast<T>(p.eps);
    switch (p.kind) {
        case OptimKind::kSGD: {
            const T wd = static_cast<T>(p.weight_decay);
            const T mom = static_cast<T>(p.momentum);
            if (p.weight_decay != 0.0)
                for (std::size_t j = 0; j < d; ++j) g[j] = g[j] + wd * w[j];
            if (p.momentum != 0.0) {
                for (std::size_t j = 0; j < d; ++j) s1[j] = mom * s1[j] + g[j];
                if (p.nesterov) {
                    for (std::size_t j = 0; j < d; ++j) g[j] = g[j] + mom * s1[j];
                } else {
                    for (std::size_t j = 0; j < d; ++j) g[j] = s1[j];
                }
            }
            for (std::size_t j = 0; j < d; ++j) w[j] = w[j] + (-lr) * g[j];
            return;
        }
        case OptimKind::kAdagrad: {
            for (std::size_t j = 0; j < d; ++j) {
                s1[j] = s1[j] + g[j] * g[j];
                tmp[j] = s1[j];
            }
            sqrt_inplace(tmp, d);
            for (std::size_t j = 0; j < d; ++j) w[j] = w[j] + (-lr) * (g[j] / (tmp[j] + eps));
            return;
        }
        case OptimKind::kRowWiseAdagrad: {
            T sq = 0;
            for (std::size_t j = 0; j < d; ++j) sq += g[j] * g[j];
            s1[0] = s1[0] + sq / static_cast<T>(d);
            const T mult = lr / (std::sqrt(s1[0]) + eps);
            for (std::size_t j = 0; j < d; ++j) w[j] = w[j] - mult * g[j];
            return;
        }
        case OptimKind::kAdam: {
            const T a1 = static_cast<T>(1.0 - p.beta1), a2 = static_cast<T>(1.0 - p.beta2);
            for (std::size_t j = 0; j < d; ++j) {
                s1[j] = s1[j] + (g[j] - s1[j]) * a1;
                s2[j] = s2[j] + (g[j] * g[j] - s2[j]) * a2;
                tmp[j] = s2[j];
            }
            sqrt_inplace(tmp, d);
            for (std::size_t j = 0; j < d; ++j) w[j] = w[j] + (-lr) * (s1[j] / (tmp[j] + eps));
            return;
        }
    }
}

// fused step /////////////////////////////////////////////////////////////////////////////////

// fused_step applies one step of `p` to every distinct row of rows[0, n) except skip_row:
// weight is [num_rows, d]; s1/s2 are the state ([num_rows, d], or [num_rows] for s1 of
// kRowWiseAdagrad; null where the optimizer keeps none: s2 except for kAdam, s1 for SGD
// without momentum). Assumes the caller checked buffer sizes and `bg`'s invariants. Throws
// what build_plan throws, before anything is written. Returns the number of distinct rows
// updated.
template <class T>
inline std::size_t fused_step(T* weight, std::size_t num_rows, std::size_t d, const std::int64_t* rows,
                              std::size_t n, std::int64_t skip_row, const BatchGrad<T>& bg, T* s1, T* s2,
                              const OptimStep& p, int num_threads) {
    RowPlan plan;
    build_plan(rows, n, skip_row, num_rows, plan);
    std::vector<std::int64_t> bag_of;
    std::vector<T> occ_scale;
    if (bg.offsets != nullptr) {
        bag_of.resize(n);
        for (std::size_t b = 0; b < bg.num_bags; ++b)
            for (std::int64_t i = bg.offsets[b]; i < bg.offsets[b + 1]; ++i) bag_of[static_cast<std::size_t>(i)] = b;
    }
    if (bg.mean) {
        // occ_scale[i] = 1 / (non-skipped occurrences of bag(i)), as the mean's backward.
        std::vector<std::int64_t> cnt(bg.offsets != nullptr ? bg.num_bags : n, 0);
        for (std::size_t i = 0; i < n; ++i)
            if (rows[i] != skip_row) ++cnt[bg.offsets != nullptr ? static_cast<std::size_t>(bag_of[i]) : i];
        occ_scale.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t b = bg.offsets != nullptr ? static_cast<std::size_t>(bag_of[i]) : i;
            occ_scale[i] = cnt[b] ? T(1) / static_cast<T>(cnt[b]) : T(0);
        }
    }
    const std::int64_t* bags = bg.offsets != nullptr ? bag_of.data() : nullptr;
    const T* mscale = bg.mean ? occ_scale.data() : nullptr;
    const std::size_t nu = plan.rows.size();
    const std::size_t w1 = p.kind == OptimKind::kRowWiseAdagrad ? 1 : d;
    parallel_for(nu, num_threads, kOptimGrain, [&](std::size_t b, std::size_t e) {
        std::vector<T> buf(2 * d);
        T* acc = buf.data();
        T* tmp = acc + d;
        for (std::size_t u = b; u < e; ++u) {
            for (std::size_t j = 0; j < d; ++j) acc[j] = 0;
            for (std::int64_t k = plan.start[u]; k < plan.start[u + 1]; ++k) {
                const std::size_t i = static_cast<std::size_t>(plan.occ[static_cast<std::size_t>(k)]);
                const T* gr = bg.grad + (bags != nullptr ? static_cast<std::size_t>(bags[i]) : i) * d;
                if (bg.psw == nullptr && mscale == nullptr) {
                    for (std::size_t j = 0; j < d; ++j) acc[j] += gr[j];
                } else {
                    T c = bg.psw != nullptr ? bg.psw[i] : T(1);
                    if (mscale != nullptr) c = c * mscale[i];
                    for (std::size_t j = 0; j < d; ++j) acc[j] += gr[j] * c;
                }
            }
            if (bg.by_freq) {
                const T c = static_cast<T>(plan.start[u + 1] - plan.start[u]);
                for (std::size_t j = 0; j < d; ++j) acc[j] = acc[j] / c;
            }
            const std::size_t r = static_cast<std::size_t>(plan.rows[u]);
            update_row<T>(p, weight + r * d, acc, s1 != nullptr ? s1 + r * w1 : nullptr,
                          s2 != nullptr ? s2 + r * d : nullptr, tmp, d);
        }
    });
    return nu;
}

}  // namespace embtab
