// embtab/rerank.hpp: calibrated top-k reranking (Steck, RecSys 2018) and a batched top-k.
//
// The objective. For one user with target distribution p over G categories and C candidates
// with scores s_c and category distributions w_c, the greedy builds a list L one item at a
// time; at step t (|L| = t) it adds the unpicked candidate c that maximises
//
//     F(L + c) = (1 - lam) * sum_{i in L+c} s_i  -  lam * KL(p || q~(L + c)),
//     q(L)     = mean of w_i over i in L,     q~ = (1 - alpha) * q + alpha * p,
//     KL(p||r) = sum_{g : p_g > 0} p_g * ln(p_g / r_g)          (natural log; p_g = 0 adds 0).
//
// How it is computed. Only the categories of c change between F(L + c) and the value shared
// by every candidate at this step. With W_g the summed weight of category g in L and
// o_g = (1-alpha) W_g + alpha p_g (t+1) (the list's smoothed mass at size t+1, times t+1),
//
//     F(L + c) = const_t + (1-lam) s_c + sum_{g in c} lam p_g ln(1 + (1-alpha) w_cg / o_g).
//
// Item weights take few distinct values (1, 1/2, 1/3 for items with 1-3 categories), so each
// step fills a small table T[e] = lam p_g ln(1 + r), r = (1-alpha) w_d * (1 / o_g) (one
// division per category; within 2 ulp of the exact ratio), one entry per (category g, distinct
// weight w_d), and each candidate holds a fixed-width list of table slots (padding points at
// T[0] = 0; up to 4 slots pack into one 8-byte load). In a batch the slots are precomputed per
// item (ItemKeys; a candidate's are copied when the scan first reaches it) and T is one dense
// weight-major block whose ratios and logs are one vector pass (ratio_log_block); a single
// call with few users compacts the keys per user instead. A batch also prefetches the next
// user's rows, a slice per step.
// Each step computes the candidates' values (gathers and adds), then the first maximum. When a
// row's scores are non-increasing (a first-stage top-C returns them so), the scan goes in
// chunks and stops once no later candidate can reach the best even with the largest possible
// table sum: by weight pattern (pattern_bound: an item with m categories of weight w_d adds at
// most the m largest entries of that weight) or, failing that, by the largest entries per
// category (T >= 0; either bound is exact up to a 1e-12 relative slack that covers rounding).
// Scores are read as double (float32 widens exactly); there is no fast-math and no float32
// arithmetic, and the result does not depend on which scan ran. The table's logs ln(1 + r) are
// embtab's vlog (vlog.hpp: fdlibm's algorithm, within 1 ulp of the C library's); the vector
// code runs 8 lanes (AVX-512), 4 (AVX2) or the baseline ISA, chosen at run time, with the same
// bits on every path (tests cap the dispatch to check it); the rare overflow and alpha == 0
// forms use std::log.
//
// Special values (the contract the Python layer documents):
//   * lam == 0: plain top-k by score, ties to the lower candidate index.
//   * scores of -inf: such a candidate is picked only once every finite-score candidate is in
//     the list; among them the greedy uses the KL term alone (their score term is dropped).
//   * NaN or +inf scores, candidate ids outside [0, n_items): a RerankError (no exception).
//   * alpha == 0 (lam > 0): while some category with p_g > 0 is absent from the list, KL is
//     +inf; a candidate whose addition covers every such category beats one that does not
//     (the objective is -inf otherwise); if none does, every value is -inf and the lowest
//     unpicked index wins, as ties do.
//
// Concurrency: every function here is a pure function of its arguments; outputs are written
// per user, so results do not depend on num_threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EMBTAB_X86_INTRIN 1
#endif

#include "embtab/hash.hpp"
#include "embtab/parallel.hpp"
#include "embtab/vlog.hpp"

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
// kTopkGrain: score rows per parallel_for chunk in topk.
inline constexpr std::size_t kTopkGrain = 16;
// kTopkHeapMaxK: topk keeps a sorted insertion buffer up to this k, a radix select above.
inline constexpr int kTopkHeapMaxK = 64;
// kTopkBlock: elements per block in the threshold scan (one branch per block).
inline constexpr int kTopkBlock = 64;

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

// Scratch holds one thread's per-user work arrays; sized once per chunk, reused per user.
struct Scratch {
    std::vector<double> a;           // [C] working score term (1-lam) s_c; -inf = unavailable
    std::vector<double> v;           // [C] candidate values of one step
    std::vector<double> a_head;      // [C / kSortedChunk] score terms of each chunk's first candidate
    std::vector<std::uint32_t> genre_max_slot;  // [G] slot of the genre's largest-weight entry
    std::vector<double> genre_max_w;   // [G] that weight
    std::vector<double> top;         // the width largest of gmax
    std::vector<std::uint8_t> picked;  // [C]
    std::vector<std::uint32_t> idx;  // [C * width] table indices (0 = the zero entry)
    std::vector<std::uint16_t> idx16;
    std::vector<double> table;       // [E + 1]
    std::vector<double> cov;         // [E + 1] alpha == 0: 1 if the entry's genre is uncovered
    std::vector<std::uint32_t> entry_slot;  // [E] the entry's slot in table
    std::vector<std::int32_t> entry_genre;  // [E]
    std::vector<double> entry_cw;    // [E] (1 - alpha) * w_d
    std::vector<double> entry_lp;    // [E] lam * p_g
    std::vector<double> entry_w;     // [E] w_d
    std::vector<double> ratio;       // [E] 1 + (1 - alpha) w_d / o_g of one step, then its log
    // The (g, d) key -> local slot map of the per-user tables: dense [G * D] arrays when G * D
    // is at most kDenseKeyMax, else a hash table of 2 * C * width (or more) slots, so that
    // memory does not grow with D. A slot belongs to the current user when its stamp matches.
    std::vector<std::int32_t> stamp;  // [G * D] or [hash slots] user stamp of the slot
    std::vector<std::int32_t> local;  // the same: local entry of the slot's key
    std::vector<std::uint64_t> hkey;  // [hash slots] the slot's key (hash form only)
    std::vector<std::int32_t> used_genres;
    std::vector<std::uint8_t> genre_used;  // [G]
    std::vector<double> W;           // [G] summed weight in the list
    std::vector<double> den;         // [G]
    std::vector<double> inv;         // [G] 1 / den (per-user tables)
    std::vector<std::uint32_t> bound_slots;  // T slots of each genre's largest entry (the scan bound)
    std::vector<double> lp;          // [G4] keyed: lam * p_g (0 in the padding)
    std::vector<double> p4;          // [G4] keyed: p_g
    std::vector<double> ap;          // [G4] keyed: alpha * p_g
    std::vector<double> cwd;         // [D] keyed: (1 - alpha) * w_d
    // The prefetch plan: in a batch, the cache lines of the next user's rows still to prefetch
    // (next .. end, line numbers) and how many per greedy step; n rows in use (see prefetch_step).
    std::uintptr_t pf_next[3] = {0, 0, 0}, pf_end[3] = {0, 0, 0}, pf_step[3] = {0, 0, 0};
    int pf_n = 0;
};

// prefetch_plan adds the lines holding p[0 .. bytes) to sc's prefetch plan (nothing when bytes
// is 0), in `steps` slices (one per greedy step; steps >= 1).
inline void prefetch_plan(Scratch& sc, const void* p, std::size_t bytes, std::int64_t steps) {
    if (bytes == 0) return;
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    const int r = sc.pf_n++;
    sc.pf_next[r] = a >> 6;
    sc.pf_end[r] = ((a + bytes - 1) >> 6) + 1;
    sc.pf_step[r] = (sc.pf_end[r] - sc.pf_next[r] + static_cast<std::uintptr_t>(steps) - 1) /
                    static_cast<std::uintptr_t>(steps);
}

// prefetch_step prefetches the plan's next slice of every row. The batch spreads the next
// user's rows over the current user's k steps: with the whole rows issued at once (128 lines in
// the benchmark), that user's first pass still waited on memory (2.69 -> 2.31 us/user when
// spread).
inline void prefetch_step(Scratch& sc) {
    for (int r = 0; r < sc.pf_n; ++r) {
        const std::uintptr_t hi = std::min(sc.pf_next[r] + sc.pf_step[r], sc.pf_end[r]);
        for (std::uintptr_t l = sc.pf_next[r]; l < hi; ++l) __builtin_prefetch(reinterpret_cast<const char*>(l << 6), 0, 3);
        sc.pf_next[r] = hi;
    }
}

