// embtab/vlog.hpp: a vectorised double-precision natural log for the reranker's tables.
//
// What it computes: log(x) for finite normal x > 0, by the classic fdlibm / FreeBSD algorithm
// (e_log.c: x = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2); s = f / (2 + f); a degree-14
// minimax polynomial in s; error below 1 ulp), evaluated 4 or 8 lanes at a time with GCC/Clang
// vector extensions, dispatched at run time to AVX-512 (8 lanes), AVX2 (4) or the baseline ISA.
// Every lane is a fixed sequence of IEEE additions, multiplications and one division, with no
// table, no FMA and no data-dependent branch, so the result is the same bits on every x86-64
// CPU, on every dispatch path and for any batch length (tests/test_rerank.py caps the dispatch
// with _core._testing.set_isa_limit and checks every level). "No FMA" needs the compiler not to fuse a * b + c: CMakeLists.txt
// builds with -ffp-contract=off (GCC's default, -ffp-contract=fast, with FMA enabled, e.g. by
// -march=native, would change the last bits). It is not the C library's log (the two differ in
// the last bit for a few percent of inputs) but is as accurate. The reranker computes its
// table's ln(1 + r) terms with it in every code path (its rare overflow and alpha == 0 forms
// use std::log, also in every path), so its lists do not depend on which path ran.
//
// Why: a greedy step computes one log per (genre, weight) table entry, 60 per step in the
// benchmark; ratio_log_block computes them, with their ratios, in one vector pass per step,
// with the step's logs side by side (vlog_lockstep: the step waits on its table, and one log's
// latency is about 100 cycles against 24 per log of throughput): all of them on AVX-512, up to
// 16 vectors of 4 at a time on AVX2.
// bench/README.md, "Reranking", lists what each change gained.
//
// Domain: callers pass finite x >= 1 (x = 1 + ratio, ratio >= 0) or any finite normal x > 0;
// zero, negative, subnormal, inf and NaN inputs are outside the contract (vlog_batch does not
// check them; the reranker never passes them). Compilers without vector extensions get
// std::log.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "embtab/cpu.hpp"

