// embtab/ops.hpp: the batch helpers behind embtab.nn, free of torch and pybind11.
//
// - hashed_rows: the hashing-trick baseline, row = mix64(id, seed) mod m;
// - init_vectors: a new ID's initial embedding as a function of (seed, ID) only;
// - count-min sketch update/query for admission by occurrence count;
// - pool_bags: the sum/mean pooling of many tables' bags into one output (the collections).
//
// Concurrency: every function here writes only its own outputs (and, for cms_add, the sketch
// it is given). hashed_rows, init_vectors and cms_query are safe to call concurrently on the
// same inputs; WARNING: cms_add is not thread-safe with any other call on the same sketch.
// pool_bags only reads the weights: safe to call concurrently with other readers of them, not
// with a fused step or a growth of the same tables.
#pragma once

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "embtab/cpu.hpp"
#include "embtab/hash.hpp"
#include "embtab/parallel.hpp"
#include "embtab/prefetch.hpp"
#include "embtab/vlog.hpp"

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

// NormalScratch holds init_one's per-thread work arrays for kNormal: the accepted pairs (u, v,
// s, then log s; dim / 2 of each, plus one) and a block of candidate pairs (cu, cv, cs).
struct NormalScratch {
    std::vector<double> u, v, s, log_s, cu, cv, cs;
};

// kNormalHalfScale is 2^-52: (h >> 11)·2^-52 - 1 is uniform on [-1, 1), exact.
inline constexpr double kNormalHalfScale = 2.0 * kUnitScale;

// normal_candidates writes candidate pairs t0 .. t0 + k - 1 of the polar method for `key` (see
// init_one): cu[i], cv[i] from draws 2t and 2t + 1, and cs[i] = cu[i]² + cv[i]². No branch and
// no dependence between pairs (the baseline form; normal_block_avx512 is its AVX-512 form, with
// the compaction of init_one folded in). The same IEEE operations in every form, so the same
// bits at every ISA level.
__attribute__((always_inline)) inline void normal_candidates(std::uint64_t key, std::uint64_t t0, std::size_t k,
                                                             double* __restrict cu, double* __restrict cv,
                                                             double* __restrict cs) noexcept {
    for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t t = t0 + i;
        const double u = static_cast<double>(mix64(2 * t, key) >> 11) * kNormalHalfScale - 1.0;
        const double v = static_cast<double>(mix64(2 * t + 1, key) >> 11) * kNormalHalfScale - 1.0;
        cu[i] = u;
        cv[i] = v;
        cs[i] = u * u + v * v;
    }
}

// noipa for the reason given at pool_chunk_base.
__attribute__((noipa)) inline void normal_candidates_base(std::uint64_t key, std::uint64_t t0, std::size_t k,
                                                          double* cu, double* cv, double* cs) noexcept {
    normal_candidates(key, t0, k, cu, cv, cs);
}

#if defined(EMBTAB_X86_INTRIN)
// mix64_x8 is mix64 on 8 lanes, `add` holding 0x9E3779B97F4A7C15 * (seed + 1) and m1, m2 the
// multipliers (see hash.hpp).
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) inline __m512i mix64_x8(__m512i x, __m512i add,
                                                                                          __m512i m1, __m512i m2) noexcept {
    x = _mm512_add_epi64(x, add);
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)), m1);
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)), m2);
    return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// normal_block_avx512 draws candidate pairs t0 .. t0 + k - 1 (k a multiple of 8) as
