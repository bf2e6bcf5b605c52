// embtab/rerank/scan.hpp: the greedy's scan kernels: a row's score pass, and the scans that find a step's best
// candidate (full, score-sorted with a stopping bound, alpha == 0).
//
// Sections: score pass, full scan, sorted scan, alpha == 0 scan. Vector forms are chosen at run
// time (cpu.hpp) and give the same bits as the scalar ones.
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
#include "embtab/rerank/types.hpp"
#include "embtab/vlog.hpp"

namespace embtab {

namespace detail {

// score pass ////////////////////////////////////////////////////////////////////////////////

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

}  // namespace detail

}  // namespace embtab