namespace embtab {
namespace detail {

// EMBTAB_NO_VECTOR (a build-time define) takes the plain scalar forms below, as compilers without
// GCC/Clang vector extensions do; it exists to test those forms.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(EMBTAB_NO_VECTOR)
#define EMBTAB_VLOG_VECTOR 1
typedef double VlogD __attribute__((vector_size(32)));
typedef std::uint64_t VlogU __attribute__((vector_size(32)));
typedef std::int64_t VlogI __attribute__((vector_size(32)));
typedef double VlogD8 __attribute__((vector_size(64)));
typedef std::uint64_t VlogU8 __attribute__((vector_size(64)));
typedef std::int64_t VlogI8 __attribute__((vector_size(64)));

// vlogv is fdlibm's __ieee754_log on 4 or 8 lanes, both of its final forms computed and one
// selected per lane (its |f| < 2^-20 shortcut is left out: the general form is as accurate).
// It runs in three stages (vlog_reduce, the division s = f / (2 + f), vlog_finish) so that
// vlog_lockstep can run each stage for several vectors side by side, with the same operations.

// vlog_reduce splits x = 2^k (1 + f), sqrt(2)/2 <= 1 + f < sqrt(2): f, k as a double, and the
// high mantissa bits (they choose the final form).
template <class VlogD, class VlogU, class VlogI>
__attribute__((always_inline)) inline void vlog_reduce(const VlogD& x, VlogD& f, VlogD& dk, VlogI& mi) {
    VlogU ux;
    std::memcpy(&ux, &x, sizeof ux);
    const VlogU hx = ux >> 32;  // the high word (sign clear: x > 0)
    const VlogU m = hx & 0x000fffffu;
    const VlogU i = (m + 0x95f64u) & 0x100000u;  // 1 << 20 when the mantissa is >= sqrt(2)
    const VlogU k = (hx >> 20) + (i >> 20);      // biased exponent of 2^k, k = this - 1023
    const VlogU nx = ((m | (i ^ 0x3ff00000u)) << 32) | (ux & 0xffffffffu);  // 1 + f
    VlogD xn;
    std::memcpy(&xn, &nx, sizeof xn);
    f = xn - 1.0;
    // k - 1023 as a double, exactly: the bits of 2^52 + k minus 2^52 + 1023
    const VlogU kb = k + 0x4330000000000000ull;
    std::memcpy(&dk, &kb, sizeof dk);
    dk = dk - (4503599627370496.0 + 1023.0);
    std::memcpy(&mi, &m, sizeof mi);
}

// vlog_finish is the rest of fdlibm's log given s = f / (2 + f).
template <class VlogD, class VlogU, class VlogI>
__attribute__((always_inline)) inline void vlog_finish(const VlogD& f, const VlogD& dk, const VlogD& s,
                                                       const VlogI& mi, VlogD& y) {
    constexpr double ln2_hi = 6.93147180369123816490e-01;  // 3fe62e42 fee00000
    constexpr double ln2_lo = 1.90821492927058770002e-10;  // 3dea39ef 35793c76
    constexpr double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                     Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                     Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                     Lg7 = 1.479819860511658591e-01;
    const VlogD z = s * s;
    const VlogD w = z * z;
    const VlogD t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    const VlogD t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    const VlogD R = t2 + t1;
    const VlogD hfsq = 0.5 * f * f;
    const VlogD r1 = dk * ln2_hi - ((hfsq - (s * (hfsq + R) + dk * ln2_lo)) - f);
    const VlogD r2 = dk * ln2_hi - ((s * (f - R) - dk * ln2_lo) - f);
    // fdlibm's (i | j) > 0 with i = m - 0x6147a, j = 0x6b851 - m: 0x6147a <= m <= 0x6b851, one
    // unsigned compare (all ones where r1 applies)
    VlogU mu;
    std::memcpy(&mu, &mi, sizeof mu);
    const VlogI take1 = (mu - 0x6147au) <= 0xa3d7u;
    VlogI b1, b2;
    std::memcpy(&b1, &r1, sizeof b1);
    std::memcpy(&b2, &r2, sizeof b2);
    const VlogI r = (b1 & take1) | (b2 & ~take1);  // a bitwise select: no vector ?: needed
    std::memcpy(&y, &r, sizeof y);
}

template <class VlogD, class VlogU, class VlogI>
__attribute__((always_inline)) inline void vlogv(const VlogD& x, VlogD& y) {
    VlogD f, dk;
    VlogI mi;
    vlog_reduce<VlogD, VlogU, VlogI>(x, f, dk, mi);
    const VlogD s = f / (2.0 + f);
    vlog_finish<VlogD, VlogU, VlogI>(f, dk, s, mi, y);
}

// vlog_lockstep replaces v[j] by log(v[j]) for j < M, each stage for all M vectors before the
// next: M independent chains side by side, so a short batch (a greedy step's table, whose
// result the step waits on) is not bound by one log's latency (about 100 cycles here; 9 logs
// of 8 lanes took 43 ns side by side against 60 ns one after another). The same bits as vlogv.
template <int M, class VlogD, class VlogU, class VlogI>
__attribute__((always_inline)) inline void vlog_lockstep(VlogD* v) {
    VlogD f[M], dk[M], s[M];
    VlogI mi[M];
#pragma GCC unroll 16
    for (int j = 0; j < M; ++j) vlog_reduce<VlogD, VlogU, VlogI>(v[j], f[j], dk[j], mi[j]);
#pragma GCC unroll 16
    for (int j = 0; j < M; ++j) s[j] = f[j] / (2.0 + f[j]);
#pragma GCC unroll 16
    for (int j = 0; j < M; ++j) vlog_finish<VlogD, VlogU, VlogI>(f[j], dk[j], s[j], mi[j], v[j]);
}

__attribute__((always_inline)) inline void vlog4v(const VlogD& x, VlogD& y) { vlogv<VlogD, VlogU, VlogI>(x, y); }

__attribute__((always_inline)) inline void vlog4(const double* in, double* out) {
    VlogD x;
    std::memcpy(&x, in, sizeof x);
    VlogD y;
    vlog4v(x, y);
    std::memcpy(out, &y, sizeof y);
}

// ratio_inverse sets inv = 1 / o_g for the lanes' genres, o_g = oma W_g + ap_g t1 where
// p_g > 0, else 1.
template <class VD, class VI>
__attribute__((always_inline)) inline void ratio_inverse(const VD& wv, const VD& pv, const VD& av, double oma,
                                                         double t1, VD& inv) {
    const VD one = VD{} + 1.0;
    VI one_bits;
    std::memcpy(&one_bits, &one, sizeof one_bits);
    const VD o = oma * wv + av * t1;
    const VI pos = pv > 0.0;
    VI ob;
    std::memcpy(&ob, &o, sizeof ob);
    ob = (ob & pos) | (one_bits & ~pos);
    VD ov;
    std::memcpy(&ov, &ob, sizeof ov);
    inv = 1.0 / ov;
}

// ratio_log_lanes does ratio_log_block's blocks of L = sizeof(VD) / 8 genres from g while they
// fit below G4; returns the first genre not done and clears `ok` if some ratio is >= 1e300.
template <class VD, class VU, class VI>
__attribute__((always_inline)) inline std::size_t ratio_log_lanes(const double* cw, std::size_t D, const double* W,
                                                                  const double* p, const double* ap, double oma,
                                                                  double t1, const double* lp, std::size_t g,
                                                                  std::size_t G4, double* T, bool& ok_out) {
    constexpr std::size_t L = sizeof(VD) / sizeof(double);
    VI ok = VI{} - 1;
    for (; g + L <= G4; g += L) {
        VD wv, pv, av, lv;
        std::memcpy(&wv, W + g, sizeof wv);
        std::memcpy(&pv, p + g, sizeof pv);
        std::memcpy(&av, ap + g, sizeof av);
        std::memcpy(&lv, lp + g, sizeof lv);
        VD inv;  // one division per genre; r = cw * (1 / o) for every weight
        ratio_inverse<VD, VI>(wv, pv, av, oma, t1, inv);
        for (std::size_t d = 0; d < D; ++d) {
            const VD c = VD{} + cw[d];
            const VD r = c * inv;
            ok &= (r < 1e300);
            VD y;
            vlogv<VD, VU, VI>(1.0 + r, y);
            y = lv * y;
            std::memcpy(T + d * G4 + g, &y, sizeof y);
        }
    }
    for (std::size_t l = 0; l < L; ++l) ok_out &= ok[l] != 0;
    return g;
}

// ratio_log_loop: see ratio_log_block (4 lanes).
__attribute__((always_inline)) inline bool ratio_log_loop(const double* cw, std::size_t D, const double* W,
                                                          const double* p, const double* ap, double oma, double t1,
                                                          const double* lp, std::size_t G4, double* T) {
    bool ok = true;
    ratio_log_lanes<VlogD, VlogU, VlogI>(cw, D, W, p, ap, oma, t1, lp, 0, G4, T, ok);
    return ok;
}

// vlog_loop writes y[j] = log(x[j]) for j < n (x and y may be the same array).
__attribute__((always_inline)) inline void vlog_loop(const double* x, double* y, std::size_t n) {
    std::size_t j = 0;
    for (; j + 4 <= n; j += 4) vlog4(x + j, y + j);
    if (j < n) {
        double v[4] = {1.0, 1.0, 1.0, 1.0};
        std::memcpy(v, x + j, (n - j) * sizeof(double));
        vlog4(v, v);
        std::memcpy(y + j, v, (n - j) * sizeof(double));
    }
}

#if defined(__x86_64__) || defined(__i386__)
// kLockstepMax: most vectors ratio_log_lockstep takes at once (their state stays in registers).
inline constexpr std::size_t kLockstepMax = 12;

// lockstep_vectors is how many 8-lane vectors ratio_log_lockstep takes for D classes of G4
// genres: D per full block of 8 genres, and for a 4-genre tail one per two classes.
inline std::size_t lockstep_vectors(std::size_t D, std::size_t G4) {
    return D * (G4 / 8) + (G4 % 8 ? (D + 1) / 2 : 0);
}

// lockstep_twice is q[0..4) in both halves of an 8-lane vector.
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) inline VlogD8 lockstep_twice(const double* q) {
    // (the maskz form: GCC 12 warns on the plain one's undefined pass-through operand)
    return (VlogD8)_mm512_maskz_broadcast_f64x4(static_cast<__mmask8>(0xff), _mm256_loadu_pd(q));
}

// ratio_log_lockstep is ratio_log_block on 8 lanes (AVX-512) with all of its logs side by side
// (vlog_lockstep). A 4-genre tail (G4 % 8 == 4) is loaded into both halves of a vector, so
// classes d and d + 1 share one (lanes 0-3 and 4-7, stored as two 4-lane halves): 8 vectors
// instead of 9 for 3 classes of 20 genres. The same operations per entry as ratio_log_lanes. Assumes
// lockstep_vectors(D, G4) <= kLockstepMax.
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) inline bool ratio_log_lockstep(
        const double* cw, std::size_t D, const double* W, const double* p, const double* ap, double oma, double t1,
        const double* lp, std::size_t G4, double* T) {
    using VD = VlogD8;
    using VU = VlogU8;
    using VI = VlogI8;
    const std::size_t nf = G4 / 8;  // full blocks
    const std::size_t gt = nf * 8;  // the tail's first genre
    const std::size_t nt = G4 % 8 ? (D + 1) / 2 : 0;
    const std::size_t nv = D * nf + nt;
    VD x[kLockstepMax];
    __m512d lpv[kLockstepMax + 1];  // lpv[b] for full block b, lpv[nf] for the tail
    VI ok = VI{} - 1;
    for (std::size_t b = 0; b < nf; ++b) {
        const std::size_t g = b * 8;
        lpv[b] = _mm512_loadu_pd(lp + g);
        VD inv;
        ratio_inverse<VD, VI>((VD)_mm512_loadu_pd(W + g), (VD)_mm512_loadu_pd(p + g), (VD)_mm512_loadu_pd(ap + g),
                              oma, t1, inv);
        for (std::size_t d = 0; d < D; ++d) {
            const VD r = (VD{} + cw[d]) * inv;
            ok &= (r < 1e300);
            x[d * nf + b] = 1.0 + r;
        }
    }
    if (nt) {
        // the tail's 4 genres in both halves
        lpv[nf] = (__m512d)lockstep_twice(lp + gt);
        VD inv;
        ratio_inverse<VD, VI>(lockstep_twice(W + gt), lockstep_twice(p + gt), lockstep_twice(ap + gt), oma, t1, inv);
        for (std::size_t j = 0; j < nt; ++j) {
            const double c0 = cw[2 * j], c1 = cw[std::min(2 * j + 1, D - 1)];
            const VD c = {c0, c0, c0, c0, c1, c1, c1, c1};
            const VD r = c * inv;
            ok &= (r < 1e300);
            x[D * nf + j] = 1.0 + r;
        }
    }
    switch (nv) {  // all side by side (a case per count: the chains must be unrolled)
#define EMBTAB_LOCKSTEP_CASE(M) \
    case M: vlog_lockstep<M, VD, VU, VI>(x); break;
        EMBTAB_LOCKSTEP_CASE(1) EMBTAB_LOCKSTEP_CASE(2) EMBTAB_LOCKSTEP_CASE(3) EMBTAB_LOCKSTEP_CASE(4)
        EMBTAB_LOCKSTEP_CASE(5) EMBTAB_LOCKSTEP_CASE(6) EMBTAB_LOCKSTEP_CASE(7) EMBTAB_LOCKSTEP_CASE(8)
        EMBTAB_LOCKSTEP_CASE(9) EMBTAB_LOCKSTEP_CASE(10) EMBTAB_LOCKSTEP_CASE(11) EMBTAB_LOCKSTEP_CASE(12)
#undef EMBTAB_LOCKSTEP_CASE
        default: break;
    }
    for (std::size_t d = 0; d < D; ++d)
        for (std::size_t b = 0; b < nf; ++b)
            _mm512_storeu_pd(T + d * G4 + b * 8, (__m512d)((VD)lpv[b] * x[d * nf + b]));
    for (std::size_t j = 0; j < nt; ++j) {
        const __m512d y = (__m512d)((VD)lpv[nf] * x[D * nf + j]);
        // lanes 0-3 hold class 2j, lanes 4-7 class 2j + 1; plain 4-lane stores (the scans' loads
        // that follow wait on a masked store until it leaves the store buffer)
        _mm256_storeu_pd(T + 2 * j * G4 + gt, _mm512_maskz_extractf64x4_pd(static_cast<__mmask8>(0xf), y, 0));
        if (2 * j + 1 < D)
            _mm256_storeu_pd(T + (2 * j + 1) * G4 + gt, _mm512_maskz_extractf64x4_pd(static_cast<__mmask8>(0xf), y, 1));
    }
    bool all = true;
    for (std::size_t l = 0; l < 8; ++l) all &= ok[l] != 0;
    return all;
}

