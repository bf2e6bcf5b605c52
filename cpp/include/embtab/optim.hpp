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
// Rows are split into kOptimParts partitions by row % kOptimParts, so partitions never share a
// row and run in parallel with no synchronisation:
//   A. (parallel over fixed chunks of kOptimChunk occurrences) check each row is in range and
//      count the chunk's occurrences per partition;
//   B. (parallel over the same chunks) scatter occurrence indices into their partition's list,
//      in ascending order (a stable counting sort by partition; no comparison sort);
//   C. (parallel over partitions) find the partition's distinct rows with a marker array
//      indexed by row, group each row's occurrences (counting, ascending), then sum and update
//      row by row.
// A row's sum runs over its occurrences in ascending order whatever the chunking, so the bits do
// not depend on the thread count nor on kOptimParts.

// kOptimParts is the number of row partitions of fused_step (a power of 2; enough that two
// threads balance a Zipf batch whose hottest rows land in a few partitions).
inline constexpr std::size_t kOptimParts = 64;

// kOptimChunk is the number of occurrences a parallel chunk of phases A and B handles.
inline constexpr std::size_t kOptimChunk = 8192;

// kOptimPrefetch is how many distinct rows ahead phase C prefetches a row's weight and state
// (their cache misses otherwise wait behind the long sum of the row before).
inline constexpr std::size_t kOptimPrefetch = 4;

static_assert((kOptimParts & (kOptimParts - 1)) == 0, "kOptimParts must be a power of 2");

// prefetch_row asks for the cache lines of x[0, len) to be written soon.
template <class T>
inline void prefetch_row(const T* x, std::size_t len) noexcept {
    const char* c = reinterpret_cast<const char*>(x);
    for (std::size_t b = 0; b < len * sizeof(T); b += 64) __builtin_prefetch(c + b, 1, 3);
}

// prefetch_read asks for the cache lines of x[0, len) to be read soon.
template <class T>
inline void prefetch_read(const T* x, std::size_t len) noexcept {
    const char* c = reinterpret_cast<const char*>(x);
    for (std::size_t b = 0; b < len * sizeof(T); b += 64) __builtin_prefetch(c + b, 0, 3);
}

// StepJob: what phase C of fused_step reads and writes (see fused_step).
template <class T>
struct StepJob {
    T* weight = nullptr;
    std::size_t d = 0;
    const std::int64_t* rows = nullptr;
    const BatchGrad<T>* bg = nullptr;
    T* s1 = nullptr;
    T* s2 = nullptr;
    const OptimStep* p = nullptr;
    const std::uint32_t* occ = nullptr;         // occurrence indices, partition-major
    const std::size_t* part_start = nullptr;    // kOptimParts + 1 offsets into occ
    const std::uint32_t* bag_of = nullptr;      // bag of each occurrence (with offsets)
    const T* bag_scale = nullptr;               // 1 / live entries of each bag (mean)
    std::int32_t* mark = nullptr;               // partition-major marker array, all -1
    std::size_t mark_stride = 0;                // entries per partition in mark
    std::size_t w1 = 0;                         // state1 elements per row
    std::size_t* distinct = nullptr;            // out: distinct rows per partition
};

// kGradPrefetch is how many occurrences ahead phase C prefetches the gradient row it will add.
inline constexpr std::size_t kGradPrefetch = 8;

