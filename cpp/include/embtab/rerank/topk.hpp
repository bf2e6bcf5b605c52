// embtab/rerank/topk.hpp: row-wise top-k of a score matrix (the reranker's first stage, and its lam == 0 case).
//
// Small k: a sorted insertion buffer behind a sampled threshold and a blocked SSE2 test; large
// k: a radix select on order-preserving integer keys. Equal values keep the lower index first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "embtab/cpu.hpp"
#include "embtab/parallel.hpp"

namespace embtab {

// config ////////////////////////////////////////////////////////////////////////////////////

// kTopkGrain: score rows per parallel_for chunk in topk.
inline constexpr std::size_t kTopkGrain = 16;
// kTopkHeapMaxK: topk keeps a sorted insertion buffer up to this k, a radix select above.
inline constexpr int kTopkHeapMaxK = 64;
// kTopkBlock: elements per block in the threshold scan (one branch per block).
inline constexpr int kTopkBlock = 64;

namespace detail {

// row kernels ///////////////////////////////////////////////////////////////////////////////

// block_hit says whether any of p[0..kTopkBlock) is > thr or NaN. SSE2 (the x86-64 baseline)
// where available; the scalar loop elsewhere (compilers keep it scalar under -ftrapping-math).
inline bool block_hit(const float* p, float thr) {
#if defined(__SSE2__)
    const __m128 t = _mm_set1_ps(thr);
    __m128 acc = _mm_setzero_ps();
    for (int j = 0; j < kTopkBlock; j += 4) {
        const __m128 x = _mm_loadu_ps(p + j);
        acc = _mm_or_ps(acc, _mm_or_ps(_mm_cmpgt_ps(x, t), _mm_cmpunord_ps(x, x)));
    }
    return _mm_movemask_ps(acc) != 0;
#else
    int hit = 0;
    for (int j = 0; j < kTopkBlock; ++j) hit |= (p[j] > thr) | (p[j] != p[j]);
    return hit != 0;
#endif
}
inline bool block_hit(const double* p, double thr) {
#if defined(__SSE2__)
    const __m128d t = _mm_set1_pd(thr);
    __m128d acc = _mm_setzero_pd();
    for (int j = 0; j < kTopkBlock; j += 2) {
        const __m128d x = _mm_loadu_pd(p + j);
        acc = _mm_or_pd(acc, _mm_or_pd(_mm_cmpgt_pd(x, t), _mm_cmpunord_pd(x, x)));
    }
    return _mm_movemask_pd(acc) != 0;
#else
    int hit = 0;
    for (int j = 0; j < kTopkBlock; ++j) hit |= (p[j] > thr) | (p[j] != p[j]);
    return hit != 0;
#endif
}

// topk_small_row writes the k best of row[0..n) (value desc, index asc) for small k through a
// sorted insertion buffer; returns false if the row holds a NaN. Assumes 1 <= k <= n. The scan
// starts from thr0, the k-th largest of a strided sample: the k-th largest of any subset is at
// most that of the row, so every element of the top k is >= thr0 and blocks entirely below it
// are skipped with one branch per block.
template <class S>
inline bool topk_small_row(const S* row, std::int64_t n, std::int64_t k, S* vals, std::int64_t* ids) {
    std::int64_t filled = 0;
    // insert x (index i, larger than every index already in) after any equal values
    auto insert = [&](S x, std::int64_t i) {
        std::int64_t pos = filled < k ? filled : k - 1;
        while (pos > 0 && vals[pos - 1] < x) {
            vals[pos] = vals[pos - 1];
            ids[pos] = ids[pos - 1];
            --pos;
        }
        vals[pos] = x;
        ids[pos] = i;
        if (filled < k) ++filled;
    };
    S thr = -std::numeric_limits<S>::infinity();
    const std::int64_t want = 16 * k;  // sample size: about 16 sampled elements per slot
    if (n >= 4 * want) {
        const std::int64_t stride = n / want;
        for (std::int64_t i = 0; i < n; i += stride) {
            const S x = row[i];
            if (x != x) return false;
            if (filled < k || x > vals[k - 1]) insert(x, i);
        }
        thr = vals[k - 1];
        filled = 0;
    }
    std::int64_t i = 0;
    // phase 1: buffer not full; take every x >= thr (thr0)
    for (; i < n && filled < k; ++i) {
        const S x = row[i];
        if (x != x) return false;
        if (x >= thr) insert(x, i);
    }
    thr = vals[k - 1];
    // phase 2: full; take x > k-th (a later index with an equal value ranks lower)
    for (; i + kTopkBlock <= n; i += kTopkBlock) {
        if (!block_hit(row + i, thr)) continue;
        for (int j = 0; j < kTopkBlock; ++j) {
            const S x = row[i + j];
            if (x != x) return false;
            if (x > thr) {
                insert(x, i + j);
                thr = vals[k - 1];
            }
        }
    }
    for (; i < n; ++i) {
        const S x = row[i];
        if (x != x) return false;
        if (x > thr) {
            insert(x, i);
            thr = vals[k - 1];
        }
    }
    return true;
}

// desc_key maps a score to an unsigned integer that sorts ascending as the score sorts
// descending (-0.0 and +0.0 map alike, as they compare equal); assumes x is not NaN.
inline std::uint32_t desc_key(float x) {
    std::uint32_t b;
    if (x == 0.0f) x = 0.0f;
    std::memcpy(&b, &x, sizeof b);
    const std::uint32_t asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ~asc;
}
inline std::uint64_t desc_key(double x) {
    std::uint64_t b;
    if (x == 0.0) x = 0.0;
    std::memcpy(&b, &x, sizeof b);
    const std::uint64_t asc = (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
    return ~asc;
}

template <class S>
struct KeyOf;
template <>
struct KeyOf<float> {
    using type = std::uint32_t;
};
template <>
struct KeyOf<double> {
    using type = std::uint64_t;
};

// TopkBuffers is one thread's scratch for topk_radix_row.
template <class S>
struct TopkBuffers {
    using UK = typename KeyOf<S>::type;
    std::vector<UK> keys, k1, k2;
    std::vector<std::uint32_t> i1, i2;
};

// topk_radix_row writes the k best of row[0..n) (value desc, index asc): each score becomes
// an integer key that sorts ascending as the score sorts descending; a histogram of the top 11
// key bits (and, when the boundary bucket is large, of the next 11) selects every element that
// can be in the top k, in index order; a stable LSD radix sort of those by key then keeps
// equal scores in index order. Branch-free apart from the bucket search. Returns false on NaN.
// Assumes 1 <= k <= n < 2^32.
template <class S>
inline bool topk_radix_row(const S* row, std::int64_t n, std::int64_t k, S* vals, std::int64_t* ids,
                           TopkBuffers<S>& tb) {
    using UK = typename KeyOf<S>::type;
    constexpr int kBits = static_cast<int>(sizeof(UK) * 8);
    constexpr int kHi = 11;
    constexpr std::size_t kBins = std::size_t{1} << kHi;
    tb.keys.resize(static_cast<std::size_t>(n));
    UK* key = tb.keys.data();
    std::uint32_t hist[kBins];
    std::memset(hist, 0, sizeof hist);
    int nan = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const S x = row[i];
        nan |= (x != x);
        const UK kk = desc_key(x == x ? x : S(0));
        key[i] = kk;
        ++hist[kk >> (kBits - kHi)];
    }
    if (nan) return false;
    // the boundary bucket b1: fewer than k elements lie in buckets below it
    std::int64_t before = 0;
    std::size_t b1 = 0;
    while (before + static_cast<std::int64_t>(hist[b1]) < k) before += hist[b1++];
    UK limit = static_cast<UK>((static_cast<UK>(b1) + 1) << (kBits - kHi)) - 1;  // keep key <= limit
    if (b1 + 1 == kBins) limit = ~UK{0};
    if (hist[b1] > static_cast<std::uint32_t>(2 * (k - before) + 64)) {
        // refine inside b1 on the next 11 bits
        std::memset(hist, 0, sizeof hist);
        const UK top = static_cast<UK>(b1);
        for (std::int64_t i = 0; i < n; ++i) {
            const UK kk = key[i];
            hist[(kk >> (kBits - 2 * kHi)) & (kBins - 1)] += (kk >> (kBits - kHi)) == top;
        }
        std::size_t b2 = 0;
        while (before + static_cast<std::int64_t>(hist[b2]) < k) before += hist[b2++];
        limit = static_cast<UK>((((static_cast<UK>(b1) << kHi) | static_cast<UK>(b2)) + 1) << (kBits - 2 * kHi)) - 1;
        if (b1 + 1 == kBins && b2 + 1 == kBins) limit = ~UK{0};
    }
    // collect, in index order, every element with key <= limit (at least k of them)
    tb.k1.resize(static_cast<std::size_t>(n));
    tb.i1.resize(static_cast<std::size_t>(n));
    UK* ka = tb.k1.data();
    std::uint32_t* ia = tb.i1.data();
    std::int64_t m = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        ka[m] = key[i];
        ia[m] = static_cast<std::uint32_t>(i);
        m += key[i] <= limit;
    }
    // stable LSD radix sort by key, 8 bits a pass, skipping passes where every digit is equal
    tb.k2.resize(static_cast<std::size_t>(m));
    tb.i2.resize(static_cast<std::size_t>(m));
    UK* kb = tb.k2.data();
    std::uint32_t* ib = tb.i2.data();
    for (int shift = 0; shift < kBits; shift += 8) {
        std::uint32_t cnt[256];
        std::memset(cnt, 0, sizeof cnt);
        for (std::int64_t i = 0; i < m; ++i) ++cnt[(ka[i] >> shift) & 0xff];
        if (cnt[(ka[0] >> shift) & 0xff] == static_cast<std::uint64_t>(m)) continue;
        std::uint32_t pos = 0;
        for (int d = 0; d < 256; ++d) {
            const std::uint32_t c = cnt[d];
            cnt[d] = pos;
            pos += c;
        }
        for (std::int64_t i = 0; i < m; ++i) {
            const std::uint32_t dst = cnt[(ka[i] >> shift) & 0xff]++;
            kb[dst] = ka[i];
            ib[dst] = ia[i];
        }
        std::swap(ka, kb);
        std::swap(ia, ib);
    }
    for (std::int64_t j = 0; j < k; ++j) {
        ids[j] = ia[j];
        vals[j] = row[ia[j]];
    }
    return true;
}

}  // namespace detail