// AVX-512: 8 lanes, all logs side by side when they fit (ratio_log_lockstep), else blocks of 8
// and then a 4-lane tail (G4 is a multiple of 4); the same IEEE operations per lane.
__attribute__((target("avx512f,avx512dq,avx512vl"))) inline bool ratio_log_avx512(const double* cw, std::size_t D, const double* W,
                                                                const double* p, const double* ap, double oma,
                                                                double t1, const double* lp, std::size_t G4,
                                                                double* T) {
    // (D >= 1 keeps the full blocks within kLockstepMax too; D == 0 writes nothing either way)
    if (D > 0 && lockstep_vectors(D, G4) <= kLockstepMax)
        return ratio_log_lockstep(cw, D, W, p, ap, oma, t1, lp, G4, T);
    bool ok = true;
    const std::size_t g = ratio_log_lanes<VlogD8, VlogU8, VlogI8>(cw, D, W, p, ap, oma, t1, lp, 0, G4, T, ok);
    ratio_log_lanes<VlogD, VlogU, VlogI>(cw, D, W, p, ap, oma, t1, lp, g, G4, T, ok);
    return ok;
}
__attribute__((target("avx512f,avx512dq,avx512vl"))) inline void vlog_batch_avx512(const double* x, double* y, std::size_t n) {
    std::size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        VlogD8 v, r;
        std::memcpy(&v, x + j, sizeof v);
        vlogv<VlogD8, VlogU8, VlogI8>(v, r);
        std::memcpy(y + j, &r, sizeof r);
    }
    vlog_loop(x + j, y + j, n - j);
}
// kLockstep4Max: most 4-lane vectors ratio_log_avx2 takes side by side. 16 vectors' state does not
// fit AVX2's 16 registers; the spills cost less than the latency they hide (bench/README.md,
// "Reranking on an AVX2-only CPU").
inline constexpr std::size_t kLockstep4Max = 16;