// step_partitions runs phase C of fused_step on partitions [q0, q1): for each, its distinct
// rows in order of first occurrence (a marker array indexed by row), each row's occurrences
// grouped in ascending order (counting), then per row the summed gradient and the update.
// Only std::bad_alloc can throw.
template <class T>
void step_partitions(const StepJob<T>& J, std::size_t q0, std::size_t q1) {
    constexpr std::size_t P = kOptimParts;
    constexpr unsigned shift = __builtin_ctzll(P);
    const std::size_t d = J.d, w1 = J.w1;
    const BatchGrad<T>& bg = *J.bg;
    const std::int64_t* rows = J.rows;
    const bool plain = bg.psw == nullptr && !bg.mean;
    std::vector<T> buf(2 * d);
    T* acc = buf.data();
    T* tmp = acc + d;
    std::vector<std::int64_t> urows;
    std::vector<std::uint32_t> start, grouped;
    for (std::size_t q = q0; q < q1; ++q) {
        std::int32_t* mk = J.mark + q * J.mark_stride;  // indexed by row >> shift
        const std::uint32_t* po = J.occ + J.part_start[q];
        const std::size_t m = J.part_start[q + 1] - J.part_start[q];
        urows.clear();
        start.clear();
        for (std::size_t k = 0; k < m; ++k) {
            const std::size_t r = static_cast<std::size_t>(rows[po[k]]);
            std::int32_t& slot = mk[r >> shift];
            if (slot < 0) {
                slot = static_cast<std::int32_t>(urows.size());
                urows.push_back(static_cast<std::int64_t>(r));
                start.push_back(0);
            }
            ++start[static_cast<std::size_t>(slot)];
        }
        const std::size_t nu = urows.size();
        std::uint32_t sum = 0;
        for (std::size_t u = 0; u < nu; ++u) {  // counts -> exclusive offsets
            const std::uint32_t c = start[u];
            start[u] = sum;
            sum += c;
        }
        start.push_back(sum);
        grouped.resize(m);
        for (std::size_t k = 0; k < m; ++k) {
            const std::size_t u = static_cast<std::size_t>(mk[static_cast<std::size_t>(rows[po[k]]) >> shift]);
            grouped[start[u]++] = po[k];
        }
        for (std::size_t u = nu; u-- > 0;) start[u + 1] = start[u];  // shift back to offsets
        start[0] = 0;
        // grouped is now read front to back: prefetch each gradient row kGradPrefetch ahead.
        auto grad_row = [&](std::size_t k) -> std::size_t {
            const std::size_t i = grouped[k];
            return J.bag_of != nullptr ? J.bag_of[i] : i;
        };
        for (std::size_t u = 0; u < nu; ++u) {
            if (u + kOptimPrefetch < nu) {
                const std::size_t rn = static_cast<std::size_t>(urows[u + kOptimPrefetch]);
                prefetch_row(J.weight + rn * d, d);
                if (J.s1 != nullptr) prefetch_row(J.s1 + rn * w1, w1);
                if (J.s2 != nullptr) prefetch_row(J.s2 + rn * d, d);
            }
            for (std::size_t j = 0; j < d; ++j) acc[j] = 0;
            for (std::uint32_t k = start[u]; k < start[u + 1]; ++k) {
                if (k + kGradPrefetch < m) prefetch_read(bg.grad + grad_row(k + kGradPrefetch) * bg.ld, d);
                const std::size_t gi = grad_row(k);
                const T* __restrict gr = bg.grad + gi * bg.ld;
                if (plain) {
                    for (std::size_t j = 0; j < d; ++j) acc[j] = acc[j] + gr[j];
                } else {
                    T c = bg.psw != nullptr ? bg.psw[grouped[k]] : T(1);
                    if (bg.mean) c = c * J.bag_scale[gi];
                    for (std::size_t j = 0; j < d; ++j) acc[j] = acc[j] + gr[j] * c;
                }
            }
            if (bg.by_freq) {
                const T c = static_cast<T>(start[u + 1] - start[u]);
                for (std::size_t j = 0; j < d; ++j) acc[j] = acc[j] / c;
            }
            const std::size_t r = static_cast<std::size_t>(urows[u]);
            update_row<T>(*J.p, J.weight + r * d, acc, J.s1 != nullptr ? J.s1 + r * w1 : nullptr,
                          J.s2 != nullptr ? J.s2 + r * d : nullptr, tmp, d);
            mk[r >> shift] = -1;
        }
        J.distinct[q] = nu;
    }
}