// ItemKeys gives every item a fixed-width list of global table keys key = d * G4 + g + 1
// (category g, distinct weight d, G4 = G rounded up to 4; 0 = padding), built once per batch, so a user's candidate
// lists are plain copies and a step's table is one dense block T[1 .. D*G] (weight-major:
// the D*G ratios and logs are contiguous, with no per-user entry list). Enabled when alpha > 0,
// lam > 0, the key space fits 16 bits, the catalogue's distinct keys are no more than a user's
// C * width candidate entries, and the dense block is not much larger than the keys in use
// (else per-user compaction does fewer logs).
struct ItemKeys {
    bool enabled = false;
    std::size_t n_slots = 0;             // D * G4 + 1
    std::int64_t G4 = 0;                 // G rounded up to a multiple of 4
    int stride = 0;                      // width rounded up to 4 (packed loads), or width if > 4
    std::vector<std::uint16_t> keys;     // [n_items * stride]
    std::vector<std::uint16_t> genre_max_key;  // [G] key of the genre's largest weight in use (0: none)
    std::vector<std::int32_t> key_genre;  // [n_slots] the key's category g (key 0: 0)
    std::vector<double> key_weight;       // [n_slots] its weight w_d (key 0: 0)
    // The scan bound by weight pattern (when there are at most kMaxPatterns patterns): an item's
    // pattern is how many of its categories carry each distinct weight. class_top[d] is the most
    // categories any item has with weight class d (<= 4); pattern j is pat_mult[j * D + d].
    bool patterns = false;
    std::vector<std::int32_t> class_top;  // [D]
    std::vector<std::uint8_t> pat_mult;   // [n_patterns * D]
    std::vector<std::uint64_t> in_use;    // [D * G4] all ones where key d * G4 + g + 1 is in use, else 0
    std::int32_t n_patterns = 0;
};

// kMaxPatterns: most distinct weight patterns for which the scan bound goes by pattern.
inline constexpr std::int32_t kMaxPatterns = 16;

// build_item_keys fills `out` for items (width = max(1, max_nnz)) when the conditions hold.
inline void build_item_keys(const ItemDist& items, std::int64_t C, ItemKeys& out) {
    const std::int64_t width = std::max<std::int32_t>(1, items.max_nnz);
    const std::int64_t stride = width <= 4 ? 4 : width;
    const std::int64_t G = items.n_genres;
    const std::int64_t G4 = (G + 3) / 4 * 4;
    const std::int64_t slots = G4 * items.n_weights + 1;
    if (slots > 65535) return;
    out.G4 = G4;
    out.stride = static_cast<int>(stride);
    std::vector<std::uint8_t> seen(static_cast<std::size_t>(slots), 0);
    out.keys.assign(static_cast<std::size_t>(items.n_items * stride), 0);
    out.genre_max_key.assign(static_cast<std::size_t>(G), 0);
    std::vector<double> gmax(static_cast<std::size_t>(G), 0.0);
    std::int64_t present = 0;
    for (std::int64_t i = 0; i < items.n_items; ++i) {
        std::int64_t j = 0;
        for (std::int64_t e = items.indptr[i]; e < items.indptr[i + 1]; ++e, ++j) {
            const std::int64_t g = items.genre[e];
            const std::int64_t key = static_cast<std::int64_t>(items.wclass[e]) * G4 + g + 1;
            out.keys[static_cast<std::size_t>(i * stride + j)] = static_cast<std::uint16_t>(key);
            const double w = items.weights[items.wclass[e]];
            if (w > gmax[static_cast<std::size_t>(g)]) {
                gmax[static_cast<std::size_t>(g)] = w;
                out.genre_max_key[static_cast<std::size_t>(g)] = static_cast<std::uint16_t>(key);
            }
            present += !seen[static_cast<std::size_t>(key)];
            seen[static_cast<std::size_t>(key)] = 1;
        }
    }
    if (present > C * width || slots - 1 > 2 * present + 64) return;
    out.n_slots = static_cast<std::size_t>(slots);
    out.key_genre.assign(static_cast<std::size_t>(slots), 0);
    out.key_weight.assign(static_cast<std::size_t>(slots), 0.0);
    for (std::int64_t key = 1; key < slots; ++key) {
        out.key_genre[static_cast<std::size_t>(key)] = static_cast<std::int32_t>((key - 1) % G4);
        out.key_weight[static_cast<std::size_t>(key)] = items.weights[(key - 1) / G4];
    }
    out.enabled = true;
    // weight patterns
    const std::int64_t D = items.n_weights;
    std::vector<std::uint8_t> mult(static_cast<std::size_t>(D));
    out.pat_mult.clear();
    out.n_patterns = 0;
    out.class_top.assign(static_cast<std::size_t>(D), 0);
    for (std::int64_t i = 0; i < items.n_items; ++i) {
        std::fill(mult.begin(), mult.end(), 0);
        bool over = false;
        for (std::int64_t e = items.indptr[i]; e < items.indptr[i + 1]; ++e) {
            std::uint8_t& m = mult[static_cast<std::size_t>(items.wclass[e])];
            over |= m == 4;
            m = static_cast<std::uint8_t>(m + (m < 4));
        }
        if (over) return;  // more than 4 categories with one weight: keep the per-genre bound
        bool seen_p = false;
        for (std::int32_t j = 0; j < out.n_patterns && !seen_p; ++j)
            seen_p = std::equal(mult.begin(), mult.end(), out.pat_mult.begin() + j * D);
        if (seen_p) continue;
        if (out.n_patterns == kMaxPatterns) return;
        out.pat_mult.insert(out.pat_mult.end(), mult.begin(), mult.end());
        ++out.n_patterns;
        for (std::int64_t d = 0; d < D; ++d)
            out.class_top[static_cast<std::size_t>(d)] =
                std::max<std::int32_t>(out.class_top[static_cast<std::size_t>(d)], mult[static_cast<std::size_t>(d)]);
    }
    out.in_use.assign(static_cast<std::size_t>(D * G4), 0);
    for (std::int64_t key = 1; key < slots; ++key)
        if (seen[static_cast<std::size_t>(key)]) out.in_use[static_cast<std::size_t>(key - 1)] = ~std::uint64_t{0};
    out.patterns = true;
}

#if defined(EMBTAB_VLOG_VECTOR)
// class_tops_loop: see class_tops. Lane-wise top-m networks over each class's row of T (entries
// of keys not in use masked to 0), then the m largest of the 4 lanes' lists; max/min by compare
// and bitwise select (exact, the same on every ISA). Entries are finite and >= 0.
__attribute__((always_inline)) inline void class_tops_loop(const double* T1, const std::uint64_t* in_use,
                                                           const std::int32_t* class_top, std::size_t D,
                                                           std::size_t G4, double* top) {
    // z = max(x, y) or min(x, y) (z may alias neither)
    auto vsel = [](const VlogD& x, const VlogD& y, const VlogI& take_x, VlogD& z) {
        VlogI xb, yb;
        std::memcpy(&xb, &x, sizeof xb);
        std::memcpy(&yb, &y, sizeof yb);
        const VlogI r = (xb & take_x) | (yb & ~take_x);
        std::memcpy(&z, &r, sizeof z);
    };
    auto vmax = [&](VlogD& acc, const VlogD& x) {  // acc = max(acc, x)
        VlogD z;
        vsel(x, acc, x > acc, z);
        acc = z;
    };
    auto vmin = [&](const VlogD& x, const VlogD& y, VlogD& z) { vsel(x, y, x < y, z); };
    for (std::size_t d = 0; d < D; ++d) {
        const std::int32_t m = class_top[d];
        double* td = top + 4 * d;
        td[0] = td[1] = td[2] = td[3] = 0.0;
        if (m == 0) continue;
        VlogD v0 = {0.0, 0.0, 0.0, 0.0}, v1 = v0, v2 = v0, v3 = v0;
        for (std::size_t g = 0; g < G4; g += 4) {
            VlogI xb, mk;
            std::memcpy(&xb, T1 + d * G4 + g, sizeof xb);
            std::memcpy(&mk, in_use + d * G4 + g, sizeof mk);
            xb &= mk;
            VlogD x;
            std::memcpy(&x, &xb, sizeof x);
            VlogD lo;
            if (m > 3) {
                vmin(x, v2, lo);
                vmax(v3, lo);
            }
            if (m > 2) {
                vmin(x, v1, lo);
                vmax(v2, lo);
            }
            if (m > 1) {
                vmin(x, v0, lo);
                vmax(v1, lo);
            }
            vmax(v0, x);
        }
        // the m largest of the lanes' lists, largest first (an m-deep network per value)
        double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
        const VlogD* lists[4] = {&v0, &v1, &v2, &v3};
        for (std::int32_t j = 0; j < m; ++j) {
            for (int l = 0; l < 4; ++l) {
                const double x = (*lists[j])[l];
                if (m > 3) t3 = std::max(t3, std::min(x, t2));
                if (m > 2) t2 = std::max(t2, std::min(x, t1));
                if (m > 1) t1 = std::max(t1, std::min(x, t0));
                t0 = std::max(t0, x);
            }
        }
        td[0] = t0;
        td[1] = t0 + t1;
        td[2] = td[1] + t2;
        td[3] = td[2] + t3;
    }
}