// vlog4_lockstep replaces x[j] by log(x[j]) for j < m <= kLockstep4Max, all side by side.
__attribute__((target("avx2"), always_inline)) inline void vlog4_lockstep(VlogD* x, std::size_t m) {
    switch (m) {  // a case per count: the chains must be unrolled
#define EMBTAB_LOCKSTEP4_CASE(M) \
    case M: vlog_lockstep<M, VlogD, VlogU, VlogI>(x); break;
        EMBTAB_LOCKSTEP4_CASE(1) EMBTAB_LOCKSTEP4_CASE(2) EMBTAB_LOCKSTEP4_CASE(3) EMBTAB_LOCKSTEP4_CASE(4)
        EMBTAB_LOCKSTEP4_CASE(5) EMBTAB_LOCKSTEP4_CASE(6) EMBTAB_LOCKSTEP4_CASE(7) EMBTAB_LOCKSTEP4_CASE(8)
        EMBTAB_LOCKSTEP4_CASE(9) EMBTAB_LOCKSTEP4_CASE(10) EMBTAB_LOCKSTEP4_CASE(11) EMBTAB_LOCKSTEP4_CASE(12)
        EMBTAB_LOCKSTEP4_CASE(13) EMBTAB_LOCKSTEP4_CASE(14) EMBTAB_LOCKSTEP4_CASE(15) EMBTAB_LOCKSTEP4_CASE(16)
#undef EMBTAB_LOCKSTEP4_CASE
        default: break;
    }
}

