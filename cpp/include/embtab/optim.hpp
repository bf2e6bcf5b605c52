// embtab/optim.hpp: fused sparse optimizer steps on the rows one batch touched, free of torch and
// pybind11 (embtab.optim drives it from the modules' backward).
//
// One call (fused_step) takes a batch's rows (one per ID occurrence), the gradient of the
// lookup's output (per bag for the bag modules, per occurrence otherwise), and applies one
// optimizer step in place to each distinct row touched, with that row's summed gradient. The
// distinct rows and each one's occurrences are found by counting (partitions by row, then a
// marker array indexed by row), never by a sort; all phases run in parallel (see fused_step).
// Each row's gradient is summed over its occurrences in ascending order and its update depends
// on that row only, so the result is the same bits for any thread count (and any vector width:
// only IEEE +, -, *, / and sqrt, no contraction, see CMakeLists.txt).
//
// The optimizers (g = the row's summed gradient; all state starts at 0 unless stated):
//   SGD            g' = g + wd·w;  with momentum m: b = m·b + g', g' = nesterov ? g' + m·b : b;
//                  w -= lr·g'       (torch.optim.SGD's arithmetic, dampening 0)
//   Adagrad        s += g²; w -= clr · g / (sqrt(s) + eps)    (torch.optim.Adagrad, sparse grad;
//                  clr = lr / (1 + (t - 1)·lr_decay) is resolved by the caller; s starts at
//                  initial_accumulator_value)
//   RowWiseAdagrad s_row += mean_j(g_j²); w -= lr / (sqrt(s_row) + eps) · g
//                  (FBGEMM EXACT_ROWWISE_ADAGRAD; one state value per row; the sum of squares
//                  is taken in sum_squares' fixed order)
//   Adam           m += (g - m)(1 - β1); v += (g² - v)(1 - β2); w -= α · m / (sqrt(v) + eps)
//                  (torch.optim.SparseAdam; α = lr·sqrt(1 - β2^t)/(1 - β1^t) resolved by the caller)
// Rows not touched by the batch, their state included, are left alone ("lazy" semantics): SGD
// with momentum or weight decay is torch's dense SGD restricted to the touched rows.
//
// Concurrency: fused_step writes the touched rows of weight and state only. WARNING: it is not
// thread-safe with any other call that reads or writes the same weight or state.
#pragma once

#include <algorithm>
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
#include "embtab/prefetch.hpp"

