// embtab/optim.hpp: fused sparse optimizer steps on the rows one batch touched, free of torch and
// pybind11 (embtab.optim drives it from the modules' backward).
//
// One call (fused_step) takes a batch's rows (one per ID occurrence), the gradient of the
// lookup's output (per bag for the bag modules, per occurrence otherwise), and applies one
// optimizer step in place to each distinct row touched, with that row's summed gradient. The
// distinct rows and each one's occurrences are found by counting (parts owning blocks of rows,
// then a marker array indexed by row), never by a sort; with several threads every pass runs
// in parallel (see "fused step" below).
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
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
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
// No sort and no hash set (bench/README.md, "Fused optimizers", gives the timings that chose
// this layout). The distinct rows are split into parts by owner (part_of: blocks of 16 rows,
// spread by a hash), and each part walks its own occurrences once, in ascending order:
//   1. it gives each distinct row a slot, in order of first occurrence, through a marker array
//      indexed by row (`mark`, all -1 between calls), and
//   2. adds the occurrence's gradient into its slot's row of an accumulator: the first one as
//      0 + g (the bits of adding to a zeroed row, without zeroing it), each later one as acc + g;
// then 3. applies each slot's update to its row and resets the row's marker.
// A part touches only its own rows (their markers, weights and state) and its own slots, so the
// parts run side by side with no lock; a row's occurrences are all in one part, summed in
// ascending order from 0 whatever the number of parts, so the bits do not depend on the thread
// count. With one thread (or a small batch) there is one part, which walks the batch bag by bag.
// With more, phase 0 first checks every row and lists each part's occurrences (a stable
// counting sort by part of each of a few ranges of the batch, the ranges in parallel), then the
// threads claim the parts, largest first, each walking its list.
// Walking the occurrences once (passes 1 and 2 merged, the marker prefetched 2 * kAccPrefetch
// occurrences ahead and the accumulator row kAccPrefetch ahead) ran 8-14% faster at one thread
// than a marker pass followed by a summing pass (bench/README.md).

// kAccPrefetch is how many occurrences ahead pass 2 prefetches the accumulator row it will add to.
inline constexpr std::size_t kAccPrefetch = 16;

// kPartsPerThread is how many parts each thread gets on average (more than one, so that a thread
// slowed by the machine, or a part holding the hottest rows, hands work to the others).
inline constexpr std::size_t kPartsPerThread = 8;

// kRangesPerThread is how many ranges of the batch phase 0 lists per thread.
inline constexpr std::size_t kRangesPerThread = 2;

// kMaxParts bounds the parts (a part number fits in a byte; kSkipPart marks a skipped occurrence).
inline constexpr std::size_t kMaxParts = 255;
inline constexpr std::uint8_t kSkipPart = 0xFF;

// kPartBlockShift: rows are owned in blocks of 2^4 = 16, so that the markers (int32, in a
// cache-line-aligned array) of rows owned by different parts never share a 64-byte cache line,
// nor do their weight and state rows (row-wise Adagrad's one value per row included) when the
// caller's arrays are cache-line aligned, as torch's and NumPy's large arrays are.
inline constexpr unsigned kPartBlockShift = 4;

// kPartMinOccurrences: a batch with fewer occurrences runs as one part on the calling thread.
inline constexpr std::size_t kPartMinOccurrences = 4096;

// kPartMaxAccBytes: a split batch's accumulator has room for the fewer of each part's
// occurrences and the rows (allocated, not touched), up to n * d elements; a batch whose n * d
// elements would pass this runs as one part instead (whose room is the fewer of occurrences and
// rows: never more than the weight).
inline constexpr std::size_t kPartMaxAccBytes = std::size_t{1} << 30;

// kFirst marks a slot word as its slot's first occurrence (slots are below 2^31).
inline constexpr std::uint32_t kFirst = 0x80000000u;

// kKeepScratchBytes: an accumulator larger than this is freed at the end of its call.
inline constexpr std::size_t kKeepScratchBytes = std::size_t{64} << 20;

// part_of returns the part, in [0, parts), that owns row r.
inline std::size_t part_of(std::int64_t r, std::size_t parts) noexcept {
    const std::uint64_t h = (static_cast<std::uint64_t>(r) >> kPartBlockShift) * 0x9E3779B97F4A7C15ull;
    return static_cast<std::size_t>(((h >> 32) * parts) >> 32);
}