#if defined(EMBTAB_X86_INTRIN)
// class_tops_avx2 is class_tops_loop with native max/min, and the lanes merged in registers:
// each lane inserts its partner's list (halves swapped, then neighbours swapped), so every lane
// ends with the m largest of all four.
__attribute__((target("avx2"))) inline void class_tops_avx2(const double* T1, const std::uint64_t* in_use,
                                                            const std::int32_t* class_top, std::size_t D,
                                                            std::size_t G4, double* top) {
#define EMBTAB_TOPM_INSERT(x)                                              \
    do {                                                                   \
        const __m256d x_ = (x);                                            \
        if (m > 3) v3 = _mm256_max_pd(v3, _mm256_min_pd(x_, v2));          \
        if (m > 2) v2 = _mm256_max_pd(v2, _mm256_min_pd(x_, v1));          \
        if (m > 1) v1 = _mm256_max_pd(v1, _mm256_min_pd(x_, v0));          \
        v0 = _mm256_max_pd(v0, x_);                                        \
    } while (0)
    for (std::size_t d = 0; d < D; ++d) {
        const std::int32_t m = class_top[d];
        double* td = top + 4 * d;
        td[0] = td[1] = td[2] = td[3] = 0.0;
        if (m == 0) continue;
        __m256d v0 = _mm256_setzero_pd(), v1 = v0, v2 = v0, v3 = v0;
        for (std::size_t g = 0; g < G4; g += 4) {
            const __m256d mk = _mm256_castsi256_pd(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in_use + d * G4 + g)));
            EMBTAB_TOPM_INSERT(_mm256_and_pd(_mm256_loadu_pd(T1 + d * G4 + g), mk));
        }
        for (int round = 0; round < 2; ++round) {
            __m256d u0, u1, u2, u3;
            if (round == 0) {
                u0 = _mm256_permute4x64_pd(v0, 0x4e);
                u1 = _mm256_permute4x64_pd(v1, 0x4e);
                u2 = _mm256_permute4x64_pd(v2, 0x4e);
                u3 = _mm256_permute4x64_pd(v3, 0x4e);
            } else {
                u0 = _mm256_permute_pd(v0, 0x5);
                u1 = _mm256_permute_pd(v1, 0x5);
                u2 = _mm256_permute_pd(v2, 0x5);
                u3 = _mm256_permute_pd(v3, 0x5);
            }
            EMBTAB_TOPM_INSERT(u0);
            if (m > 1) EMBTAB_TOPM_INSERT(u1);
            if (m > 2) EMBTAB_TOPM_INSERT(u2);
            if (m > 3) EMBTAB_TOPM_INSERT(u3);
        }
        const double t0 = _mm256_cvtsd_f64(v0), t1 = _mm256_cvtsd_f64(v1), t2 = _mm256_cvtsd_f64(v2),
                     t3 = _mm256_cvtsd_f64(v3);
        td[0] = t0;
        td[1] = t0 + t1;
        td[2] = td[1] + t2;
        td[3] = td[2] + t3;
    }
#undef EMBTAB_TOPM_INSERT
}
#endif
inline void class_tops_base(const double* T1, const std::uint64_t* in_use, const std::int32_t* class_top,
                            std::size_t D, std::size_t G4, double* top) {
    class_tops_loop(T1, in_use, class_top, D, G4, top);
}
#endif

// class_tops_block writes top[4 * d + j] = the sum of the j + 1 largest entries of row d of
// T1 [D, G4] among the keys in use (in_use all ones; 0 where fewer), for j < class_top[d] (the
// sums pattern_bound reads; the others are unspecified). Entries are finite and >= 0.
inline void class_tops_block(const double* T1, const std::uint64_t* in_use, const std::int32_t* class_top,
                             std::size_t D, std::size_t G4, double* top) {
#if defined(EMBTAB_VLOG_VECTOR)
#if defined(EMBTAB_X86_INTRIN)
    if (use_avx2()) {
        class_tops_avx2(T1, in_use, class_top, D, G4, top);
        return;
    }
#endif
    class_tops_base(T1, in_use, class_top, D, G4, top);
#else
    for (std::size_t d = 0; d < D; ++d) {
        double t[4] = {0.0, 0.0, 0.0, 0.0};
        for (std::size_t g = 0; g < G4; ++g) {
            double x = in_use[d * G4 + g] ? T1[d * G4 + g] : 0.0;
            for (int j = 0; j < 4; ++j)
                if (x > t[j]) std::swap(x, t[j]);
        }
        top[4 * d] = t[0];
        for (int j = 1; j < 4; ++j) top[4 * d + j] = top[4 * d + j - 1] + t[j];
    }
    (void)class_top;
#endif
}

// class_tops is class_tops_block on a keyed table T (T[1 + d * G4 + g]).
inline void class_tops(const ItemKeys& keys, std::size_t D, const double* T, double* top) {
    class_tops_block(T + 1, keys.in_use.data(), keys.class_top.data(), D, static_cast<std::size_t>(keys.G4), top);
}

// pattern_bound is the largest table sum any item can have, by weight pattern: for each weight
// class d, the sum of its class_top[d] largest entries among the class's keys in use; then the
// largest pattern total. An upper bound on any candidate's sum: its categories are distinct, so
// its m entries of class d are at most the m largest of that class (entries are >= 0).
inline double pattern_bound(const ItemKeys& keys, std::int32_t D, const double* T, double* top) {
    class_tops(keys, static_cast<std::size_t>(D), T, top);
    double best = 0.0;
    for (std::int32_t j = 0; j < keys.n_patterns; ++j) {
        const std::uint8_t* pm = keys.pat_mult.data() + j * D;
        double sum = 0.0;
        for (std::int32_t d = 0; d < D; ++d)
            if (pm[d]) sum += top[4 * d + pm[d] - 1];
        best = std::max(best, sum);
    }
    return best;
}

// RowScan is what score_pass learns about one row.
struct RowScan {
    bool bad_score = false;  // a NaN or +inf score
    bool bad_item = false;   // a candidate id outside [0, n_items)
    bool sorted = true;      // scores non-increasing
    std::int64_t n_finite = 0;
};

// score_pass_scalar is score_pass over c in [c0, C), given the score before c0 (`prev`).
template <class S>
inline void score_pass_scalar(const S* s, const std::int64_t* cand, std::int64_t c0, std::int64_t C, double oml,
                              std::uint64_t n_items, double prev, double* a, RowScan& r) {
    constexpr double kPosInf = std::numeric_limits<double>::infinity();
    for (std::int64_t c = c0; c < C; ++c) {
        const double x = static_cast<double>(s[c]);
        r.bad_score |= (x != x) | (x == kPosInf);
        r.sorted &= x <= prev;
        prev = x;
        const bool fin = x != kNegInf;
        r.n_finite += fin;
        a[c] = fin ? oml * x : kNegInf;
        const std::int64_t it = cand ? cand[c] : c;
        r.bad_item |= static_cast<std::uint64_t>(it) >= n_items;
    }
}

#if defined(EMBTAB_VLOG_VECTOR)
typedef float VecF4 __attribute__((vector_size(16)));
typedef float VecF8 __attribute__((vector_size(32)));