// vlog4_lockstep_store writes dst[j] = lpv[j] * log(x[j]) for j < m; returns 0.
__attribute__((target("avx2"), always_inline)) inline std::size_t vlog4_lockstep_store(VlogD* x, const VlogD* lpv,
                                                                                      double* const* dst,
                                                                                      std::size_t m) {
    vlog4_lockstep(x, m);
    for (std::size_t j = 0; j < m; ++j) {
        const VlogD y = lpv[j] * x[j];
        std::memcpy(dst[j], &y, sizeof y);
    }
    return 0;
}

// AVX2: ratio_log_block on 4 lanes with the logs side by side, kLockstep4Max vectors at a time
// (for 3 classes of 20 genres: all 15 at once). Block by block of 4 genres (one division each),
// class by class within a block, as ratio_log_lanes: the same operations per entry.
__attribute__((target("avx2"))) inline bool ratio_log_avx2(const double* cw, std::size_t D, const double* W,
                                                           const double* p, const double* ap, double oma, double t1,
                                                           const double* lp, std::size_t G4, double* T) {
    using VD = VlogD;
    using VI = VlogI;
    VD x[kLockstep4Max];
    double* dst[kLockstep4Max];  // where x[j] goes, times lpv[j]
    VD lpv[kLockstep4Max];
    std::size_t m = 0;
    VI ok = VI{} - 1;
    for (std::size_t g = 0; g + 4 <= G4; g += 4) {
        VD wv, pv, av, lv;
        std::memcpy(&wv, W + g, sizeof wv);
        std::memcpy(&pv, p + g, sizeof pv);
        std::memcpy(&av, ap + g, sizeof av);
        std::memcpy(&lv, lp + g, sizeof lv);
        VD inv;
        ratio_inverse<VD, VI>(wv, pv, av, oma, t1, inv);
        for (std::size_t d = 0; d < D; ++d) {
            const VD r = (VD{} + cw[d]) * inv;
            ok &= (r < 1e300);
            x[m] = 1.0 + r;
            lpv[m] = lv;
            dst[m] = T + d * G4 + g;
            if (++m == kLockstep4Max) m = vlog4_lockstep_store(x, lpv, dst, m);
        }
    }
    if (m) vlog4_lockstep_store(x, lpv, dst, m);
    bool all = true;
    for (std::size_t l = 0; l < 4; ++l) all &= ok[l] != 0;
    return all;
}
__attribute__((target("avx2"))) inline void vlog_batch_avx2(const double* x, double* y, std::size_t n) {
    vlog_loop(x, y, n);
}
#endif
inline void vlog_batch_base(const double* x, double* y, std::size_t n) { vlog_loop(x, y, n); }
inline bool ratio_log_base(const double* cw, std::size_t D, const double* W, const double* p, const double* ap,
                           double oma, double t1, const double* lp, std::size_t G4, double* T) {
    return ratio_log_loop(cw, D, W, p, ap, oma, t1, lp, G4, T);
}
#endif

}  // namespace detail