// throw_row_range throws std::out_of_range naming rows[i], outside [0, num_rows).
[[noreturn]] inline void throw_row_range(const std::int64_t* rows, std::size_t i, std::size_t num_rows) {
    throw std::out_of_range("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                            " is outside the weight's rows [0, " + std::to_string(num_rows) + ")");
}

// ScratchArray is an array whose elements are left uninitialised (a std::vector would write
// every element of the accumulator when it grows, faulting in pages no slot may use), aligned
// to a cache line: an accumulator row of 64 bytes then spans one line, not two, and a block
// of 16 markers is one line that no other part writes (malloc aligns to 16 bytes only).
template <class T>
struct ScratchArray {
    static constexpr std::align_val_t kAlign{64};
    struct Free {
        void operator()(T* p) const noexcept { ::operator delete[](p, kAlign); }
    };
    std::unique_ptr<T[], Free> data;
    std::size_t size = 0;
    // reserve makes room for n elements (the contents are lost when it grows).
    T* reserve(std::size_t n) {
        if (n > size) {
            data.reset();
            size = 0;
            data.reset(static_cast<T*>(::operator new[](n * sizeof(T), kAlign)));
            size = n;
        }
        return data.get();
    }
    void release() noexcept {
        data.reset();
        size = 0;
    }
};

// StepScratch holds fused_step's work arrays between calls on one thread, so that a step
// allocates (and page-faults) only when it needs more than the thread's previous steps did.
template <class T>
struct StepScratch {
    ScratchArray<std::int32_t> mark;             // indexed by row; all -1 between calls
    ScratchArray<std::int64_t> urows;            // each slot's row
    ScratchArray<std::uint32_t> count;           // occurrences of each slot (by_freq only)
    ScratchArray<T> bag_scale;                   // mean: 1 / live entries of each bag
    ScratchArray<T> acc;                         // [slots, d] summed gradients
    ScratchArray<T> tmp;                         // pass 3: one row of scratch per part
    ScratchArray<std::uint8_t> own;              // phase 0: part of each occurrence
    ScratchArray<std::uint32_t> occ;             // phase 0: occurrences listed by part
    ScratchArray<std::uint32_t> occ_bag;         // phase 0: the bag of each listed occurrence
    std::vector<std::size_t> part_at;            // phase 0: where each range lists each part (see fused_step)
    std::vector<std::size_t> part_slots;         // slots of each part
    std::vector<std::size_t> range_bad;          // phase 0: each range's first bad row (n: none)
};

// update_slots runs pass 3 of fused_step on slots [u0, u1): divides each slot's summed
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

// StepPart is what the passes of one part read and write: a listed part (occ set) walks its
// occurrences occ[...] of bags occ_bag[...] (run_listed_part); slots index acc, urows and
// count.
template <class T>
struct StepPart {
    const std::int64_t* rows;
    const BatchGrad<T>* bg;
    const T* bag_scale;  // mean only
    const std::uint32_t* occ;
    const std::uint32_t* occ_bag;
    std::int32_t* mark;
    std::int64_t* urows;
    std::uint32_t* count;  // by_freq only
    T* acc;
    std::size_t d;
};

// add_occurrence is pass 2 for one occurrence: slot word u (kFirst set on the slot's first one)
// gets bag b's gradient row times c (plain: times nothing).
template <class T, bool kPlain>
inline void add_occurrence(const StepPart<T>& P, std::uint32_t u, std::size_t b, T c) noexcept {
    const std::size_t d = P.d;
    T* __restrict a = P.acc + static_cast<std::size_t>(u & ~kFirst) * d;
    const T* __restrict g = P.bg->grad + b * P.bg->ld;
    if (kPlain) {
        if (u & kFirst) {
            for (std::size_t j = 0; j < d; ++j) a[j] = T(0) + g[j];
        } else {
            for (std::size_t j = 0; j < d; ++j) a[j] = a[j] + g[j];
        }
    } else {
        if (u & kFirst) {
            for (std::size_t j = 0; j < d; ++j) a[j] = T(0) + g[j] * c;
        } else {
            for (std::size_t j = 0; j < d; ++j) a[j] = a[j] + g[j] * c;
        }
    }
}

// slot_of is pass 1 for one occurrence of row r (not skip_row): its slot word (see kFirst),
// a new slot base + nu (and nu + 1) when r has none yet.
template <class T>
inline std::uint32_t slot_of(const StepPart<T>& P, std::int64_t r, std::size_t base, std::size_t& nu) noexcept {
    std::int32_t& m = P.mark[static_cast<std::size_t>(r)];
    if (m >= 0) {
        if (P.count != nullptr) ++P.count[static_cast<std::size_t>(m)];
        return static_cast<std::uint32_t>(m);
    }
    const std::size_t u = base + nu++;
    m = static_cast<std::int32_t>(u);
    P.urows[u] = r;
    if (P.count != nullptr) P.count[u] = 1;
    return static_cast<std::uint32_t>(u) | kFirst;
}

// run_listed_part runs passes 1 and 2 of part q, merged into one walk, over its occurrences in
// each of the `ranges` ranges in ascending order (range c's: occ[i0 + at[c][q], i0 + at[c][q +
// 1]), with i0 the range's first occurrence from range_of); its slots start at base. Returns
// its number of slots.
template <class T, class RangeOf>
std::size_t run_listed_part(const StepPart<T>& P, std::size_t q, std::size_t parts, std::size_t ranges,
                            const std::size_t* at, const RangeOf& range_of, std::size_t base) noexcept {
    const BatchGrad<T>& bg = *P.bg;
    const bool bags = bg.offsets != nullptr;
    const bool plain = bg.psw == nullptr && P.bag_scale == nullptr;
    const std::size_t d = P.d;
    std::size_t nu = 0;
    std::size_t b0, b1, i0;
    for (std::size_t c = 0; c < ranges; ++c) {
        range_of(c, b0, b1, i0);
        const std::uint32_t* const o = P.occ + i0;
        const std::uint32_t* const ob = bags ? P.occ_bag + i0 : nullptr;
        const std::size_t e0 = at[c * (parts + 1) + q], e1 = at[c * (parts + 1) + q + 1];
        for (std::size_t e = e0; e < e1; ++e) {
            // the marker 2 * kAccPrefetch occurrences on, then, once it has arrived, the
            // accumulator row kAccPrefetch on (a row not seen yet takes the next new slot)
            if (e + 2 * kAccPrefetch < e1) __builtin_prefetch(P.mark + P.rows[o[e + 2 * kAccPrefetch]], 1, 3);
            if (e + kAccPrefetch < e1) {
                const std::int32_t m = P.mark[static_cast<std::size_t>(P.rows[o[e + kAccPrefetch]])];
                prefetch_row(P.acc + (m >= 0 ? static_cast<std::size_t>(m) : base + nu) * d, d);
            }
            const std::size_t i = o[e];
            const std::size_t b = bags ? ob[e] : i;
            const std::uint32_t u = slot_of(P, P.rows[i], base, nu);
            if (plain) {
                add_occurrence<T, true>(P, u, b, T(1));
            } else {
                T c2 = bg.psw != nullptr ? bg.psw[i] : T(1);
                if (P.bag_scale != nullptr) c2 = c2 * P.bag_scale[b];
                add_occurrence<T, false>(P, u, b, c2);
            }
        }
    }
    return nu;
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
    const int threads = resolve_threads(num_threads);
    std::size_t parts = 1;
    if (threads > 1 && n >= kPartMinOccurrences && d > 0 && n * d <= kPartMaxAccBytes / sizeof(T) &&
        nb < (std::size_t{1} << 32))
        parts = std::min<std::size_t>(kMaxParts, kPartsPerThread * static_cast<std::size_t>(threads));
    // Every row is checked before the marker array grows (so that a bad row is reported as such,
    // not as a failed allocation of a num_rows-sized array) and, for a split batch, before any
    // marker is set. Everything the passes write is allocated before any marker is set, and the
    // passes use raw pointers (the workers reach this thread's scratch through them; a
    // thread_local named inside a lambda would be each worker's own).
    auto check_rows = [&]() {
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t r = rows[i];
            if (r != skip_row && (r < 0 || static_cast<std::uint64_t>(r) >= num_rows)) throw_row_range(rows, i, num_rows);
        }
    };
    if (tls.mark.size < num_rows) {
        check_rows();
        std::fill_n(tls.mark.reserve(num_rows), num_rows, -1);
    }
    std::int32_t* const mark = tls.mark.data.get();
    std::int64_t* const urows = tls.urows.reserve(n);
    std::uint32_t* const count = bg.by_freq ? tls.count.reserve(n) : nullptr;
    T* const bag_scale = mean ? tls.bag_scale.reserve(nb) : nullptr;
    T* const tmp = tls.tmp.reserve(parts * d);  // one row of scratch per part
    if (mean) {  // 1 / the bag's entries other than skip_row
        for (std::size_t b = 0; b < nb; ++b) {
            std::size_t live = 0;
            for (std::int64_t i = bg.offsets[b]; i < bg.offsets[b + 1]; ++i) live += rows[i] != skip_row;
            bag_scale[b] = live ? T(1) / static_cast<T>(live) : T(0);
        }
    }
    StepPart<T> P{rows, &bg, bag_scale, nullptr, nullptr, mark, urows, count, nullptr, d};
    std::size_t nu = 0;
    if (parts == 1) {
        // passes 1 and 2 merged, bag by bag, rows checked as they come; the accumulator has room
        // for a slot per occurrence or per row, whichever is fewer (only used slots are touched)
        P.acc = tls.acc.reserve(std::min(n, num_rows) * d);
        const bool plain = bg.psw == nullptr && !mean;
        for (std::size_t b = 0; b < nb; ++b) {
            const std::size_t i0 = bags ? static_cast<std::size_t>(bg.offsets[b]) : b;
            const std::size_t i1 = bags ? static_cast<std::size_t>(bg.offsets[b + 1]) : b + 1;
            for (std::size_t i = i0; i < i1; ++i) {
                if (i + 2 * kAccPrefetch < n) {
                    const std::int64_t rn = rows[i + 2 * kAccPrefetch];
                    if (rn >= 0 && static_cast<std::uint64_t>(rn) < num_rows) __builtin_prefetch(mark + rn, 1, 3);
                }
                if (i + kAccPrefetch < n) {
                    const std::int64_t rn = rows[i + kAccPrefetch];
                    if (rn >= 0 && static_cast<std::uint64_t>(rn) < num_rows) {
                        const std::int32_t m = mark[static_cast<std::size_t>(rn)];
                        prefetch_row(P.acc + (m >= 0 ? static_cast<std::size_t>(m) : nu) * d, d);
                    }
                }
                const std::int64_t r = rows[i];
                if (r == skip_row) continue;
                if (r < 0 || static_cast<std::uint64_t>(r) >= num_rows) {
                    for (std::size_t u = 0; u < nu; ++u) mark[static_cast<std::size_t>(urows[u])] = -1;
                    throw_row_range(rows, i, num_rows);
                }
                const std::uint32_t u = slot_of(P, r, 0, nu);
                if (plain) {
                    add_occurrence<T, true>(P, u, b, T(1));
                } else {
                    T c = bg.psw != nullptr ? bg.psw[i] : T(1);
                    if (mean) c = c * bag_scale[b];
                    add_occurrence<T, false>(P, u, b, c);
                }
            }
        }
        update_slots<T>(p, weight, d, s1, s2, urows, P.acc, count, mark, 0, nu, tmp);
    } else {
        // A split batch runs as one parallel job of ranges + parts tasks, claimed in order:
        //   task c < ranges (phase 0, range c): check the rows of the c-th range of bags and
        //     list its occurrences by part, in ascending order (a stable counting sort of the
        //     range, in place in occ[range]); a bad row is recorded, not thrown;
        //   task ranges + t: wait until every range is listed (the task that lists the last one
        //     then orders the parts), then run passes 1-3 of the part with the t-th most
        //     occurrences (ties: the lower part first) over its occurrences in each range, ranges
        //     in ascending order (the largest parts first, so that no thread is left with a large
        //     one at the end).
        // Every range task is claimed before any part task, by a thread that runs it at once, so
        // the wait ends, whatever the number of threads that join (one included).
        const std::size_t ranges = std::min<std::size_t>(kRangesPerThread * static_cast<std::size_t>(threads), parts);
        std::uint8_t* const own = tls.own.reserve(n);
        std::uint32_t* const occ = tls.occ.reserve(n);
        std::uint32_t* const occ_bag = bags ? tls.occ_bag.reserve(n) : nullptr;
        StepScratch<T>* const scratch = &tls;  // this thread's, for the task that sizes acc
        // range c's listed occurrences of part q: occ[first of range c + at[c][q], ... + at[c][q + 1])
        tls.part_at.assign(ranges * (parts + 1), 0);
        tls.part_slots.assign(parts, 0);
        tls.range_bad.assign(ranges, n);
        std::size_t* const at = tls.part_at.data();
        std::size_t* const part_slots = tls.part_slots.data();
        std::size_t* const range_bad = tls.range_bad.data();
        P.occ = occ;
        P.occ_bag = occ_bag;
        auto range_of = [&](std::size_t c, std::size_t& b0, std::size_t& b1, std::size_t& i0) {
            b0 = nb * c / ranges;
            b1 = nb * (c + 1) / ranges;
            i0 = bags ? static_cast<std::size_t>(bg.offsets[b0]) : b0;
        };
        std::atomic<std::size_t> listed{0};
        std::atomic<bool> ready{false};
        bool acc_failed = false;  // written before `ready`, read after it
        std::size_t size[kMaxParts], base[kMaxParts], order[kMaxParts];
        auto list_range = [&](std::size_t c) noexcept {
            std::size_t b0, b1, i0;
            range_of(c, b0, b1, i0);
            const std::size_t i1 = bags ? static_cast<std::size_t>(bg.offsets[b1]) : b1;
            std::size_t cnt[kMaxParts + 1] = {};  // counted here, copied to at[c] once (ranges run side by side)
            for (std::size_t i = i0; i < i1; ++i) {
                const std::int64_t r = rows[i];
                if (r == skip_row) {
                    own[i] = kSkipPart;
                    continue;
                }
                if (r < 0 || static_cast<std::uint64_t>(r) >= num_rows) {
                    range_bad[c] = i;
                    break;
                }
                const std::size_t q = part_of(r, parts);
                own[i] = static_cast<std::uint8_t>(q);
                ++cnt[q + 1];
            }
            if (range_bad[c] == n) {
                for (std::size_t q = 0; q < parts; ++q) cnt[q + 1] += cnt[q];
                std::copy(cnt, cnt + parts + 1, at + c * (parts + 1));
                std::size_t fill[kMaxParts];
                std::copy(cnt, cnt + parts, fill);
                for (std::size_t b = b0; b < b1; ++b) {
                    const std::size_t j0 = bags ? static_cast<std::size_t>(bg.offsets[b]) : b;
                    const std::size_t j1 = bags ? static_cast<std::size_t>(bg.offsets[b + 1]) : b + 1;
                    for (std::size_t i = j0; i < j1; ++i) {
                        const std::uint8_t q = own[i];
                        if (q == kSkipPart) continue;
                        const std::size_t k = i0 + fill[q]++;
                        occ[k] = static_cast<std::uint32_t>(i);
                        if (occ_bag != nullptr) occ_bag[k] = static_cast<std::uint32_t>(b);
                    }
                }
            }
            if (listed.fetch_add(1, std::memory_order_acq_rel) + 1 < ranges) return;
            // The last range listed: unless a row was bad, every part's occurrences, its slot base
            // (room for the fewer of its occurrences and the rows, after the parts before it), the
            // accumulator (a failed allocation is recorded and thrown after the job) and the order
            // the parts are run in.
            bool bad_row = false;
            for (std::size_t c2 = 0; c2 < ranges; ++c2) bad_row = bad_row || range_bad[c2] != n;
            if (!bad_row) {
                std::size_t total = 0;
                for (std::size_t q = 0; q < parts; ++q) {
                    std::size_t m = 0;
                    for (std::size_t c2 = 0; c2 < ranges; ++c2) m += at[c2 * (parts + 1) + q + 1] - at[c2 * (parts + 1) + q];
                    size[q] = m;
                    base[q] = total;
                    total += std::min(m, num_rows);
                    order[q] = q;
                }
                std::stable_sort(order, order + parts, [&](std::size_t x, std::size_t y) { return size[x] > size[y]; });
                try {
                    P.acc = scratch->acc.reserve(total * d);  // only used slots are touched
                } catch (...) {
                    acc_failed = true;
                }
            }
            ready.store(true, std::memory_order_release);
        };
        auto run_part = [&](std::size_t t) noexcept {
            for (unsigned spins = 1; !ready.load(std::memory_order_acquire); ++spins) {
                spin_pause();
                if (spins % 4096 == 0) std::this_thread::yield();  // the lister may be descheduled
            }
            if (acc_failed) return;  // nothing is written
            for (std::size_t c = 0; c < ranges; ++c)
                if (range_bad[c] != n) return;  // a bad row: nothing is written
            const std::size_t q = order[t];
            const std::size_t m = run_listed_part<T>(P, q, parts, ranges, at, range_of, base[q]);
            part_slots[q] = m;
            update_slots<T>(p, weight, d, s1, s2, urows, P.acc, count, mark, base[q], base[q] + m, tmp + q * d);
        };
        parallel_for(ranges + parts, threads, 1, [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) {
                if (t < ranges) {
                    list_range(t);
                } else {
                    run_part(t - ranges);
                }
            }
        });
        for (std::size_t c = 0; c < ranges; ++c)
            if (range_bad[c] != n) throw_row_range(rows, range_bad[c], num_rows);
        if (acc_failed) throw std::bad_alloc();
        for (std::size_t q = 0; q < parts; ++q) nu += part_slots[q];
    }
    // A large accumulator is not kept for the next call (a thread that stepped one huge batch
    // would otherwise hold it for good).
    if (tls.acc.size * sizeof(T) > kKeepScratchBytes) tls.acc.release();
    return nu;
}

}  // namespace embtab