// load_widened reads sizeof(VD) / 8 scores from p into x as doubles (float widens exactly).
template <class S, class VD>
__attribute__((always_inline)) inline void load_widened(const S* p, VD& x) {
    if constexpr (std::is_same_v<S, float>) {
        using FV = std::conditional_t<sizeof(VD) == 64, VecF8, VecF4>;
        FV xf;
        std::memcpy(&xf, p, sizeof xf);
        x = __builtin_convertvector(xf, VD);
    } else {
        std::memcpy(&x, p, sizeof x);
    }
}

// score_pass_loop is score_pass L candidates at a time (VD holds L doubles; the same results:
// comparisons, one multiplication and bitwise selects).
template <class S, class VD, class VU, class VI>
__attribute__((always_inline)) inline void score_pass_loop(const S* s, const std::int64_t* cand, std::int64_t C,
                                                           double oml, std::uint64_t n_items, double* a, RowScan& r) {
    constexpr int L = static_cast<int>(sizeof(VD) / sizeof(double));
    constexpr double kPosInf = std::numeric_limits<double>::infinity();
    if (C < L + 1) {
        score_pass_scalar(s, cand, 0, C, oml, n_items, kPosInf, a, r);
        return;
    }
    score_pass_scalar(s, cand, 0, 1, oml, n_items, kPosInf, a, r);
    auto load = [&](std::int64_t c, VD& x) { load_widened<S, VD>(s + c, x); };
    const VD ninf = VD{} + kNegInf;
    VI ninf_bits;
    std::memcpy(&ninf_bits, &ninf, sizeof ninf_bits);
    VI bad = VI{}, unsorted = VI{}, nfin = VI{}, iota = VI{};
    for (int l = 0; l < L; ++l) iota[l] = l;
    VU bad_it = VU{};
    const VU lim = VU{} + n_items;
    std::int64_t c = 1;
    for (; c + L <= C; c += L) {
        VD x, xp;
        load(c, x);
        load(c - 1, xp);
        bad |= (x != x) | (x == kPosInf);
        unsorted |= ~(x <= xp);
        const VI fin = x != kNegInf;
        nfin -= fin;
        const VD y = oml * x;
        VI yb;
        std::memcpy(&yb, &y, sizeof yb);
        const VI av = (yb & fin) | (ninf_bits & ~fin);
        std::memcpy(a + c, &av, sizeof av);
        VI it;
        if (cand) {
            std::memcpy(&it, cand + c, sizeof it);
        } else {
            it = iota + c;
        }
        VU itu;
        std::memcpy(&itu, &it, sizeof itu);
        bad_it |= (VU)(itu >= lim);
    }
    for (int l = 0; l < L; ++l) {
        r.bad_score |= bad[l] != 0;
        r.sorted &= unsorted[l] == 0;
        r.bad_item |= bad_it[l] != 0;
        r.n_finite += nfin[l];
    }
    score_pass_scalar(s, cand, c, C, oml, n_items, static_cast<double>(s[c - 1]), a, r);
}

#if defined(__x86_64__) || defined(__i386__)
template <class S>
__attribute__((target("avx2"))) inline void score_pass_avx2(const S* s, const std::int64_t* cand, std::int64_t C,
                                                            double oml, std::uint64_t n_items, double* a,
                                                            RowScan& r) {
    score_pass_loop<S, VlogD, VlogU, VlogI>(s, cand, C, oml, n_items, a, r);
}
#endif
template <class S>
inline void score_pass_base(const S* s, const std::int64_t* cand, std::int64_t C, double oml, std::uint64_t n_items,
                            double* a, RowScan& r) {
    score_pass_loop<S, VlogD, VlogU, VlogI>(s, cand, C, oml, n_items, a, r);
}
#endif

// score_pass reads one row: a[c] = (1 - lam) s_c (-inf for -inf scores) and what RowScan
// records (keyed slot lists are copied later, as the scan needs them: LazySlots).
template <class S>
inline RowScan score_pass(const S* s, const std::int64_t* cand, std::int64_t C, double oml, std::uint64_t n_items,
                          double* a) {
    RowScan r;
#if defined(EMBTAB_VLOG_VECTOR)
#if defined(__x86_64__) || defined(__i386__)
    if (use_avx2()) {
        score_pass_avx2(s, cand, C, oml, n_items, a, r);
        return r;
    }
#endif
    score_pass_base(s, cand, C, oml, n_items, a, r);
#else
    score_pass_scalar(s, cand, 0, C, oml, n_items, std::numeric_limits<double>::infinity(), a, r);
#endif
    return r;
}

// argmax_first returns the first c with v[c] equal to the largest value of v[0..C), or -1
// when that value is -inf (or C == 0). NaN never wins. Four independent running maxima keep the
// loop free of a long dependency chain; the second loop stops at the first match.
inline std::int64_t argmax_first(const double* v, std::int64_t C) {
    double m0 = kNegInf, m1 = kNegInf, m2 = kNegInf, m3 = kNegInf;
    std::int64_t c = 0;
    for (; c + 4 <= C; c += 4) {
        m0 = v[c] > m0 ? v[c] : m0;
        m1 = v[c + 1] > m1 ? v[c + 1] : m1;
        m2 = v[c + 2] > m2 ? v[c + 2] : m2;
        m3 = v[c + 3] > m3 ? v[c + 3] : m3;
    }
    for (; c < C; ++c) m0 = v[c] > m0 ? v[c] : m0;
    m0 = m1 > m0 ? m1 : m0;
    m2 = m3 > m2 ? m3 : m2;
    const double m = m2 > m0 ? m2 : m0;
    if (!(m > kNegInf)) return -1;
    for (c = 0; c < C; ++c)
        if (v[c] == m) return c;
    return -1;
}

// scan_values writes v[c] = a[c] + (sum of candidate c's W table entries, in slot order) for
// every candidate; candidate c's slots are idx[c * stride + 0 .. W). W == 0: runtime width.
template <int W, class I>
inline void scan_values(const double* a, const I* idx, int stride, int width, const double* t, std::int64_t C,
                        double* v) {
    for (std::int64_t c = 0; c < C; ++c) {
        const I* ix = idx + c * stride;
        double kl = t[ix[0]];
        if constexpr (W == 0) {
            for (int j = 1; j < width; ++j) kl += t[ix[j]];
        } else {
            if constexpr (W > 1) kl += t[ix[1]];
            if constexpr (W > 2) kl += t[ix[2]];
            if constexpr (W > 3) kl += t[ix[3]];
        }
        v[c] = a[c] + kl;
    }
}

// packed_sum is the sum of candidate c's W table entries (in slot order) for 16-bit slots at
// stride 4: one 8-byte load of the 4 slots.
template <int W>
__attribute__((always_inline)) inline double packed_sum(const std::uint16_t* idx, std::int64_t c, const double* t) {
    static_assert(W >= 1 && W <= 4, "packed slots hold up to 4 entries");
    std::uint64_t q;
    std::memcpy(&q, idx + c * 4, sizeof q);
    double kl = t[q & 0xffffu];
    if constexpr (W > 1) kl += t[(q >> 16) & 0xffffu];
    if constexpr (W > 2) kl += t[(q >> 32) & 0xffffu];
    if constexpr (W > 3) kl += t[q >> 48];
    return kl;
}

// scan_values_packed is scan_values for 16-bit slots at stride 4.
template <int W>
inline void scan_values_packed(const double* a, const std::uint16_t* idx, const double* t, std::int64_t C,
                               double* v) {
    for (std::int64_t c = 0; c < C; ++c) v[c] = a[c] + packed_sum<W>(idx, c, t);
}

// scan_best returns the first candidate maximising a[c] + its table sum (-1 if all are -inf);
// v [C] is scratch.
template <class I>
inline std::int64_t scan_best(const double* a, const I* idx, int stride, int width, const double* t,
                              std::int64_t C, double* v) {
    if constexpr (std::is_same_v<I, std::uint16_t>) {
        if (stride == 4) {
            switch (width) {
                case 1: scan_values_packed<1>(a, idx, t, C, v); break;
                case 2: scan_values_packed<2>(a, idx, t, C, v); break;
                case 3: scan_values_packed<3>(a, idx, t, C, v); break;
                default: scan_values_packed<4>(a, idx, t, C, v); break;
            }
            return argmax_first(v, C);
        }
    }
    switch (width) {
        case 1: scan_values<1>(a, idx, stride, width, t, C, v); break;
        case 2: scan_values<2>(a, idx, stride, width, t, C, v); break;
        case 3: scan_values<3>(a, idx, stride, width, t, C, v); break;
        case 4: scan_values<4>(a, idx, stride, width, t, C, v); break;
        default: scan_values<0>(a, idx, stride, width, t, C, v); break;
    }
    return argmax_first(v, C);
}

