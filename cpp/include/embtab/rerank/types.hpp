// embtab/rerank/types.hpp: the reranker's inputs, status codes and constants, shared by its components.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace embtab {

// config ////////////////////////////////////////////////////////////////////////////////////


// kRerankGrain: users per parallel_for chunk (chunk bounds do not depend on the thread count).
inline constexpr std::size_t kRerankGrain = 16;
// kSortedChunk: candidates per chunk in the bounded scan of score-sorted rows.
inline constexpr std::int64_t kSortedChunk = 32;
// kBoundSlack: relative slack on the table-sum bound, covering the rounding of the candidate's
// own sum (at most width - 1 additions of non-negative terms).
inline constexpr double kBoundSlack = 1e-12;
// kDenseKeyMax: most (category, distinct weight) pairs G * D for which a user's table keys are
// mapped through dense [G * D] arrays (8 bytes each per thread); above it, a hash table of
// O(C * width) slots, whose memory does not depend on D.
inline constexpr std::size_t kDenseKeyMax = std::size_t{1} << 16;

// inputs ////////////////////////////////////////////////////////////////////////////////////

// ItemDist is a read-only CSR view of item category distributions. Row i's categories are
// genre[indptr[i] .. indptr[i+1]) with weights weights[wclass[...]]; weights holds the D
// distinct nonzero weight values. Invariant (checked by the caller): genres in [0, n_genres),
// wclass in [0, n_weights), no category repeated within a row, max_nnz >= every row's length.
struct ItemDist {
    const std::int64_t* indptr = nullptr;
    const std::int32_t* genre = nullptr;
    const std::int32_t* wclass = nullptr;
    const double* weights = nullptr;
    std::int64_t n_items = 0;
    std::int32_t n_genres = 0;
    std::int32_t n_weights = 0;
    std::int32_t max_nnz = 0;
};

struct RerankParams {
    std::int64_t k = 10;
    double lam = 0.5;
    double alpha = 0.01;
};

enum class RerankStatus : int { ok = 0, nan_score = 1, posinf_score = 2, bad_candidate = 3 };

// RerankError names the first bad input (lowest row, then lowest column), or status ok.
struct RerankError {
    RerankStatus status = RerankStatus::ok;
    std::int64_t row = -1;
    std::int64_t col = -1;
    std::int64_t value = 0;  // the bad candidate id for bad_candidate
};

namespace detail {

inline constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Candidate table index lists use 16-bit entries when the user's table fits, else 32-bit.
using Idx16 = std::uint16_t;
using Idx32 = std::uint32_t;

}  // namespace detail

}  // namespace embtab