namespace embtab {

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
// row bag(i) of `grad` (num_bags rows of dim contiguous elements, row r at grad + r * ld: ld = dim
// when packed, larger for a column slice of a wider gradient, 0 when every row is the same
// one, as for the broadcast gradient of a sum), where bag(i) is i without offsets and the b
// with offsets[b] <= i < offsets[b + 1] with them (CSR, num_bags + 1 entries, offsets[0] = 0,
// non-decreasing, offsets[num_bags] = n). The occurrence's gradient is that row times
// psw[i] (when psw is set) times 1 / (occurrences of bag(i) that are not skip_row) when mean.
// by_freq divides a row's summed gradient by its number of occurrences in the batch.
template <class T>
struct BatchGrad {
    const T* grad = nullptr;
    std::size_t num_bags = 0;
    std::size_t ld = 0;  // elements from one gradient row to the next (d when packed; 0: one row for all)
    const std::int64_t* offsets = nullptr;
    const T* psw = nullptr;
    bool mean = false;
    bool by_freq = false;
};

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

// kSumLanes is the number of partial sums of sum_squares.
inline constexpr std::size_t kSumLanes = 16;

// sum_squares returns sum_j g[j]^2 in one fixed order: kSumLanes partial sums (lane l adds the
// j = l mod kSumLanes in ascending j), then a pairwise tree (lane l += lane l + h for h = 8, 4,
// 2, 1). The lanes are independent, so this vectorises at every ISA level with the same bits,
// where one running sum would be a chain of d dependent additions.
template <class T>
inline T sum_squares(const T* __restrict g, std::size_t d) noexcept {
    T part[kSumLanes] = {};
    std::size_t j = 0;
    for (; j + kSumLanes <= d; j += kSumLanes)
        for (std::size_t l = 0; l < kSumLanes; ++l) part[l] = part[l] + g[j + l] * g[j + l];
    for (std::size_t l = 0; j + l < d; ++l) part[l] = part[l] + g[j + l] * g[j + l];
    for (std::size_t h = kSumLanes / 2; h > 0; h /= 2)
        for (std::size_t l = 0; l < h; ++l) part[l] = part[l] + part[l + h];
    return part[0];
}

// update_row applies one step of `p` to the row w[0, d) with summed gradient g (overwritten)
// and its state (s1, s2: that row's slices; s1 is one value for kRowWiseAdagrad). tmp holds d
// elements of scratch. Never throws.
template <class T>
inline void update_row_body(const OptimStep& p, T* __restrict w, T* __restrict g, T* __restrict s1, T* __restrict s2,
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
            s1[0] = s1[0] + sum_squares(g, d) / static_cast<T>(d);
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

// update_row applies one step of `p` to one row (see update_row_body). A call, not inlined
// into the row loop of step_partitions on purpose: inlined, its switch over the optimizers made
// that loop 20-30% slower (bench/README.md, "Fused optimizers").
template <class T>
__attribute__((noinline)) void update_row(const OptimStep& p, T* __restrict w, T* __restrict g, T* __restrict s1,
                                          T* __restrict s2, T* __restrict tmp, std::size_t d) noexcept {
    update_row_body<T>(p, w, g, s1, s2, tmp, d);
}

// fused step /////////////////////////////////////////////////////////////////////////////////
//
// Three phases, no sort and no hash set (bench/README.md, "Fused optimizers", gives the timings
// that chose this layout over the partitioned counting sort before it):
//   1. (one thread) walk the occurrences in ascending order: check each row is in range and give
//      each distinct row a slot, in order of first occurrence, through a marker array indexed by
//      row (`mark`, all -1 between calls);
//   2. (one thread) add each occurrence's gradient into its slot's row of an accumulator
//      [slots, d], occurrences in ascending order: the first one as 0 + g (the bits of adding
//      to a zeroed row, without zeroing it), each later one as acc + g;
//   3. (parallel over chunks of slots) apply each slot's update to its row.
// Phases 1 and 2 run on one thread: split over two threads (by columns of the accumulator, by
// ranges of slots, or by rows owned per thread, each thread walking the whole batch), they ran
// no faster on the benchmark machine (bench/README.md, "Fused optimizers").
// Every element of a row's summed gradient is added over the row's occurrences in ascending
// order, starting from 0, whatever the split, so the bits do not depend on the thread count.

// Phase 3 prefetches a row's weight and state rows_ahead(row bytes) slots ahead (prefetch.hpp).

// kAccPrefetch is how many occurrences ahead phase 2 prefetches the accumulator row it will add to.
inline constexpr std::size_t kAccPrefetch = 16;

// kChunksPerThread is how many chunks of phase 3 each thread gets on average (more than one,
// so that a thread slowed by the machine hands work to the others).
inline constexpr std::size_t kChunksPerThread = 4;

// kNoSlot marks a skipped occurrence (skip_row) in phase 1's slot array; kFirst marks a
// slot's first occurrence (slots are below 2^31).
inline constexpr std::uint32_t kNoSlot = 0xFFFFFFFFu;
inline constexpr std::uint32_t kFirst = 0x80000000u;

// kKeepScratchBytes: an accumulator larger than this is freed at the end of its call.
inline constexpr std::size_t kKeepScratchBytes = std::size_t{64} << 20;

// throw_row_range throws std::out_of_range naming rows[i], outside [0, num_rows).
[[noreturn]] inline void throw_row_range(const std::int64_t* rows, std::size_t i, std::size_t num_rows) {
    throw std::out_of_range("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                            " is outside the weight's rows [0, " + std::to_string(num_rows) + ")");
}

// StepScratch holds fused_step's work arrays between calls on one thread, so that a step
// allocates (and page-faults) only when it needs more than the thread's previous steps did.
template <class T>
struct StepScratch {
    std::vector<std::int32_t> mark;              // indexed by row; all -1 between calls
    std::vector<std::uint32_t> slot;             // slot of each occurrence (kNoSlot: skipped)
    std::vector<std::int64_t> urows;             // the distinct rows, in order of first occurrence
    std::vector<std::uint32_t> count;            // occurrences of each slot (by_freq only)
    std::vector<T> bag_scale;                    // mean: 1 / live entries of each bag
    std::vector<T> acc;                          // [slots, d] summed gradients
    std::vector<T> tmp;                          // phase 3: one row of scratch per chunk
};

// update_slots runs phase 3 of fused_step on slots [u0, u1): divides each slot's summed
// gradient acc[u] by count[u] (when count is set: scale_grad_by_freq), applies the update to row
// urows[u] and resets its marker. tmp holds d elements.
template <class T>
void update_slots(const OptimStep& p, T* weight, std::size_t d, T* s1, T* s2,
                                            const std::int64_t* urows, T* acc, const std::uint32_t* count,
                                            std::int32_t* mark, std::size_t u0, std::size_t u1, T* tmp) noexcept {
    const std::size_t w1 = p.kind == OptimKind::kRowWiseAdagrad ? 1 : d;
    const std::size_t ahead = rows_ahead(d * sizeof(T));
    for (std::size_t u = u0; u < u1; ++u) {
        if (u + ahead < u1) {
            const std::size_t rn = static_cast<std::size_t>(urows[u + ahead]);
            prefetch_row(weight + rn * d, d);
            if (s1 != nullptr) prefetch_row(s1 + rn * w1, w1);
            if (s2 != nullptr) prefetch_row(s2 + rn * d, d);
        }
        T* a = acc + u * d;
        if (count != nullptr) {
            const T c = static_cast<T>(count[u]);
            for (std::size_t j = 0; j < d; ++j) a[j] = a[j] / c;
        }
        const std::size_t r = static_cast<std::size_t>(urows[u]);
        update_row<T>(p, weight + r * d, a, s1 != nullptr ? s1 + r * w1 : nullptr, s2 != nullptr ? s2 + r * d : nullptr,
                      tmp, d);
        mark[r] = -1;
    }
}

// fused_step applies one step of `p` to every distinct row of rows[0, n) except skip_row:
// weight is [num_rows, d]; s1/s2 are the state ([num_rows, d], or [num_rows] for s1 of
// kRowWiseAdagrad; null where the optimizer keeps none: s2 except for kAdam, s1 for SGD
// without momentum). Assumes the caller checked buffer sizes and `bg`'s invariants. Throws
// std::out_of_range naming the first row outside [0, num_rows) and std::invalid_argument when
// n >= 2^31, before anything is written. Returns the number of distinct rows updated. Uses a
// marker array of num_rows int32 kept per calling thread (all -1 between calls).
template <class T>
inline std::size_t fused_step(T* weight, std::size_t num_rows, std::size_t d, const std::int64_t* rows,
                              std::size_t n, std::int64_t skip_row, const BatchGrad<T>& bg, T* s1, T* s2,
                              const OptimStep& p, int num_threads) {
    if (n >= (std::size_t{1} << 31)) throw std::invalid_argument("more than 2^31 - 1 occurrences in one batch");
    thread_local StepScratch<T> tls;
    const bool bags = bg.offsets != nullptr;
    const std::size_t nb = bags ? bg.num_bags : n;
    const bool mean = bags && bg.mean;
    // Everything phases 1 and 2 write is allocated first, and the loops below use raw pointers
    // (the workers of phase 3 reach this thread's scratch through them; a thread_local named
    // inside a lambda would be each worker's own). A marker array that must grow is allocated
    // after a check of the rows, so that a bad row is reported as such, not as a failed
    // allocation of a num_rows-sized array.
    if (tls.mark.size() < num_rows) {
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t r = rows[i];
            if (r != skip_row && (r < 0 || static_cast<std::uint64_t>(r) >= num_rows)) throw_row_range(rows, i, num_rows);
        }
        tls.mark.assign(num_rows, -1);
    }
    if (tls.slot.size() < n) tls.slot.resize(n);
    if (tls.urows.size() < n) tls.urows.resize(n);
    if (bg.by_freq && tls.count.size() < n) tls.count.resize(n);
    if (mean && tls.bag_scale.size() < nb) tls.bag_scale.resize(nb);
    std::int32_t* const mark = tls.mark.data();
    std::uint32_t* const slot = tls.slot.data();
    std::int64_t* const urows = tls.urows.data();
    std::uint32_t* const count = bg.by_freq ? tls.count.data() : nullptr;
    T* const bag_scale = mean ? tls.bag_scale.data() : nullptr;
    std::size_t nu = 0;
    auto reset_marks = [&]() noexcept {
        for (std::size_t u = 0; u < nu; ++u) mark[static_cast<std::size_t>(urows[u])] = -1;
    };
    // 1: slots in order of first occurrence (and each slot's count for by_freq).
    for (std::size_t i = 0; i < n; ++i) {
        const std::int64_t r = rows[i];
        if (r == skip_row) {
            slot[i] = kNoSlot;
            continue;
        }
        if (r < 0 || static_cast<std::uint64_t>(r) >= num_rows) {
            reset_marks();
            throw_row_range(rows, i, num_rows);
        }
        std::int32_t& m = mark[static_cast<std::size_t>(r)];
        if (m < 0) {
            m = static_cast<std::int32_t>(nu);
            urows[nu++] = r;
            slot[i] = static_cast<std::uint32_t>(m) | kFirst;
            if (count != nullptr) count[m] = 0;
        } else {
            slot[i] = static_cast<std::uint32_t>(m);
        }
        if (count != nullptr) ++count[m];
    }
    if (mean) {  // 1 / the bag's entries other than skip_row
        for (std::size_t b = 0; b < nb; ++b) {
            std::size_t live = 0;
            for (std::int64_t i = bg.offsets[b]; i < bg.offsets[b + 1]; ++i) live += slot[static_cast<std::size_t>(i)] != kNoSlot;
            bag_scale[b] = live ? T(1) / static_cast<T>(live) : T(0);
        }
    }
    const int threads = resolve_threads(num_threads);
    const std::size_t chunks =
        threads <= 1 || nu < 2 ? 1 : std::min<std::size_t>(nu, kChunksPerThread * static_cast<std::size_t>(threads));
    try {
        if (tls.acc.size() < nu * d) tls.acc.resize(nu * d);
        if (tls.tmp.size() < chunks * d) tls.tmp.resize(chunks * d);  // one row of scratch per chunk
    } catch (...) {
        reset_marks();
        throw;
    }
    T* const acc = tls.acc.data();
    T* const tmp = tls.tmp.data();
    // 2: acc[slot] = 0 + the first occurrence's gradient, then += each later one's, in
    // ascending order (the same bits as adding to a zeroed row, without zeroing it first).
    const bool plain = bg.psw == nullptr && !mean;
    for (std::size_t b = 0; b < nb; ++b) {
        const std::size_t i0 = bags ? static_cast<std::size_t>(bg.offsets[b]) : b;
        const std::size_t i1 = bags ? static_cast<std::size_t>(bg.offsets[b + 1]) : b + 1;
        const T* __restrict g = bg.grad + b * bg.ld;
        if (plain) {
            for (std::size_t i = i0; i < i1; ++i) {
                if (i + kAccPrefetch < n) {
                    const std::uint32_t un = slot[i + kAccPrefetch];
                    if (un != kNoSlot) prefetch_row(acc + static_cast<std::size_t>(un & ~kFirst) * d, d);
                }
                const std::uint32_t u = slot[i];
                if (u == kNoSlot) continue;
                T* __restrict a = acc + static_cast<std::size_t>(u & ~kFirst) * d;
                if (u & kFirst) {
                    for (std::size_t j = 0; j < d; ++j) a[j] = T(0) + g[j];
                } else {
                    for (std::size_t j = 0; j < d; ++j) a[j] = a[j] + g[j];
                }
            }
        } else {
            for (std::size_t i = i0; i < i1; ++i) {
                const std::uint32_t u = slot[i];
                if (u == kNoSlot) continue;
                T* __restrict a = acc + static_cast<std::size_t>(u & ~kFirst) * d;
                T c = bg.psw != nullptr ? bg.psw[i] : T(1);
                if (mean) c = c * bag_scale[b];
                if (u & kFirst) {
                    for (std::size_t j = 0; j < d; ++j) a[j] = T(0) + g[j] * c;
                } else {
                    for (std::size_t j = 0; j < d; ++j) a[j] = a[j] + g[j] * c;
                }
            }
        }
    }
    // 3: the updates, in chunks of slots.
    if (chunks == 1) {
        update_slots<T>(p, weight, d, s1, s2, urows, acc, count, mark, 0, nu, tmp);
    } else {
        try {
            parallel_for(chunks, threads, 1, [&](std::size_t c0, std::size_t c1) {
                for (std::size_t c = c0; c < c1; ++c)
                    update_slots<T>(p, weight, d, s1, s2, urows, acc, count, mark, nu * c / chunks,
                                    nu * (c + 1) / chunks, tmp + c * d);
            });
        } catch (...) {  // the pool could not be set up: no chunk ran; reset every marker
            reset_marks();
            throw;
        }
    }
    // A large accumulator is not kept for the next call (a thread that stepped one huge batch
    // would otherwise hold it for good).
    if (tls.acc.capacity() * sizeof(T) > kKeepScratchBytes) std::vector<T>().swap(tls.acc);
    return nu;
}

}  // namespace embtab