// first_equal returns the first j < n with v[j] == m (one exists; n <= 32). The AVX2 form
// compares all n and takes the lowest set bit, with no branch on the position: the scalar
// loop's exit, at a random position once per greedy step, was a mispredicted branch that cost
// about 4% of the benchmark.
#if defined(EMBTAB_X86_INTRIN) && defined(EMBTAB_VLOG_VECTOR)
__attribute__((target("avx2"))) inline std::int64_t first_equal_avx2(const double* v, std::int64_t n, double m) {
    const __m256d mv = _mm256_set1_pd(m);
    std::uint32_t bits = 0;
    std::int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        bits |= static_cast<std::uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(v + j), mv, _CMP_EQ_OQ)))
                << j;
    for (; j < n; ++j) bits |= static_cast<std::uint32_t>(v[j] == m) << j;
    return __builtin_ctz(bits);
}
#endif
inline std::int64_t first_equal(const double* v, std::int64_t n, double m, bool avx2) {
#if defined(EMBTAB_X86_INTRIN) && defined(EMBTAB_VLOG_VECTOR)
    if (avx2) return first_equal_avx2(v, n, m);
#endif
    (void)avx2;
    std::int64_t j = 0;
    while (v[j] != m) ++j;
    return j;
}

// LazySlots fills keyed stride-4 slot lists on demand: ix[c * 4 ..] = ik[item(c) * 4 ..] for
// c < filled. A score-sorted row's scan reaches only its first few chunks (1.7 of 16 per step
// in the benchmark), so the rest of its slots are never copied.
struct LazySlots {
    const std::int64_t* cand = nullptr;  // nullptr: candidate c is item c
    const std::uint16_t* ik = nullptr;   // ItemKeys::keys (stride 4)
    std::uint16_t* ix = nullptr;         // [C * 4]
    std::int64_t filled = 0;
    void fill_to(std::int64_t c1) {
        for (std::int64_t c = filled; c < c1; ++c)
            std::memcpy(ix + c * 4, ik + (cand ? cand[c] : c) * 4, 4 * sizeof(std::uint16_t));
        if (c1 > filled) filled = c1;
    }
};

// scan_sorted_packed is scan_best_sorted for 16-bit slots at stride 4: each chunk's values
// and their maximum in one pass; the first position of that maximum is looked up only when
// it beats the best so far (the same choice as argmax_first per chunk).
template <int W>
inline std::int64_t scan_sorted_packed(const double* a, const double* a_head, const std::uint16_t* idx,
                                       const double* t, std::int64_t C, double* v, double bound,
                                       LazySlots* lazy) {
    static_assert(kSortedChunk <= 32, "first_equal takes up to 32 values");
    const bool avx2 = use_avx2();
    double best = kNegInf;
    std::int64_t bi = -1;
    for (std::int64_t c0 = 0; c0 < C; c0 += kSortedChunk) {
        if (a_head[c0 / kSortedChunk] + bound < best) break;
        const std::int64_t c1 = std::min<std::int64_t>(c0 + kSortedChunk, C);
        if (lazy && c1 > lazy->filled) lazy->fill_to(c1);
        double m0 = kNegInf, m1 = kNegInf, m2 = kNegInf, m3 = kNegInf;
        auto value = [&](std::int64_t c) {
            const double x = a[c] + packed_sum<W>(idx, c, t);
            v[c] = x;
            return x;
        };
        std::int64_t c = c0;
        for (; c + 4 <= c1; c += 4) {
            const double x0 = value(c), x1 = value(c + 1), x2 = value(c + 2), x3 = value(c + 3);
            m0 = x0 > m0 ? x0 : m0;
            m1 = x1 > m1 ? x1 : m1;
            m2 = x2 > m2 ? x2 : m2;
            m3 = x3 > m3 ? x3 : m3;
        }
        for (; c < c1; ++c) {
            const double x = value(c);
            m0 = x > m0 ? x : m0;
        }
        m0 = m1 > m0 ? m1 : m0;
        m2 = m3 > m2 ? m3 : m2;
        const double m = m2 > m0 ? m2 : m0;
        if (m > best) {
            best = m;
            bi = c0 + first_equal(v + c0, c1 - c0, m, avx2);
        }
    }
    return bi;
}

// scan_best_sorted is scan_best for rows whose score terms are non-increasing (a_head[j], the
// score term of candidate j * kSortedChunk before any pick): chunks of kSortedChunk candidates are scanned in order, and the
// scan stops before a chunk whose first candidate cannot beat the best so far even with the
// largest possible table sum `bound` (the later ones have no larger score term). Same result as
// scan_best: a stopped-at candidate's value is <= a_head + bound < best, strictly. `lazy`
// (16-bit slots at stride 4 only) fills idx chunk by chunk as the scan reaches it.
template <class I>
inline std::int64_t scan_best_sorted(const double* a, const double* a_head, const I* idx, int stride, int width,
                                     const double* t, std::int64_t C, double* v, double bound,
                                     LazySlots* lazy = nullptr) {
    double best = kNegInf;
    std::int64_t bi = -1;
    if constexpr (std::is_same_v<I, std::uint16_t>) {
        if (stride == 4) {
            switch (width) {
                case 1: return scan_sorted_packed<1>(a, a_head, idx, t, C, v, bound, lazy);
                case 2: return scan_sorted_packed<2>(a, a_head, idx, t, C, v, bound, lazy);
                case 3: return scan_sorted_packed<3>(a, a_head, idx, t, C, v, bound, lazy);
                default: return scan_sorted_packed<4>(a, a_head, idx, t, C, v, bound, lazy);
            }
        }
    }
    for (std::int64_t c0 = 0; c0 < C; c0 += kSortedChunk) {
        if (a_head[c0 / kSortedChunk] + bound < best) break;
        const std::int64_t n = std::min<std::int64_t>(kSortedChunk, C - c0);
        const std::int64_t j = scan_best(a + c0, idx + c0 * stride, stride, width, t, n, v + c0);
        if (j >= 0 && v[c0 + j] > best) {
            best = v[c0 + j];
            bi = c0 + j;
        }
    }
    return bi;
}

// scan_alpha0 is the alpha == 0 step while `uncovered` categories with p_g > 0 are missing:
// only candidates whose cov sum equals `uncovered` have a finite objective.
template <class I>
inline std::int64_t scan_alpha0(const double* a, const I* idx, const double* t, const double* cov,
                                std::int64_t C, int width, int stride, double uncovered) {
    double best = kNegInf;
    std::int64_t bi = -1;
    for (std::int64_t c = 0; c < C; ++c) {
        const I* ix = idx + c * stride;
        double kl = t[ix[0]];
        double nc = cov[ix[0]];
        for (int j = 1; j < width; ++j) {
            kl += t[ix[j]];
            nc += cov[ix[j]];
        }
        const double v = nc == uncovered ? a[c] + kl : kNegInf;
        if (v > best) {
            best = v;
            bi = c;
        }
    }
    return bi;
}

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

// calibrated ////////////////////////////////////////////////////////////////////////////////

