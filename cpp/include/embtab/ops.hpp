// embtab/ops.hpp: the batch helpers behind embtab.nn, free of torch and pybind11.
//
// - hashed_rows: the hashing-trick baseline, row = mix64(id, seed) mod m;
// - init_vectors: a new ID's initial embedding as a function of (seed, ID) only;
// - count-min sketch update/query for admission by occurrence count.
//
// Concurrency: every function here writes only its own outputs (and, for cms_add, the sketch
// it is given). hashed_rows, init_vectors and cms_query are safe to call concurrently on the
// same inputs; WARNING: cms_add is not thread-safe with any other call on the same sketch.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "embtab/hash.hpp"
#include "embtab/parallel.hpp"

namespace embtab {

// kOpsGrain is the number of IDs a parallel chunk of these ops handles.
inline constexpr std::size_t kOpsGrain = 4096;

// kUnitScale is 2^-53: (h >> 11) * kUnitScale is uniform on [0, 1) with 53 random bits.
inline constexpr double kUnitScale = 1.0 / 9007199254740992.0;

// hashing trick ////////////////////////////////////////////////////////////////////////////

// hashed_rows writes rows[i] = mix64(ids[i], seed) % m (plain modulo, so the Python mirror
// embtab._hashing is one line). Assumes m > 0 and n-element buffers; never throws except
// what parallel_for rethrows (nothing here throws).
inline void hashed_rows(const std::uint64_t* ids, std::size_t n, std::uint64_t m, std::uint64_t seed,
                        std::int64_t* rows, int num_threads) {
    parallel_for(n, num_threads, kOpsGrain, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) rows[i] = static_cast<std::int64_t>(mix64(ids[i], seed) % m);
    });
}

// per-ID initialisation //////////////////////////////////////////////////////////////////

// InitKind selects the distribution of init_vectors.
enum class InitKind : int { kNormal = 0, kUniform = 1 };

// init_one fills out[0, dim) with the initial vector of one ID. The generator is counter
// based: key = mix64(id, seed) and the j-th 64-bit draw is mix64(j, key), so the vector
// depends on (seed, id) only. kNormal: Box-Muller on draw pairs (2k, 2k+1),
// u1 = ((h >> 11) + 1)·2^-53 in (0, 1], u2 = (h >> 11)·2^-53 in [0, 1),
// z = sqrt(-2 ln u1)·(cos, sin)(2π u2), out = a + b·z (mean a, std b). kUniform: out = a +
// (b - a)·u with u = (mix64(j, key) >> 11)·2^-53. Computed in double, stored as T.
template <class T>
inline void init_one(std::uint64_t id, std::uint64_t seed, InitKind kind, double a, double b, T* out,
                     std::size_t dim) noexcept {
    const std::uint64_t key = mix64(id, seed);
    if (kind == InitKind::kUniform) {
        for (std::size_t j = 0; j < dim; ++j) {
            const double u = static_cast<double>(mix64(j, key) >> 11) * kUnitScale;
            out[j] = static_cast<T>(a + (b - a) * u);
        }
        return;
    }
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    for (std::size_t j = 0; j < dim; j += 2) {
        const double u1 = static_cast<double>((mix64(j, key) >> 11) + 1) * kUnitScale;
        const double u2 = static_cast<double>(mix64(j + 1, key) >> 11) * kUnitScale;
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double t = kTwoPi * u2;
        out[j] = static_cast<T>(a + b * r * std::cos(t));
        if (j + 1 < dim) out[j + 1] = static_cast<T>(a + b * r * std::sin(t));
    }
}

// init_vectors fills the row-major [n, dim] buffer `out` with init_one of each ids[i].
// Assumes `out` holds n·dim elements; never throws.
template <class T>
inline void init_vectors(const std::uint64_t* ids, std::size_t n, std::uint64_t seed, InitKind kind, double a,
                         double b, T* out, std::size_t dim, int num_threads) {
    parallel_for(n, num_threads, 256, [&](std::size_t s, std::size_t e) {
        for (std::size_t i = s; i < e; ++i) init_one(ids[i], seed, kind, a, b, out + i * dim, dim);
    });
}

// count-min sketch //////////////////////////////////////////////////////////////////////////
//
// The sketch is a row-major [depth, width] int64 array owned by the caller (a torch buffer,
// so it lands in state_dict). Row r hashes an ID to column mix64(id, seed + r) % width.
// Invariant: every counter is >= 0 and the estimate min_r counter[r][col_r(id)] is never
// below the true count of id; with width = ceil(e/ε) and depth = ceil(ln(1/δ)) it exceeds the
// true count by at most ε·N (N = total of all counts added) with probability >= 1 - δ
// (Cormode & Muthukrishnan 2005).

// cms_col is the column of `id` in sketch row r. Assumes width > 0.
inline std::size_t cms_col(std::uint64_t id, std::uint64_t seed, std::size_t r, std::size_t width) noexcept {
    return static_cast<std::size_t>(mix64(id, seed + r) % width);
}

// cms_query writes est[i] = the sketch's estimate of ids[i]'s count. Never throws.
inline void cms_query(const std::uint64_t* ids, std::size_t n, const std::int64_t* sketch, std::size_t depth,
                      std::size_t width, std::uint64_t seed, std::int64_t* est, int num_threads) {
    parallel_for(n, num_threads, kOpsGrain, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
            std::int64_t best = std::numeric_limits<std::int64_t>::max();
            for (std::size_t r = 0; r < depth; ++r) {
                const std::int64_t c = sketch[r * width + cms_col(ids[i], seed, r, width)];
                best = c < best ? c : best;
            }
            est[i] = depth == 0 ? 0 : best;
        }
    });
}

// cms_add adds `delta` (+1 to count a sighting, -1 to undo one) for every ids[i], in order,
// serially. Assumes a -1 is only ever used to undo an earlier +1 of the same ID (so counters
// stay >= 0). Never throws.
inline void cms_add(const std::uint64_t* ids, std::size_t n, std::int64_t* sketch, std::size_t depth,
                    std::size_t width, std::uint64_t seed, std::int64_t delta) noexcept {
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t r = 0; r < depth; ++r) sketch[r * width + cms_col(ids[i], seed, r, width)] += delta;
}

}  // namespace embtab