// topk //////////////////////////////////////////////////////////////////////////////////////

// topk writes, for each of the U rows of scores [U, N] (row-major), its k largest values in
// descending order to vals [U, k] and their column indices to ids [U, k]; equal values keep the
// lower index first. Returns -1, or the lowest row holding a NaN (outputs then unspecified).
// Assumes 1 <= k <= N.
template <class S>
std::int64_t topk(const S* scores, std::int64_t U, std::int64_t N, std::int64_t k, S* vals,
                  std::int64_t* ids, int num_threads) {
    const std::size_t chunks = (static_cast<std::size_t>(U) + kTopkGrain - 1) / kTopkGrain;
    std::vector<std::int64_t> bad(chunks, -1);
    parallel_for(static_cast<std::size_t>(U), num_threads, kTopkGrain, [&](std::size_t b, std::size_t e) {
        detail::TopkBuffers<S> tb;
        for (std::size_t u = b; u < e; ++u) {
            const S* row = scores + static_cast<std::int64_t>(u) * N;
            S* v = vals + static_cast<std::int64_t>(u) * k;
            std::int64_t* ix = ids + static_cast<std::int64_t>(u) * k;
            const bool ok = k <= kTopkHeapMaxK ? detail::topk_small_row(row, N, k, v, ix)
                                               : detail::topk_radix_row(row, N, k, v, ix, tb);
            if (!ok) {
                bad[b / kTopkGrain] = static_cast<std::int64_t>(u);
                return;
            }
        }
    });
    for (std::int64_t r : bad)
        if (r >= 0) return r;
    return -1;
}

}  // namespace embtab
