// embtab/optim.hpp: fused sparse optimizer steps on the rows one batch touched, free of torch and
// pybind11 (embtab.optim drives it from the modules' backward).
//
// One call (fused_step) takes a batch's rows (one per ID occurrence), the gradient of the
// lookup's output (per bag for the bag modules, per occurrence otherwise), and applies one
// optimizer step in place to each distinct row touched, with that row's summed gradient. The
// distinct rows and each one's occurrences are found by counting (parts owning blocks of rows,
// then a marker array indexed by row), never by a sort; with several threads every pass runs
// in parallel (see "fused step" in optim_impl.inc, the body, compiled once per ISA level at the
// end of this file).
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

#include "embtab/cpu.hpp"
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

// The step, once per ISA level (see optim_impl.inc). The code and the arithmetic are the same in
// each (IEEE +, -, *, / and sqrt only, no contraction: CMakeLists.txt), so the bits do not depend
// on the level; with the wider vectors the step alone took about a quarter less time at one
// thread (bench/README.md, "Fused optimizers", "The step at the CPU's ISA level"). GCC's
// interprocedural clones are off in the vector regions: a clone is a local symbol, which a
// stripped wheel drops, and .ci/check_isa.py could then not tell which function its
// instructions belong to. Clang has no `#pragma GCC target`: built with it, the step is the
// baseline form only.
namespace fused_base {
#include "embtab/optim_impl.inc"
}  // namespace fused_base

#if defined(EMBTAB_X86_INTRIN) && !defined(__clang__)  // clang has no #pragma GCC target
#pragma GCC push_options
#pragma GCC target("avx2")
#pragma GCC optimize("no-ipa-cp", "no-ipa-cp-clone", "no-ipa-sra", "no-partial-inlining", "no-reorder-blocks-and-partition")
namespace fused_avx2 {
#include "embtab/optim_impl.inc"
}  // namespace fused_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl")
#pragma GCC optimize("no-ipa-cp", "no-ipa-cp-clone", "no-ipa-sra", "no-partial-inlining", "no-reorder-blocks-and-partition")
namespace fused_avx512 {
#include "embtab/optim_impl.inc"
}  // namespace fused_avx512
#pragma GCC pop_options
#endif

// fused_step applies one step of `p` to every distinct row of rows[0, n) except skip_row (see
// fused_base::fused_step in optim_impl.inc for the contract), with the widest vectors the CPU
// has (detail::use_avx512 / use_avx2, which tests can cap).
template <class T>
inline std::size_t fused_step(T* weight, std::size_t num_rows, std::size_t d, const std::int64_t* rows,
                              std::size_t n, std::int64_t skip_row, const BatchGrad<T>& bg, T* s1, T* s2,
                              const OptimStep& p, int num_threads) {
#if defined(EMBTAB_X86_INTRIN) && !defined(__clang__)
    if (detail::use_avx512())
        return fused_avx512::fused_step<T>(weight, num_rows, d, rows, n, skip_row, bg, s1, s2, p, num_threads);
    if (detail::use_avx2())
        return fused_avx2::fused_step<T>(weight, num_rows, d, rows, n, skip_row, bg, s1, s2, p, num_threads);
#endif
    return fused_base::fused_step<T>(weight, num_rows, d, rows, n, skip_row, bg, s1, s2, p, num_threads);
}

}  // namespace embtab