// calibrated_user reranks one user: scores s[C] (S = float or double), candidate item ids
// cand[C] (nullptr: candidate c is item c), target p[G]; writes k candidate positions (not
// item ids) in list order to out[k], and if obj/miscal are non-null the final objective F(L)
// and KL(p || q~(L)). Returns the first bad input of this row (status ok otherwise).
template <class S>
RerankError calibrated_user(const S* s, const std::int64_t* cand, std::int64_t C, const ItemDist& items,
                            const double* p, const RerankParams& prm, std::int64_t* out, double* obj,
                            double* miscal, detail::Scratch& sc, std::int32_t user_stamp,
                            const detail::ItemKeys* keys) {
    using detail::kNegInf;
    const std::int64_t k = prm.k;
    const double lam = prm.lam, alpha = prm.alpha;
    const std::int32_t G = items.n_genres, D = items.n_weights;
    RerankError err;

    // Score terms; count finite candidates; reject NaN and +inf.
    sc.a.resize(static_cast<std::size_t>(C));
    sc.v.resize(static_cast<std::size_t>(C));

    sc.picked.assign(static_cast<std::size_t>(C), 0);

    double* a = sc.a.data();
    const double one_m_lam = lam < 1.0 ? 1.0 - lam : 0.0;
    // Branch-free checks over the row; the slow loops below only name the culprit.
    const std::uint64_t n_items = static_cast<std::uint64_t>(items.n_items);
    auto item_of = [cand](std::int64_t c) { return cand ? cand[c] : c; };
    constexpr double kPosInf = std::numeric_limits<double>::infinity();
    const detail::RowScan rs = detail::score_pass(s, cand, C, one_m_lam, n_items, a);
    const bool bad_score = rs.bad_score, bad_item = rs.bad_item, sorted = rs.sorted;
    const std::int64_t n_finite = rs.n_finite;
    if (sorted) {
        // each chunk's first score term before any pick (the sorted scan's stopping test)
        sc.a_head.resize(static_cast<std::size_t>((C + kSortedChunk - 1) / kSortedChunk));
        for (std::size_t j = 0; j < sc.a_head.size(); ++j) sc.a_head[j] = a[static_cast<std::int64_t>(j) * kSortedChunk];
    }
    if (bad_score || bad_item) {
        for (std::int64_t c = 0; c < C; ++c) {
            const double x = static_cast<double>(s[c]);
            const std::int64_t it = cand ? cand[c] : c;
            if (x != x || x == kPosInf) {
                err.status = x != x ? RerankStatus::nan_score : RerankStatus::posinf_score;
            } else if (it < 0 || it >= items.n_items) {
                err.status = RerankStatus::bad_candidate;
                err.value = it;
            } else {
                continue;
            }
            err.col = c;
            return err;
        }
    }

    auto finish = [&](void) {
        if (!obj && !miscal) return;
        // Final objective and miscalibration, from the list's summed weights.
        std::vector<double>& Wf = sc.W;
        Wf.assign(static_cast<std::size_t>(G), 0.0);
        double ssum = 0.0;
        bool any_neg_inf = false;
        for (std::int64_t j = 0; j < k; ++j) {
            const std::int64_t c = out[j];
            const double x = static_cast<double>(s[c]);
            if (x == kNegInf) any_neg_inf = true;
            ssum += x;
            const std::int64_t it = item_of(c);
            for (std::int64_t e = items.indptr[it]; e < items.indptr[it + 1]; ++e)
                Wf[static_cast<std::size_t>(items.genre[e])] += items.weights[items.wclass[e]];
        }
        double kl = 0.0;
        for (std::int32_t g = 0; g < G; ++g) {
            const double pg = p[g];
            if (!(pg > 0.0)) continue;
            const double qt = (1.0 - alpha) * (Wf[static_cast<std::size_t>(g)] / static_cast<double>(k)) + alpha * pg;
            kl += qt > 0.0 ? pg * (std::log(pg) - std::log(qt)) : std::numeric_limits<double>::infinity();
        }
        if (miscal) *miscal = kl;
        if (obj) {
            const double st = lam < 1.0 ? (any_neg_inf ? kNegInf : one_m_lam * ssum) : 0.0;
            *obj = lam > 0.0 ? st - lam * kl : st;
        }
    };

    if (lam == 0.0) {
        // Plain top-k by score; -inf candidates last in index order.
        if (k <= kTopkHeapMaxK) {
            std::vector<double>& v = sc.den;
            v.resize(static_cast<std::size_t>(k));
            detail::topk_small_row(a, C, k, v.data(), out);
        } else {
            detail::TopkBuffers<double> tb;
            std::vector<double>& v = sc.den;
            v.resize(static_cast<std::size_t>(k));
            detail::topk_radix_row(a, C, k, v.data(), out, tb);
        }
        finish();
        return err;
    }

    // The user's table entries: one per (genre with p_g > 0, distinct weight) that can occur,
    // each with its slot in T; candidates hold fixed-width lists of slots (0 = the zero slot).
    const std::int32_t width = std::max<std::int32_t>(1, items.max_nnz);
    sc.genre_used.assign(static_cast<std::size_t>(G), 0);
    sc.used_genres.clear();
    sc.entry_slot.clear();
    sc.entry_genre.clear();
    sc.entry_cw.clear();
    sc.entry_lp.clear();
    sc.entry_w.clear();
    sc.bound_slots.clear();
    auto add_entry = [&](std::uint32_t slot, std::int32_t g, double w) {
        if (w > sc.genre_max_w[static_cast<std::size_t>(g)]) {
            sc.genre_max_w[static_cast<std::size_t>(g)] = w;
            sc.genre_max_slot[static_cast<std::size_t>(g)] = slot;
        }
        sc.entry_slot.push_back(slot);
        sc.entry_genre.push_back(g);
        sc.entry_w.push_back(w);
        sc.entry_cw.push_back((1.0 - alpha) * w);
        sc.entry_lp.push_back(lam * p[g]);
        if (!sc.genre_used[static_cast<std::size_t>(g)]) {
            sc.genre_used[static_cast<std::size_t>(g)] = 1;
            sc.used_genres.push_back(g);
        }
    };
    const int stride = width <= 4 ? 4 : width;
    const std::size_t n_idx = static_cast<std::size_t>(C) * static_cast<std::size_t>(stride);
    std::size_t n_slots;  // table size including the zero slot
    bool use16;
    detail::LazySlots lazy;  // keyed stride-4 slots (lazy.ix set); else unused
    const bool keyed = keys && keys->enabled;
    if (keyed) {
        // Global slots key = d * G + g + 1: every step computes the whole dense block (slots of
        // genres with p_g = 0 come out 0, exactly their contribution); no per-user entries.
        n_slots = keys->n_slots;
        use16 = true;
        sc.idx16.resize(n_idx);
        std::uint16_t* ix = sc.idx16.data();
        const std::uint16_t* ik = keys->keys.data();
        if (stride == 4) {
            // filled as the sorted scan reaches each chunk, or all at once before any other scan
            lazy = detail::LazySlots{cand, ik, ix, 0};
        } else {
            for (std::int64_t c = 0; c < C; ++c)
                std::memcpy(ix + c * stride, ik + item_of(c) * stride,
                            static_cast<std::size_t>(stride) * sizeof(std::uint16_t));
        }
        if (!keys->patterns)  // else the bound goes by weight pattern
            for (std::int32_t g = 0; g < G; ++g)
                if (keys->genre_max_key[static_cast<std::size_t>(g)])
                    sc.bound_slots.push_back(keys->genre_max_key[static_cast<std::size_t>(g)]);
        // lp and (per step) den padded to G4 with lam p = 0, o = 1
        sc.lp.assign(static_cast<std::size_t>(keys->G4), 0.0);
        sc.p4.assign(static_cast<std::size_t>(keys->G4), 0.0);
        sc.ap.assign(static_cast<std::size_t>(keys->G4), 0.0);
        for (std::int32_t g = 0; g < G; ++g) {
            sc.lp[static_cast<std::size_t>(g)] = lam * p[g];
            sc.p4[static_cast<std::size_t>(g)] = p[g];
            sc.ap[static_cast<std::size_t>(g)] = alpha * p[g];
        }
        sc.cwd.resize(static_cast<std::size_t>(D));
        for (std::int32_t d = 0; d < D; ++d) sc.cwd[static_cast<std::size_t>(d)] = (1.0 - alpha) * items.weights[d];
    } else {
        // Per-user slots (any number of distinct weights): compact the (g, d) keys in use.
        sc.genre_max_slot.assign(static_cast<std::size_t>(G), 0);
        sc.genre_max_w.assign(static_cast<std::size_t>(G), 0.0);
        const std::size_t GD = static_cast<std::size_t>(G) * static_cast<std::size_t>(D);
        const bool dense = GD <= kDenseKeyMax;
        std::size_t hmask = 0;
        if (dense) {
            if (sc.stamp.size() < GD) {
                sc.stamp.assign(GD, -1);
                sc.local.assign(GD, 0);
            }
        } else {
            std::size_t cap = 16;
            while (cap < 2 * n_idx) cap *= 2;
            if (sc.hkey.size() < cap) {
                sc.hkey.assign(cap, 0);
                sc.stamp.assign(cap, -1);
                sc.local.assign(cap, 0);
            }
            hmask = sc.hkey.size() - 1;
        }
        // slot_of gives the map slot of key: dense, its index; else its hash slot, claimed for
        // this user (stamp set, local 0) if the key is new (linear probing; the table is at
        // most half full: a user has at most C * width keys).
        auto slot_of = [&](std::size_t key) -> std::size_t {
            if (dense) return key;
            std::size_t h = static_cast<std::size_t>(mix64(key, 0)) & hmask;
            while (sc.stamp[h] == user_stamp && sc.hkey[h] != key) h = (h + 1) & hmask;
            if (sc.stamp[h] != user_stamp) sc.hkey[h] = key;
            return h;
        };
        sc.idx.resize(n_idx);
        std::uint32_t* idx = sc.idx.data();
        std::uint32_t next = 1;
        for (std::int64_t c = 0; c < C; ++c) {
            const std::int64_t it = item_of(c);
            std::uint32_t* ix = idx + c * stride;
            std::int32_t j = 0;
            for (std::int64_t e = items.indptr[it]; e < items.indptr[it + 1]; ++e) {
                const std::int32_t g = items.genre[e];
                if (!(p[g] > 0.0)) continue;  // p_g = 0 adds nothing to KL whatever q~ is
                const std::size_t key = slot_of(static_cast<std::size_t>(g) * static_cast<std::size_t>(D) +
                                                static_cast<std::size_t>(items.wclass[e]));
                if (sc.stamp[key] != user_stamp) {
                    sc.stamp[key] = user_stamp;
                    sc.local[key] = static_cast<std::int32_t>(next);
                    add_entry(next, g, items.weights[items.wclass[e]]);
                    ++next;
                }
                ix[j++] = static_cast<std::uint32_t>(sc.local[key]);
            }
            for (; j < stride; ++j) ix[j] = 0;
        }
        n_slots = next;
        use16 = n_slots <= 65536;
        if (use16) {
            sc.idx16.resize(n_idx);
            for (std::size_t i = 0; i < n_idx; ++i) sc.idx16[i] = static_cast<std::uint16_t>(idx[i]);
        }
        for (std::int32_t g : sc.used_genres) sc.bound_slots.push_back(sc.genre_max_slot[static_cast<std::size_t>(g)]);
    }
    std::uint32_t* idx = sc.idx.data();
    const std::size_t n_entries = sc.entry_slot.size();
    const std::size_t E1 = n_slots;
    sc.table.assign(E1, 0.0);
    double* T = sc.table.data();

    // alpha == 0: categories with p_g > 0 still absent from the list make KL infinite.
    const bool alpha0 = alpha == 0.0;
    double uncovered = 0.0;
    if (alpha0) {
        sc.cov.assign(E1, 0.0);
        for (std::int32_t g = 0; g < G; ++g) uncovered += p[g] > 0.0 ? 1.0 : 0.0;
    }

    sc.W.assign(static_cast<std::size_t>(keyed ? keys->G4 : G), 0.0);
    sc.den.assign(static_cast<std::size_t>(keyed ? keys->G4 : G), 1.0);
    double* Wg = sc.W.data();
    double* den = sc.den.data();
    sc.inv.assign(static_cast<std::size_t>(G), 1.0);
    double* inv = sc.inv.data();
    std::int64_t finite_left = n_finite;
    bool phase2 = false;

    for (std::int64_t t = 0; t < k; ++t) {
        detail::prefetch_step(sc);
        if (!phase2 && finite_left == 0) {
            // Only -inf candidates remain: the KL term alone decides among them.
            phase2 = true;
            for (std::int64_t c = 0; c < C; ++c)
                if (!sc.picked[static_cast<std::size_t>(c)]) a[c] = 0.0;
        }
        const double t1 = static_cast<double>(t + 1);
        if (!keyed)
            for (std::int32_t g : sc.used_genres) {
                den[g] = (1.0 - alpha) * Wg[g] + alpha * p[g] * t1;
                inv[g] = 1.0 / den[g];
            }
        const bool a0 = alpha0 && uncovered > 0.0;
        // refresh computes entry e (table slot `slot`) at this step.
        auto refresh = [&](std::size_t e, std::uint32_t slot) {
            const double o = den[sc.entry_genre[e]];
            if (a0 && o == 0.0) {
                // uncovered genre: the entry carries lam p_g ln(w / (t+1)); cov marks it
                T[slot] = sc.entry_lp[e] * std::log(sc.entry_w[e] / t1);
                sc.cov[slot] = 1.0;
            } else {
                // ln((o + cw) / o); the ratio form unless cw / o would overflow (tiny alpha p_g)
                const double r = sc.entry_cw[e] * (1.0 / o);
                T[slot] = sc.entry_lp[e] * (r < 1e300 ? vlog(1.0 + r) : std::log(sc.entry_cw[e]) - std::log(o));
                if (alpha0) sc.cov[slot] = 0.0;
            }
        };
        std::int64_t bi;
        if (keyed) {
            // The dense block T[1 + d * G4 + g] = lam p_g ln(1 + (1 - alpha) w_d / o_g) in one
            // vector pass; the same bits as the per-entry forms below. A genre with p_g = 0 (and
            // the padding) gets o = 1, any finite value: its slots are lam * 0 * finite = 0.
            const double* lp = sc.lp.data();
            const std::size_t G4 = static_cast<std::size_t>(keys->G4);
            if (!ratio_log_block(sc.cwd.data(), static_cast<std::size_t>(D), Wg, sc.p4.data(), sc.ap.data(),
                                 1.0 - alpha, t1, lp, G4, T + 1)) {
                for (std::int32_t g = 0; g < G; ++g) den[g] = p[g] > 0.0 ? (1.0 - alpha) * Wg[g] + alpha * p[g] * t1 : 1.0;
                for (std::int32_t d = 0; d < D; ++d) {
                    const double cw = sc.cwd[static_cast<std::size_t>(d)];
                    double* td = T + 1 + static_cast<std::size_t>(d) * G4;
                    for (std::int32_t g = 0; g < G; ++g) {
                        const double r = cw * (1.0 / den[g]);
                        td[g] = lp[g] * (r < 1e300 ? vlog(1.0 + r) : std::log(cw) - std::log(den[g]));
                    }
                }
            }
        } else {
            // the usual case in one batch of logs (the same bits as refresh, entry by entry)
            sc.ratio.resize(n_entries);
            double* arg = sc.ratio.data();
            bool special = false;
            for (std::size_t e = 0; e < n_entries; ++e) {
                const double r = sc.entry_cw[e] * inv[sc.entry_genre[e]];
                arg[e] = 1.0 + r;
                special |= !(r < 1e300);  // also an uncovered genre's o == 0 when alpha == 0
            }
            if (special) {
                for (std::size_t e = 0; e < n_entries; ++e) refresh(e, sc.entry_slot[e]);
            } else {
                vlog_batch(arg, arg, n_entries);
                for (std::size_t e = 0; e < n_entries; ++e) T[sc.entry_slot[e]] = sc.entry_lp[e] * arg[e];
                if (alpha0)
                    for (std::size_t e = 0; e < n_entries; ++e) sc.cov[sc.entry_slot[e]] = 0.0;
            }
        }
        if (a0) {
            bi = use16 ? detail::scan_alpha0(a, sc.idx16.data(), T, sc.cov.data(), C, width, stride, uncovered)
                       : detail::scan_alpha0(a, idx, T, sc.cov.data(), C, width, stride, uncovered);
        } else if (sorted && !phase2 && C > kSortedChunk) {
            // Bound on any candidate's table sum: its genres are distinct, so at most the sum of
            // the `width` largest per-genre maxima (entries are >= 0).
            // A genre's largest entry is its largest-weight one (entries grow with w).
            double bound = 0.0;
            if (keyed && keys->patterns) {
                sc.top.resize(static_cast<std::size_t>(4 * D));
                bound = detail::pattern_bound(*keys, D, T, sc.top.data());
            } else if (width <= 4) {
                // the 4 largest in registers, branch-free (t0 >= t1 >= t2 >= t3)
                double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
                for (std::uint32_t slot : sc.bound_slots) {
                    const double x = T[slot];
                    t3 = std::max(t3, std::min(x, t2));
                    t2 = std::max(t2, std::min(x, t1));
                    t1 = std::max(t1, std::min(x, t0));
                    t0 = std::max(t0, x);
                }
                const double tt[4] = {t0, t1, t2, t3};
                for (std::int32_t j = 0; j < width; ++j) bound += tt[j];
            } else {
                sc.top.assign(static_cast<std::size_t>(width), 0.0);
                double* top = sc.top.data();
                for (std::uint32_t slot : sc.bound_slots) {
                    const double x = T[slot];
                    if (!(x > top[width - 1])) continue;
                    std::int32_t j = width - 1;  // insertion, largest first
                    for (; j > 0 && top[j - 1] < x; --j) top[j] = top[j - 1];
                    top[j] = x;
                }
                for (std::int32_t j = 0; j < width; ++j) bound += top[j];
            }
            bound = bound * (1.0 + kBoundSlack);
            bi = use16 ? detail::scan_best_sorted(a, sc.a_head.data(), sc.idx16.data(), stride, width, T, C, sc.v.data(), bound,
                                                  lazy.ix ? &lazy : nullptr)
                       : detail::scan_best_sorted(a, sc.a_head.data(), idx, stride, width, T, C, sc.v.data(), bound);
        } else {
            if (lazy.ix) lazy.fill_to(C);
            bi = use16 ? detail::scan_best(a, sc.idx16.data(), stride, width, T, C, sc.v.data())
                       : detail::scan_best(a, idx, stride, width, T, C, sc.v.data());
        }
        if (bi < 0) {
            // every available value is -inf (alpha == 0): the lowest unpicked index wins
            for (std::int64_t c = 0; c < C; ++c) {
                if (!sc.picked[static_cast<std::size_t>(c)] && (phase2 || a[c] != kNegInf)) {
                    bi = c;
                    break;
                }
            }
        }
        out[t] = bi;
        sc.picked[static_cast<std::size_t>(bi)] = 1;
        a[bi] = kNegInf;
        if (!phase2) --finite_left;
        if (keyed) {
            // the pick's categories from its slots (in L1; the same additions in the same order
            // as the CSR row, whose order the slots keep; keyed implies alpha > 0)
            const std::uint16_t* ix = sc.idx16.data() + bi * stride;
            for (std::int32_t j = 0; j < width && ix[j]; ++j)
                Wg[keys->key_genre[ix[j]]] += keys->key_weight[ix[j]];
        } else {
            const std::int64_t it = item_of(bi);
            for (std::int64_t e = items.indptr[it]; e < items.indptr[it + 1]; ++e) {
                const std::int32_t g = items.genre[e];
                if (alpha0 && Wg[g] == 0.0 && p[g] > 0.0) uncovered -= 1.0;
                Wg[g] += items.weights[items.wclass[e]];
            }
        }
    }
    finish();
    return err;
}