// StepScratch holds fused_step's work arrays between calls on one thread.
template <class T>
struct StepScratch {
    std::vector<std::uint32_t> hist, occ, bag_of;
    std::vector<std::size_t> first_bad, pos, part_start;
    std::vector<T> bag_scale;
    std::vector<std::int32_t> mark;  // indexed by row; all -1 between calls
};

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
    constexpr std::size_t P = kOptimParts;
    const std::size_t chunks = (n + kOptimChunk - 1) / kOptimChunk;
    // A: range check and per-(chunk, partition) counts.
    // Scratch kept per calling thread, so a step allocates (and page-faults) only when it
    // needs more than the thread's previous steps did. The marker array is all -1 between calls.
    // (Workers reach it through the references below: a thread_local named inside the lambdas
    // would be each worker's own.)
    thread_local StepScratch<T> tls;
    std::vector<std::uint32_t>&hist = tls.hist, &occ = tls.occ, &bag_of = tls.bag_of;
    std::vector<std::size_t>&first_bad = tls.first_bad, &pos = tls.pos, &part_start = tls.part_start;
    std::vector<T>& bag_scale = tls.bag_scale;
    std::vector<std::int32_t>& mark = tls.mark;
    hist.assign(chunks * P, 0);
    first_bad.assign(chunks, n);
    parallel_for(chunks, num_threads, 1, [&](std::size_t cb, std::size_t ce) {
        for (std::size_t c = cb; c < ce; ++c) {
            std::uint32_t* h = hist.data() + c * P;
            for (std::size_t i = c * kOptimChunk, e = std::min(n, (c + 1) * kOptimChunk); i < e; ++i) {
                const std::int64_t r = rows[i];
                if (r == skip_row) continue;
                if (r < 0 || static_cast<std::uint64_t>(r) >= num_rows) {
                    if (first_bad[c] == n) first_bad[c] = i;
                    continue;
                }
                ++h[static_cast<std::size_t>(r) & (P - 1)];
            }
        }
    });
    for (std::size_t c = 0; c < chunks; ++c) {
        if (first_bad[c] != n) {
            const std::size_t i = first_bad[c];
            throw std::out_of_range("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                    " is outside the weight's rows [0, " + std::to_string(num_rows) + ")");
        }
    }
    // Partition-major offsets: part_start[q] .. part_start[q + 1] hold partition q's occurrences.
    pos.resize(chunks * P);
    part_start.assign(P + 1, 0);
    std::size_t total = 0;
    for (std::size_t q = 0; q < P; ++q) {
        part_start[q] = total;
        for (std::size_t c = 0; c < chunks; ++c) {
            pos[c * P + q] = total;
            total += hist[c * P + q];
        }
    }
    part_start[P] = total;
    // B: stable scatter of occurrence indices by partition.
    occ.resize(total);
    parallel_for(chunks, num_threads, 1, [&](std::size_t cb, std::size_t ce) {
        for (std::size_t c = cb; c < ce; ++c) {
            std::size_t* at = pos.data() + c * P;
            for (std::size_t i = c * kOptimChunk, e = std::min(n, (c + 1) * kOptimChunk); i < e; ++i) {
                const std::int64_t r = rows[i];
                if (r != skip_row) occ[at[static_cast<std::size_t>(r) & (P - 1)]++] = static_cast<std::uint32_t>(i);
            }
        }
    });
    // Bag of each occurrence and the mean's 1 / (non-skipped entries of the bag).
    if (bg.offsets != nullptr) {
        bag_of.resize(n);
        if (bg.mean) bag_scale.resize(bg.num_bags);
        parallel_for(bg.num_bags, num_threads, 1024, [&](std::size_t b0, std::size_t b1) {
            for (std::size_t b = b0; b < b1; ++b) {
                std::size_t live = 0;
                for (std::int64_t i = bg.offsets[b]; i < bg.offsets[b + 1]; ++i) {
                    bag_of[static_cast<std::size_t>(i)] = static_cast<std::uint32_t>(b);
                    live += rows[i] != skip_row;
                }
                if (bg.mean) bag_scale[b] = live ? T(1) / static_cast<T>(live) : T(0);
            }
        });
    }
    // The marker array is laid out partition-major (row r at (r % P) * stride + r / P): a partition's rows share one
    // contiguous slice of num_rows / kOptimParts entries, which stays in cache while the
    // partition is processed, instead of one cache line per row spread over 4 bytes x num_rows.
    const std::size_t stride = (num_rows + P - 1) / P;
    if (mark.size() < stride * P) mark.assign(stride * P, -1);
    StepJob<T> job;
    job.weight = weight;
    job.d = d;
    job.rows = rows;
    job.bg = &bg;
    job.s1 = s1;
    job.s2 = s2;
    job.p = &p;
    job.occ = occ.data();
    job.part_start = part_start.data();
    job.bag_of = bg.offsets != nullptr ? bag_of.data() : nullptr;
    job.bag_scale = bg.offsets != nullptr && bg.mean ? bag_scale.data() : nullptr;
    job.mark = mark.data();
    job.mark_stride = stride;
    job.w1 = p.kind == OptimKind::kRowWiseAdagrad ? 1 : d;
    std::vector<std::size_t> distinct(P, 0);
    job.distinct = distinct.data();
    // C: per partition, distinct rows, their occurrences, sum and update. Only an allocation
    // failure can throw here; the marker array is then reset whole.
    try {
        parallel_for(P, num_threads, 1, [&](std::size_t q0, std::size_t q1) { step_partitions<T>(job, q0, q1); });
    } catch (...) {
        mark.assign(mark.size(), -1);
        throw;
    }
    std::size_t nu = 0;
    for (std::size_t q = 0; q < P; ++q) nu += distinct[q];
    return nu;
}

}  // namespace embtab