// vlog_batch writes y[j] = log(x[j]) for j < n, x finite normal and > 0 (see the header).
inline void vlog_batch(const double* x, double* y, std::size_t n) {
#if defined(EMBTAB_VLOG_VECTOR)
#if defined(__x86_64__) || defined(__i386__)
    if (detail::use_avx512()) {
        detail::vlog_batch_avx512(x, y, n);
        return;
    }
    if (detail::use_avx2()) {
        detail::vlog_batch_avx2(x, y, n);
        return;
    }
#endif
    detail::vlog_batch_base(x, y, n);
#else
    for (std::size_t j = 0; j < n; ++j) y[j] = std::log(x[j]);
#endif
}

// ratio_log_block writes T[d * G4 + g] = lp[g] * log(1 + r), r = cw[d] * (1 / o_g), with
// o_g = oma * W[g] + ap[g] * t1 where p[g] > 0 and o_g = 1 elsewhere, for d < D, g < G4 (G4 a
// multiple of 4; lp finite); each entry the same bits as lp[g] * vlog(1.0 + cw[d] * (1.0 / o_g)).
// (One division per genre, not per entry: r is within 2 ulp of the exact cw / o.) Returns
// false when some r is not below 1e300 (T is then unspecified: the caller takes its overflow
// form).
inline bool ratio_log_block(const double* cw, std::size_t D, const double* W, const double* p, const double* ap,
                            double oma, double t1, const double* lp, std::size_t G4, double* T) {
#if defined(EMBTAB_VLOG_VECTOR)
#if defined(__x86_64__) || defined(__i386__)
    if (detail::use_avx512()) return detail::ratio_log_avx512(cw, D, W, p, ap, oma, t1, lp, G4, T);
    if (detail::use_avx2()) return detail::ratio_log_avx2(cw, D, W, p, ap, oma, t1, lp, G4, T);
#endif
    return detail::ratio_log_base(cw, D, W, p, ap, oma, t1, lp, G4, T);
#else
    bool ok = true;
    for (std::size_t g = 0; g < G4; ++g) {
        const double o = p[g] > 0.0 ? oma * W[g] + ap[g] * t1 : 1.0;
        for (std::size_t d = 0; d < D; ++d) {
            const double r = cw[d] * (1.0 / o);
            ok &= r < 1e300;
            T[d * G4 + g] = lp[g] * std::log(1.0 + r);
        }
    }
    return ok;
#endif
}

// vlog is vlog_batch on one value (the same bits as in a batch).
inline double vlog(double x) {
    double y;
    vlog_batch(&x, &y, 1);
    return y;
}

}  // namespace embtab