// normal_candidates does, 8 at a time, and appends the accepted ones (0 < s < 1) to U, V, S at
// `got` with compress stores, stopping after the 8 in which got reaches `pairs`; returns the new
// got, which may pass pairs by up to 7 (U, V, S have room for pairs + 8; the caller keeps the
// first `pairs`). The same operations as normal_candidates lane by lane (mix64's multiplies are
// exact modulo 2^64, the conversion of h >> 11 < 2^53 is exact, no contraction), so the pairs
// kept are the same bits as the other forms'.
__attribute__((target("avx512f,avx512dq,avx512vl"), noipa)) inline std::size_t normal_block_avx512(
    std::uint64_t key, std::uint64_t t0, std::size_t k, double* U, double* V, double* S, std::size_t got,
    std::size_t pairs) noexcept {
    const __m512i add = _mm512_set1_epi64(static_cast<long long>(0x9E3779B97F4A7C15ULL * (key + 1)));
    const __m512i m1 = _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ULL));
    const __m512i m2 = _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBULL));
    const __m512d scale = _mm512_set1_pd(kNormalHalfScale);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d zero = _mm512_setzero_pd();
    const __m512i lanes = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);  // 2t for t = t0 + lane
    for (std::size_t i = 0; i < k && got < pairs; i += 8) {
        const __m512i x0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(2 * (t0 + i))), lanes);
        const __m512i x1 = _mm512_add_epi64(x0, _mm512_set1_epi64(1));
        const __m512d u = _mm512_sub_pd(_mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(mix64_x8(x0, add, m1, m2), 11)), scale), one);
        const __m512d v = _mm512_sub_pd(_mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(mix64_x8(x1, add, m1, m2), 11)), scale), one);
        const __m512d s = _mm512_add_pd(_mm512_mul_pd(u, u), _mm512_mul_pd(v, v));
        const __mmask8 ok = _mm512_cmp_pd_mask(s, zero, _CMP_GT_OQ) & _mm512_cmp_pd_mask(s, one, _CMP_LT_OQ);
        _mm512_mask_compressstoreu_pd(U + got, ok, u);
        _mm512_mask_compressstoreu_pd(V + got, ok, v);
        _mm512_mask_compressstoreu_pd(S + got, ok, s);
        got += static_cast<std::size_t>(__builtin_popcount(static_cast<unsigned>(ok)));
    }
    return got;
}

// polar_factors_avx512 sets L[k] = sqrt(-2 L[k] / S[k]) for k < n, 8 lanes at a time (the
// division and square root correctly rounded, as in the baseline loop of init_one).
__attribute__((target("avx512f,avx512dq,avx512vl"), noipa)) inline void polar_factors_avx512(double* L, const double* S,
                                                                                             std::size_t n) noexcept {
    const __m512d m2 = _mm512_set1_pd(-2.0);
    for (std::size_t k = 0; k < n; k += 8) {
        const __mmask8 m = n - k >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (n - k)) - 1);
        const __m512d l = _mm512_maskz_loadu_pd(m, L + k);
        const __m512d sv = _mm512_mask_loadu_pd(_mm512_set1_pd(1.0), m, S + k);
        _mm512_mask_storeu_pd(L + k, m, _mm512_sqrt_pd(_mm512_div_pd(_mm512_mul_pd(m2, l), sv)));
    }
}
#endif