// work floor ////////////////////////////////////////////////////////////////////////////////

// work_floor runs only the arithmetic every greedy step needs, for a benchmark's reference:
// per user and step, n_entries logs into a table and a full scan of C candidates with `width`
// packed 16-bit slots each (then the argmax), on synthetic slots; no input checks, set-up or
// bookkeeping. logs_only skips the scan. Returns a checksum so nothing is optimised away.
inline double work_floor(std::int64_t U, std::int64_t C, std::int64_t k, int width, int n_entries, bool logs_only,
                         int num_threads) {
    const std::size_t chunks = (static_cast<std::size_t>(U) + kRerankGrain - 1) / kRerankGrain;
    std::vector<double> sums(chunks, 0.0);
    parallel_for(static_cast<std::size_t>(U), num_threads, kRerankGrain, [&](std::size_t b, std::size_t e) {
        std::vector<std::uint16_t> idx(static_cast<std::size_t>(C) * 4, 0);
        std::vector<double> a(static_cast<std::size_t>(C)), v(static_cast<std::size_t>(C));
        std::vector<double> T(static_cast<std::size_t>(n_entries) + 1, 0.0);
        std::uint64_t x = 0x9e3779b97f4a7c15ull * (b + 1);
        for (std::int64_t c = 0; c < C; ++c) {
            for (int j = 0; j < width; ++j) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                idx[static_cast<std::size_t>(c * 4 + j)] = static_cast<std::uint16_t>(1 + x % static_cast<std::uint64_t>(n_entries));
            }
            a[static_cast<std::size_t>(c)] = static_cast<double>(x % 1000) * 1e-3;
        }
        double acc = 0.0;
        for (std::size_t u = b; u < e; ++u) {
            for (std::int64_t t = 0; t < k; ++t) {
                const double o = 0.01 * static_cast<double>(t + 1) + static_cast<double>(u % 7) * 1e-3;
                for (int i = 1; i <= n_entries; ++i) T[static_cast<std::size_t>(i)] = 1.0 + static_cast<double>(i) / o;
                vlog_batch(T.data() + 1, T.data() + 1, static_cast<std::size_t>(n_entries));
                for (int i = 1; i <= n_entries; ++i) T[static_cast<std::size_t>(i)] *= 0.1;
                if (logs_only) {
                    acc += T[1];
                    continue;
                }
                std::int64_t bi;
                switch (width) {
                    case 1: detail::scan_values_packed<1>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    case 2: detail::scan_values_packed<2>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    case 3: detail::scan_values_packed<3>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    default: detail::scan_values_packed<4>(a.data(), idx.data(), T.data(), C, v.data()); break;
                }
                bi = detail::argmax_first(v.data(), C);
                acc += static_cast<double>(bi);
            }
        }
        sums[b / kRerankGrain] = acc;
    });
    double total = 0.0;
    for (double x : sums) total += x;
    return total;
}

