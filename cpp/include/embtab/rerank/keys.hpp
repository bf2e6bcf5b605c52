// embtab/rerank/keys.hpp: per-item table keys of a batch (ItemKeys) and the scan bound by weight pattern.
//
// Sections: keys (build_item_keys), class tops (the largest entries per weight class, vector
// forms dispatched at run time), pattern bound.
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

// keys //////////////////////////////////////////////////////////////////////////////////////

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
// ends with the m largest of all four. _mm256_max_pd/_min_pd return their second operand on a
// tie, so the list entry goes second in max and first in min: on +0.0 against -0.0 each keeps
// what class_tops_loop's selects keep (the same bits at every level).
__attribute__((target("avx2"))) inline void class_tops_avx2(const double* T1, const std::uint64_t* in_use,
                                                            const std::int32_t* class_top, std::size_t D,
                                                            std::size_t G4, double* top) {
#define EMBTAB_TOPM_INSERT(x)                                              \
    do {                                                                   \
        const __m256d x_ = (x);                                            \
        if (m > 3) v3 = _mm256_max_pd(_mm256_min_pd(x_, v2), v3);          \
        if (m > 2) v2 = _mm256_max_pd(_mm256_min_pd(x_, v1), v2);          \
        if (m > 1) v1 = _mm256_max_pd(_mm256_min_pd(x_, v0), v1);          \
        v0 = _mm256_max_pd(x_, v0);                                        \
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


}  // namespace detail

}  // namespace embtab