// init_one fills out[0, dim) with the initial vector of one ID. The generator is counter
// based: key = mix64(id, seed) and the j-th 64-bit draw is mix64(j, key), so the vector
// depends on (seed, id) only. kNormal: Marsaglia's polar method on draw pairs (2t, 2t + 1),
// t = 0, 1, ...: u, v = (h >> 11)·2^-52 - 1 (exact, in [-1, 1)), s = u² + v², the pair
// rejected unless 0 < s < 1 (a fraction 1 - π/4 is); the k-th accepted pair gives entries 2k
// and 2k + 1: z = (u, v)·sqrt(-2 ln s / s), out = a + b·z (mean a, std b), |z| <=
// sqrt(-2 ln 2^-104) < 12.01. ln is vlog_batch (the same bits on every ISA level), called once
// per ID on all its pairs; no sin or cos, which made the earlier Box-Muller form 3-4x slower.
// The candidate pairs are drawn in blocks, the first one large enough for nearly every ID, and
// the accepted ones kept in order: on AVX-512, 8 at a time with compress stores
// (normal_block_avx512, and the factors sqrt(-2 ln s / s) 8 at a time: polar_factors_avx512);
// otherwise normal_candidates, then a branch-free compaction. The pairs kept, and so the
// values, are the same whatever the form and the block sizes (tests/test_nn.py checks every
// ISA level against a NumPy reference of this definition). In bench_newids' first pass the
// initial vectors of 85,984 IDs x 64 float32 took 15.5 ms instead of 25 on one thread of an
// AVX-512 machine (bench/README.md, "New IDs", "Initial vectors 8 at a time").
// kUniform: out = a + (b - a)·u with u = (mix64(j, key) >> 11)·2^-53. Computed in double,
// stored as T.
template <class T>
inline void init_one(std::uint64_t id, std::uint64_t seed, InitKind kind, double a, double b, T* out,
                     std::size_t dim, NormalScratch& scratch) {
    const std::uint64_t key = mix64(id, seed);
    if (kind == InitKind::kUniform) {
        for (std::size_t j = 0; j < dim; ++j) {
            const double u = static_cast<double>(mix64(j, key) >> 11) * kUnitScale;
            out[j] = static_cast<T>(a + (b - a) * u);
        }
        return;
    }
    const std::size_t pairs = (dim + 1) / 2;
    // first block: about 4/3 of the pairs needed (1 / (π/4) = 1.27 on average) and 8 more,
    // rounded up to 8, enough for nearly every ID; the rare ID that needs more draws blocks of
    // kLaterBlock
    const std::size_t first = (pairs + pairs / 3 + 8 + 7) / 8 * 8;
    constexpr std::size_t kLaterBlock = 16;
    scratch.u.resize(pairs + 8);
    scratch.v.resize(pairs + 8);
    scratch.s.resize(pairs + 8);
    scratch.log_s.resize(pairs);
    const std::size_t room = std::max(first, kLaterBlock);
    if (scratch.cu.size() < room) {
        scratch.cu.resize(room);
        scratch.cv.resize(room);
        scratch.cs.resize(room);
    }
    double* U = scratch.u.data();
    double* V = scratch.v.data();
    double* S = scratch.s.data();
    double* cu = scratch.cu.data();
    double* cv = scratch.cv.data();
    double* cs = scratch.cs.data();
#if defined(EMBTAB_X86_INTRIN)
    const bool avx512 = detail::use_avx512();
#endif
    std::size_t got = 0;
    for (std::uint64_t t = 0; got < pairs;) {
        const std::size_t k = t == 0 ? first : kLaterBlock;
#if defined(EMBTAB_X86_INTRIN)
        if (avx512) {
            got = std::min(pairs, normal_block_avx512(key, t, k, U, V, S, got, pairs));
            t += k;
            continue;
        }
#endif
        // (an AVX2 form would not vectorise: AVX2 has no 64-bit multiply nor 64-bit conversion)
        normal_candidates_base(key, t, k, cu, cv, cs);
        // Branch-free: a rejected pair is overwritten by the next (a branch here is
        // mispredicted on a fifth of the pairs).
        for (std::size_t i = 0; i < k && got < pairs; ++i) {
            U[got] = cu[i];
            V[got] = cv[i];
            S[got] = cs[i];
            got += static_cast<std::size_t>((cs[i] > 0.0) & (cs[i] < 1.0));
        }
        t += k;
    }
    double* L = scratch.log_s.data();
    vlog_batch(S, L, pairs);
    // f = sqrt(-2 ln s / s) in separate passes, so that the division and the square root run
    // two lanes at a time (std::sqrt in a loop does not vectorise; _mm_sqrt_pd is the same
    // correctly rounded result).
#if defined(EMBTAB_X86_INTRIN)
    if (avx512) {
        polar_factors_avx512(L, S, pairs);
    } else
#endif
    {
        for (std::size_t k = 0; k < pairs; ++k) L[k] = -2.0 * L[k] / S[k];
        std::size_t k = 0;
#if defined(__SSE2__)
        for (; k + 2 <= pairs; k += 2) _mm_storeu_pd(L + k, _mm_sqrt_pd(_mm_loadu_pd(L + k)));
#endif
        for (; k < pairs; ++k) L[k] = std::sqrt(L[k]);
    }
    const std::size_t full = dim / 2;
    for (std::size_t q = 0; q < full; ++q) {
        out[2 * q] = static_cast<T>(a + b * (U[q] * L[q]));
        out[2 * q + 1] = static_cast<T>(a + b * (V[q] * L[q]));
    }
    if (dim % 2 == 1) out[dim - 1] = static_cast<T>(a + b * (U[full] * L[full]));
}