// calibrated_batch reranks U users: scores [U, C], cand [U, C] or nullptr, target [U, G], all
// row-major; writes out [U, k] (candidate positions, or item ids when cand is given) and the
// optional obj [U] / miscal [U]. Returns the first bad input by (row, col), status ok if none.
// Every user's outputs depend only on that user's inputs, so any num_threads gives the same.
template <class S>
RerankError calibrated_batch(const S* scores, const std::int64_t* cand, std::int64_t U, std::int64_t C,
                             const ItemDist& items, const double* target, const RerankParams& prm,
                             std::int64_t* out, double* obj, double* miscal, int num_threads) {
    const std::size_t chunks = (static_cast<std::size_t>(U) + kRerankGrain - 1) / kRerankGrain;
    std::vector<RerankError> errs(chunks);
    const std::int64_t G = items.n_genres;
    detail::ItemKeys keys;
    // The per-item key table costs O(n_items) per call: worth it when the batch touches at
    // least as many candidate slots as there are items (else per-user compaction).
    if (prm.lam > 0.0 && prm.alpha > 0.0 && U * C >= items.n_items) detail::build_item_keys(items, C, keys);
    parallel_for(static_cast<std::size_t>(U), num_threads, kRerankGrain, [&](std::size_t b, std::size_t e) {
        detail::Scratch sc;
        for (std::size_t uu = b; uu < e; ++uu) {
            const std::int64_t u = static_cast<std::int64_t>(uu);
            const std::int64_t* cu = cand ? cand + u * C : nullptr;
            std::int64_t* ou = out + u * prm.k;
            sc.pf_n = 0;
            if (u + 1 < U) {  // the next user's rows, fetched a slice per step while this one computes
                detail::prefetch_plan(sc, scores + (u + 1) * C, static_cast<std::size_t>(C) * sizeof(S), prm.k);
                if (cand) detail::prefetch_plan(sc, cand + (u + 1) * C, static_cast<std::size_t>(C) * sizeof(std::int64_t), prm.k);
                detail::prefetch_plan(sc, target + (u + 1) * G, static_cast<std::size_t>(G) * sizeof(double), 1);
            }
            RerankError er = calibrated_user(scores + u * C, cu, C, items, target + u * G, prm, ou,
                                             obj ? obj + u : nullptr, miscal ? miscal + u : nullptr, sc,
                                             static_cast<std::int32_t>(uu - b), &keys);
            if (er.status != RerankStatus::ok) {
                er.row = u;
                errs[b / kRerankGrain] = er;
                return;
            }
            if (cu)
                for (std::int64_t j = 0; j < prm.k; ++j) ou[j] = cu[ou[j]];
        }
    });
    for (const RerankError& er : errs)
        if (er.status != RerankStatus::ok) return er;
    return RerankError{};
}

}  // namespace embtab