// init_vectors fills the row-major [n, dim] buffer `out` with init_one of each ids[i].
// Assumes `out` holds n·dim elements; throws only std::bad_alloc.
template <class T>
inline void init_vectors(const std::uint64_t* ids, std::size_t n, std::uint64_t seed, InitKind kind, double a,
                         double b, T* out, std::size_t dim, int num_threads) {
    parallel_for(n, num_threads, 256, [&](std::size_t s, std::size_t e) {
        NormalScratch scratch;
        for (std::size_t i = s; i < e; ++i) init_one(ids[i], seed, kind, a, b, out + i * dim, dim, scratch);
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

// pooling ////////////////////////////////////////////////////////////////////////////////////

// A chunk of pool_bags covers pool_grain(out_bytes) bags, out_bytes being the bytes one bag
// writes over all features: about kPoolChunkBytes of output per chunk (a collection's
// features write side by side into one output row, so a chunk fills its rows while they are
// in cache), at least kPoolGrainMin and at most kPoolGrainMax bags.
inline constexpr std::size_t kPoolChunkBytes = std::size_t{128} << 10;
inline constexpr std::size_t kPoolGrainMin = 32;
inline constexpr std::size_t kPoolGrainMax = 512;

// kPoolTasksPerThread: tasks per thread pool_bags aims at when it splits features into groups.
inline constexpr std::size_t kPoolTasksPerThread = 4;

inline std::size_t pool_grain(std::size_t out_bytes) noexcept {
    return std::clamp(kPoolChunkBytes / std::max<std::size_t>(out_bytes, 1), kPoolGrainMin, kPoolGrainMax);
}

// PoolFeature is one feature's bags for pool_bags: bag b is rows[offsets[b], offsets[b + 1])
// of weight ([num_rows, d], row-major); its vector goes to out + b * ld (ld >= d).
template <class T>
struct PoolFeature {
    const T* weight = nullptr;
    std::size_t num_rows = 0;
    std::size_t d = 0;
    const std::int64_t* rows = nullptr;
    const std::int64_t* offsets = nullptr;  // num_bags + 1 entries, non-decreasing
    std::size_t num_bags = 0;
    const T* psw = nullptr;  // per entry of rows (indexed like rows), or null
    bool mean = false;
    std::int64_t skip_row = -1;  // entries reading this row are left out (and out of mean's count)
    T* out = nullptr;
    std::size_t ld = 0;
};

// PoolBad locates an out-of-range row for pool_bags' caller to report.
struct PoolBad {
    std::size_t feature = static_cast<std::size_t>(-1);
    std::size_t entry = 0;
};

// kPoolBlock is how many columns of a bag pool_chunk sums at a time, in a local array the
// compiler keeps in vector registers (128 bytes: 8 SSE2, 4 AVX2 or 2 AVX-512 registers).
template <class T>
inline constexpr std::size_t kPoolBlock = 128 / sizeof(T);

// pool_block adds the entries [e0, e1) of rows into acc[0, jn) for columns [j0, j0 + jn) of
// weight (d columns; JN: jn when known at compile time, 0 otherwise), in entry order from 0,
// times psw[i] when psw is set; skip_row entries left out. The rows were range-checked.
//
// acc starts as 0 + the first kept entry (the same bits as a sum from 0, NaN sign and payload
// aside, as pool_bags documents). A loop that zeroes acc first compiled to `rep stos`, and the
// adds' loads of acc then waited for those stores (bench/README.md, "Pooling in vectors,
// without a zeroing loop"). The widths known at compile time (a block of 128 bytes, half of
// one) sum in 32-byte vectors of GCC's vector extension: with a plain loop over a 16-float
// block GCC unrolled the loop before vectorising it, and the 64-byte rows of d = 16 float32
// (a collection's usual width) were summed one float at a time. Each lane adds in entry order
// as the scalar loop does, so the bits are the same (NaN sign and payload aside: which of two
// NaNs an addition returns depends on its operand order).
template <class T>
struct PoolVecOf;
template <>
struct PoolVecOf<float> {
    typedef float type __attribute__((vector_size(32)));
};
template <>
struct PoolVecOf<double> {
    typedef double type __attribute__((vector_size(32)));
};
template <class T>
using PoolVec = typename PoolVecOf<T>::type;

template <class T>
__attribute__((always_inline)) inline void pool_load(PoolVec<T>& v, const T* p) noexcept {
    std::memcpy(&v, p, sizeof(v));
}

template <class T, std::size_t JN>
__attribute__((always_inline)) inline void pool_block(const T* __restrict weight, std::size_t d,
                                                      const std::int64_t* __restrict rows, const T* __restrict psw,
                                                      std::int64_t skip_row, std::int64_t e0, std::int64_t e1,
                                                      std::size_t j0, std::size_t jn, T* __restrict acc) noexcept {
    std::int64_t i0 = e0;
    while (i0 < e1 && rows[i0] == skip_row) ++i0;
    if constexpr (JN != 0 && JN * sizeof(T) % 32 == 0) {
        using V = PoolVec<T>;
        constexpr std::size_t L = 32 / sizeof(T), NV = JN / L;
        V a[NV];
        V x;
        if (i0 == e1) {
            for (std::size_t k = 0; k < NV; ++k) a[k] = V{};
        } else {
            const T* __restrict w = weight + static_cast<std::size_t>(rows[i0]) * d + j0;
            const T s0 = psw != nullptr ? psw[i0] : T(1);
            for (std::size_t k = 0; k < NV; ++k) {
                pool_load<T>(x, w + k * L);
                a[k] = psw != nullptr ? V{} + s0 * x : V{} + x;
            }
            for (std::int64_t i = i0 + 1; i < e1; ++i) {
                const std::int64_t r = rows[i];
                if (r == skip_row) continue;
                const T* __restrict wi = weight + static_cast<std::size_t>(r) * d + j0;
                if (psw != nullptr) {
                    const T s = psw[i];
                    for (std::size_t k = 0; k < NV; ++k) {
                        pool_load<T>(x, wi + k * L);
                        a[k] = a[k] + s * x;
                    }
                } else {
                    for (std::size_t k = 0; k < NV; ++k) {
                        pool_load<T>(x, wi + k * L);
                        a[k] = a[k] + x;
                    }
                }
            }
        }
        std::memcpy(acc, a, sizeof(a));
    } else {
        const std::size_t n_cols = JN != 0 ? JN : jn;
        if (i0 == e1) {
            for (std::size_t j = 0; j < n_cols; ++j) acc[j] = T(0);
            return;
        }
        {
            const T* __restrict w = weight + static_cast<std::size_t>(rows[i0]) * d + j0;
            if (psw != nullptr) {
                const T s = psw[i0];
                for (std::size_t j = 0; j < n_cols; ++j) acc[j] = T(0) + s * w[j];
            } else {
                for (std::size_t j = 0; j < n_cols; ++j) acc[j] = T(0) + w[j];
            }
        }
        for (std::int64_t i = i0 + 1; i < e1; ++i) {
            const std::int64_t r = rows[i];
            if (r == skip_row) continue;
            const T* __restrict w = weight + static_cast<std::size_t>(r) * d + j0;
            if (psw != nullptr) {
                const T s = psw[i];
                for (std::size_t j = 0; j < n_cols; ++j) acc[j] = acc[j] + s * w[j];
            } else {
                for (std::size_t j = 0; j < n_cols; ++j) acc[j] = acc[j] + w[j];
            }
        }
    }
}

// pool_chunk runs pool_bags on bags [b0, b1) of feature f: each bag's columns in blocks of
// kPoolBlock. Every entry is range-checked when its row is prefetched, `ahead` entries before it
// is read, so an entry is always checked before it is summed. Returns false (bad set) at an
// out-of-range row; the bags before it may then be written. Inlined into its ISA-level forms
// below (pool_chunk_base, pool_chunk_avx2, pool_chunk_avx512).
template <class T>
__attribute__((always_inline)) inline bool pool_chunk(const PoolFeature<T>& p, std::size_t f, std::size_t b0,
                                                      std::size_t b1, PoolBad& bad) noexcept {
    constexpr std::size_t B = kPoolBlock<T>;
    const std::int64_t e_begin = p.offsets[b0], e_end = p.offsets[b1];
    const auto ahead = static_cast<std::int64_t>(rows_ahead(p.d * sizeof(T)));  // prefetch.hpp
    // check_and_prefetch: entries [i0, i1) in range (skip_row aside), their rows prefetched
    auto check_and_prefetch = [&](std::int64_t i0, std::int64_t i1) noexcept {
        for (std::int64_t i = i0; i < i1; ++i) {
            const std::int64_t r = p.rows[i];
            if (r == p.skip_row) continue;
            if (r < 0 || static_cast<std::size_t>(r) >= p.num_rows) {
                bad = PoolBad{f, static_cast<std::size_t>(i)};
                return false;
            }
            prefetch_row_read(p.weight + static_cast<std::size_t>(r) * p.d, p.d);
        }
        return true;
    };
    if (!check_and_prefetch(e_begin, std::min(e_end, e_begin + ahead))) return false;
    alignas(64) T acc[B];
    for (std::size_t b = b0; b < b1; ++b) {
        const std::int64_t e0 = p.offsets[b], e1 = p.offsets[b + 1];
        if (!check_and_prefetch(e0 + ahead, std::min(e_end, e1 + ahead))) return false;
        T scale = T(1);
        if (p.mean) {
            std::size_t kept = 0;
            for (std::int64_t i = e0; i < e1; ++i) kept += p.rows[i] != p.skip_row;
            scale = kept > 0 ? T(1) / static_cast<T>(kept) : T(1);
        }
        T* __restrict o = p.out + b * p.ld;
        for (std::size_t j0 = 0; j0 < p.d; j0 += B) {
            const std::size_t jn = std::min(B, p.d - j0);
            // widths known at compile time (a full block, half of one) keep acc in registers
            if (jn == B) {
                pool_block<T, B>(p.weight, p.d, p.rows, p.psw, p.skip_row, e0, e1, j0, B, acc);
                for (std::size_t j = 0; j < B; ++j) o[j0 + j] = acc[j] * scale;
            } else if (jn == B / 2) {
                pool_block<T, B / 2>(p.weight, p.d, p.rows, p.psw, p.skip_row, e0, e1, j0, B / 2, acc);
                for (std::size_t j = 0; j < B / 2; ++j) o[j0 + j] = acc[j] * scale;
            } else {
                pool_block<T, 0>(p.weight, p.d, p.rows, p.psw, p.skip_row, e0, e1, j0, jn, acc);
                for (std::size_t j = 0; j < jn; ++j) o[j0 + j] = acc[j] * scale;
            }
        }
    }
    return true;
}

// The three forms are noipa: no clone of them (GCC's .isra/.constprop copies are local symbols,
// which a stripped wheel drops, so .ci/check_isa.py could not name their code).
template <class T>
__attribute__((noipa)) bool pool_chunk_base(const PoolFeature<T>& p, std::size_t f, std::size_t b0, std::size_t b1,
                                               PoolBad& bad) noexcept {
    return pool_chunk<T>(p, f, b0, b1, bad);
}

#if defined(EMBTAB_X86_INTRIN)
template <class T>
__attribute__((target("avx2"), noipa)) bool pool_chunk_avx2(const PoolFeature<T>& p, std::size_t f, std::size_t b0,
                                                     std::size_t b1, PoolBad& bad) noexcept {
    return pool_chunk<T>(p, f, b0, b1, bad);
}

template <class T>
__attribute__((target("avx512f,avx512dq,avx512vl"), noipa)) bool pool_chunk_avx512(const PoolFeature<T>& p, std::size_t f,
                                                                          std::size_t b0, std::size_t b1,
                                                                          PoolBad& bad) noexcept {
    return pool_chunk<T>(p, f, b0, b1, bad);
}
#endif

// copy_row copies a row of d values from the staging buffer into pool_bags' output. The common
// widths (16 to 256 bytes) copy with a fixed size, which compiles to a few vector moves: a
// 26-feature step of 8,192 bags copies 213k rows of 64 bytes, and a call into the C library's
// memmove for each was most of the copy's time. With `stream` (an output larger than the
// caches, see kPoolStreamBytes) and the row 16-byte aligned, the row is written with
// non-temporal stores, which skip reading each output line before writing it. The rows of a
// task are copied in output order, so a line is written whole when its slices are streamed
// (a collection's 64-byte slices of float32 d = 16 fill whole lines); a line shared with a
// plain-copied slice, or with another task's bags, is only slower, as stores stay coherent
// (bench/README.md, "Batched tables"). The values are the same either way.
template <std::size_t N>
inline void stream_bytes(const char* src, char* dst) noexcept {
#if defined(__SSE2__)
    for (std::size_t k = 0; k < N; k += 16)
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + k), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
#else
    std::memcpy(dst, src, N);
#endif
}

template <class T>
inline void copy_row(const T* src, std::size_t d, T* dst, bool stream) noexcept {
    const std::size_t n = d * sizeof(T);
    const char* s = reinterpret_cast<const char*>(src);
    char* o = reinterpret_cast<char*>(dst);
    if (stream && (reinterpret_cast<std::uintptr_t>(dst) & 15) == 0) {
        switch (n) {
            case 16: stream_bytes<16>(s, o); return;
            case 32: stream_bytes<32>(s, o); return;
            case 64: stream_bytes<64>(s, o); return;
            case 128: stream_bytes<128>(s, o); return;
            case 256: stream_bytes<256>(s, o); return;
            default:
                if (n % 16 == 0) {
                    for (std::size_t k = 0; k < n; k += 16) stream_bytes<16>(s + k, o + k);
                    return;
                }
        }
    }
    switch (n) {
        case 16: std::memcpy(o, s, 16); return;
        case 32: std::memcpy(o, s, 32); return;
        case 64: std::memcpy(o, s, 64); return;
        case 128: std::memcpy(o, s, 128); return;
        case 256: std::memcpy(o, s, 256); return;
        default: std::copy_n(src, d, dst);
    }
}

// An output of more than kPoolStreamBytes is copied out of the staging buffer with
// non-temporal stores (copy_row): it would not stay in a core's L2 (1-2 MiB on current x86
// servers) anyway, while a smaller output is left in cache for the layer that reads it next.
inline constexpr std::size_t kPoolStreamBytes = std::size_t{4} << 20;

// pool_stage returns this thread's staging buffer for pool_bags, with room for `grain` bags of
// each of the n features, or null (pool straight into the output) if it cannot be had.
template <class T>
T* pool_stage(std::size_t grain, const PoolFeature<T>* feats, std::size_t n) noexcept {
    thread_local std::vector<T> stage;
    std::size_t width = 0;
    for (std::size_t f = 0; f < n; ++f) width += feats[f].d;
    try {
        if (stage.size() < grain * width) stage.resize(grain * width);
    } catch (...) {
        return nullptr;
    }
    return stage.data();
}

// pool_bags writes, for every feature and bag, the sum over the bag's entries (in entry order,
// in T, starting from 0) of psw[i] * weight[rows[i]] (or weight[rows[i]] without psw), entries
// reading skip_row left out; with `mean`, the sum times 1 / (entries kept) (torch's CPU
// embedding_bag scales by the reciprocal), and 0 for a bag with none. Work is split into chunks
// of bags, each chunk pooling its bags of every feature in turn (features sharing one output
// row, as a collection's do, then fill that row while it is in cache; see pool_grain), or of
// each group of features when there are fewer chunks than threads, each task writing only its
// own bags, so the result is the same bits for any thread count and ISA level,
// NaN sign and payload excepted (which of two NaNs an addition returns depends on operand
// order, which the vector forms differ in). Only IEEE + and * are used: the same bits need
// -ffp-contract=off, which CMakeLists.txt sets (the target("avx512f") form could otherwise fuse
// them). Assumes the caller checked each feature's offsets (from 0 or more, non-decreasing, the
// last within rows). Never throws but for what parallel_for rethrows (nothing here throws).
// Returns the first entry (lowest feature, then entry) whose row is outside [0, num_rows),
// feature = SIZE_MAX when every row is in range; after a bad entry some bags may be left
// unwritten.
template <class T>
inline PoolBad pool_bags(const PoolFeature<T>* feats, std::size_t n_feats, int num_threads) {
    std::size_t max_bags = 0, out_bytes = 0;
    for (std::size_t f = 0; f < n_feats; ++f) {
        max_bags = std::max(max_bags, feats[f].num_bags);
        out_bytes += feats[f].d * sizeof(T);
    }
    const std::size_t grain = pool_grain(out_bytes);
    const bool stream = max_bags * out_bytes > kPoolStreamBytes;
    const std::size_t chunks = (max_bags + grain - 1) / grain;
    // Fewer chunks than threads (a small batch): each chunk's features are also split into
    // groups, one task per chunk and group, so that the threads still have work.
    const auto threads = static_cast<std::size_t>(resolve_threads(num_threads));
    std::size_t groups = 1;
    if (chunks > 0 && chunks < threads) groups = std::min(n_feats, kPoolTasksPerThread * ((threads + chunks - 1) / chunks));
    std::vector<PoolBad> bad(chunks * groups);
#if defined(EMBTAB_X86_INTRIN)
    const int level = detail::use_avx512() ? 2 : detail::use_avx2() ? 1 : 0;
#else
    const int level = 0;
#endif
    auto pool_one = [&](const PoolFeature<T>& p, std::size_t f, std::size_t b0, std::size_t b1, PoolBad& bad_t) {
#if defined(EMBTAB_X86_INTRIN)
        if (level == 2) return pool_chunk_avx512<T>(p, f, b0, b1, bad_t);
        if (level == 1) return pool_chunk_avx2<T>(p, f, b0, b1, bad_t);
#endif
        return pool_chunk_base<T>(p, f, b0, b1, bad_t);
    };
    parallel_for(chunks * groups, num_threads, 1, [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
            const std::size_t c = t / groups, g = t % groups;
            const std::size_t b0 = c * grain;
            const std::size_t f0 = n_feats * g / groups, f1 = n_feats * (g + 1) / groups;
            // A task of several features pools each one's bags into its own contiguous block of
            // a staging buffer, then copies them into the output bag by bag: the output's rows
            // are then written in order, where pooling straight into a row shared by several
            // features writes each feature's slice of every row in turn (bench/README.md,
            // "Batched tables"). The same sums, copied.
            T* stage = f1 - f0 > 1 ? pool_stage<T>(grain, feats + f0, f1 - f0) : nullptr;
            std::size_t at = 0;  // the feature's block in stage
            bool ok = true;
            for (std::size_t f = f0; f < f1 && ok; ++f) {
                const PoolFeature<T>& p = feats[f];
                if (b0 >= p.num_bags) continue;
                const std::size_t b1 = std::min(p.num_bags, b0 + grain);
                if (stage == nullptr) {
                    ok = pool_one(p, f, b0, b1, bad[t]);
                    continue;
                }
                PoolFeature<T> q = p;  // bags b0.. of p, written to stage + at, d apart
                q.offsets = p.offsets + b0;
                q.num_bags = b1 - b0;
                q.out = stage + at;
                q.ld = p.d;
                ok = pool_one(q, f, 0, b1 - b0, bad[t]);
                at += grain * p.d;
            }
            if (stage == nullptr || !ok) continue;  // after a bad entry nothing more is written
            const std::size_t b1max = std::min(max_bags, b0 + grain);
            for (std::size_t b = b0; b < b1max; ++b) {
                std::size_t a = 0;
                for (std::size_t f = f0; f < f1; ++f) {
                    const PoolFeature<T>& p = feats[f];
                    if (b0 >= p.num_bags) continue;
                    if (b < p.num_bags) copy_row(stage + a + (b - b0) * p.d, p.d, p.out + b * p.ld, stream);
                    a += grain * p.d;
                }
            }
#if defined(__SSE2__)
            if (stream) _mm_sfence();  // the streamed rows are visible before the task ends
#endif
        }
    });
    PoolBad first;
    for (const PoolBad& x : bad)
        if (x.feature < first.feature || (x.feature == first.feature && x.entry < first.entry)) first = x;
    return first;
}

}  // namespace embtab
