// embtab/rerank/greedy.hpp: the calibrated greedy itself: one user (calibrated_user) and a batch
// (calibrated_batch). The objective and how it is computed: embtab/rerank.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "embtab/hash.hpp"
#include "embtab/parallel.hpp"
#include "embtab/rerank/keys.hpp"
#include "embtab/rerank/scan.hpp"
#include "embtab/rerank/topk.hpp"
#include "embtab/rerank/types.hpp"
#include "embtab/vlog.hpp"

namespace embtab {

namespace detail {

// scratch ///////////////////////////////////////////////////////////////////////////////////

// Scratch holds one thread's per-user work arrays; sized once per chunk, reused per user.
struct Scratch {
    std::vector<double> a;           // [C] working score term (1-lam) s_c; -inf = unavailable
    std::vector<double> v;           // [C] candidate values of one step
    std::vector<double> a_head;      // [C / kSortedChunk] score terms of each chunk's first candidate
    std::vector<std::uint32_t> genre_max_slot;  // [G] slot of the genre's largest-weight entry
    std::vector<double> genre_max_w;   // [G] that weight
    std::vector<double> top;         // the width largest of gmax
    std::vector<std::uint8_t> picked;  // [C]
    std::vector<std::int64_t> cand;  // [C] the row's candidate ids, copied before they are checked
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

}  // namespace detail

// calibrated ////////////////////////////////////////////////////////////////////////////////
//
// One user's greedy runs in named phases over a UserGreedy (the user's inputs, the thread's
// scratch and the state that the steps share):
//   read_row      score terms, sortedness, finite count; the first bad input, if any
//   by_score      lam == 0: plain top-k by score
//   keyed_slots / user_slots
//                 each candidate's fixed-width list of table slots (a batch's per-item keys,
//                 or the user's own (category, weight) entries)
//   then per step: fill_table (T at this step's list mass), choose (the best candidate by the
//   scan that applies), take (the pick's categories join the list)
//   final_objective
//                 F(L) and KL(p || q~(L)) of the finished list.

namespace detail {

template <class S>
struct UserGreedy {
    UserGreedy(const S* s_, const std::int64_t* cand_, std::int64_t C_, const ItemDist& items_, const double* p_,
               const RerankParams& prm_, Scratch& sc_, const ItemKeys* keys_)
        : s(s_), cand(cand_), C(C_), items(items_), p(p_), prm(prm_), sc(sc_), keys(keys_) {}

    // inputs
    const S* s;
    const std::int64_t* cand;
    std::int64_t C;
    const ItemDist& items;
    const double* p;
    const RerankParams& prm;
    Scratch& sc;
    const ItemKeys* keys;
    // derived
    double lam = prm.lam, alpha = prm.alpha;
    double one_m_lam = prm.lam < 1.0 ? 1.0 - prm.lam : 0.0;
    std::int32_t G = items.n_genres, D = items.n_weights;
    std::int32_t width = std::max<std::int32_t>(1, items.max_nnz);
    int stride = width <= 4 ? 4 : width;
    std::size_t n_idx = static_cast<std::size_t>(C) * static_cast<std::size_t>(stride);
    bool keyed = keys && keys->enabled;
    bool alpha0 = prm.alpha == 0.0;
    // state
    double* a = nullptr;             // sc.a: score terms, -inf once picked
    bool sorted = false;
    std::int64_t finite_left = 0;    // finite-score candidates not yet picked
    bool phase2 = false;             // only -inf candidates remain
    std::size_t n_slots = 0;         // table size including the zero slot
    bool use16 = false;              // slots held as 16 bits (sc.idx16), else 32 (sc.idx)
    LazySlots lazy;                  // keyed stride-4 slots (lazy.ix set); else unused
    double uncovered = 0.0;          // alpha == 0: categories with p_g > 0 not in the list

    std::int64_t item_of(std::int64_t c) const { return cand ? cand[c] : c; }

    // read_row fills the score terms a[c] = (1 - lam) s_c and, for a score-sorted row, each
    // chunk's first term; returns the row's first bad input (status ok otherwise).
    RerankError read_row() {
        RerankError err;
        sc.a.resize(static_cast<std::size_t>(C));
        sc.v.resize(static_cast<std::size_t>(C));
        sc.picked.assign(static_cast<std::size_t>(C), 0);
        a = sc.a.data();
        if (cand) {
            // The ids are checked here and read again by every later pass: read from a copy,
            // so that another thread writing the caller's array (the GIL is released) cannot
            // turn a checked id into an out-of-range one.
            sc.cand.assign(cand, cand + C);
            cand = sc.cand.data();
        }
        // Branch-free checks over the row; the slow loop below only names the culprit.
        const RowScan rs = score_pass(s, cand, C, one_m_lam, static_cast<std::uint64_t>(items.n_items), a);
        sorted = rs.sorted;
        finite_left = rs.n_finite;
        if (sorted) {
            // each chunk's first score term before any pick (the sorted scan's stopping test)
            sc.a_head.resize(static_cast<std::size_t>((C + kSortedChunk - 1) / kSortedChunk));
            for (std::size_t j = 0; j < sc.a_head.size(); ++j) sc.a_head[j] = a[static_cast<std::int64_t>(j) * kSortedChunk];
        }
        if (!rs.bad_score && !rs.bad_item) return err;
        constexpr double kPosInf = std::numeric_limits<double>::infinity();
        for (std::int64_t c = 0; c < C; ++c) {
            const double x = static_cast<double>(s[c]);
            const std::int64_t it = item_of(c);
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
        return err;
    }

    // by_score writes the plain top-k by score (lam == 0); -inf candidates last in index order.
    void by_score(std::int64_t* out) {
        const std::int64_t k = prm.k;
        std::vector<double>& v = sc.den;
        v.resize(static_cast<std::size_t>(k));
        if (k <= kTopkHeapMaxK) {
            topk_small_row(a, C, k, v.data(), out);
        } else {
            TopkBuffers<double> tb;
            topk_radix_row(a, C, k, v.data(), out, tb);
        }
    }

    // final_objective writes F(L) and KL(p || q~(L)) of the list out[0..k) (either may be null),
    // from the list's summed weights.
    void final_objective(const std::int64_t* out, double* obj, double* miscal) {
        if (!obj && !miscal) return;
        const std::int64_t k = prm.k;
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
    }

    // add_entry appends the user's table entry (slot, category g, weight w) and notes g's
    // largest-weight slot (the scan bound reads it).
    void add_entry(std::uint32_t slot, std::int32_t g, double w) {
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
    }

    // keyed_slots: global slots key = d * G4 + g + 1 from the batch's ItemKeys. Every step
    // computes the whole dense block (slots of genres with p_g = 0 come out 0, exactly their
    // contribution); no per-user entries.
    void keyed_slots() {
        n_slots = keys->n_slots;
        use16 = true;
        sc.idx16.resize(n_idx);
        std::uint16_t* ix = sc.idx16.data();
        const std::uint16_t* ik = keys->keys.data();
        if (stride == 4) {
            // filled as the sorted scan reaches each chunk, or all at once before any other scan
            lazy = LazySlots{cand, ik, ix, 0};
        } else {
            for (std::int64_t c = 0; c < C; ++c)
                std::memcpy(ix + c * stride, ik + item_of(c) * stride, static_cast<std::size_t>(stride) * sizeof(std::uint16_t));
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
    }

    // user_slots: per-user slots (any number of distinct weights), compacting the (g, d) keys
    // in use in order of first occurrence. The key -> slot map is dense [G * D] while G * D <=
    // kDenseKeyMax, else a hash table of at least 2 * C * stride slots (memory independent of D).
    void user_slots(std::int32_t user_stamp) {
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
        // this user (the key stored) if the key is new (linear probing; the table is at most
        // half full: a user has at most C * width keys).
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

    // slots builds every candidate's slot list and sizes the per-step arrays.
    void slots(std::int32_t user_stamp) {
        sc.genre_used.assign(static_cast<std::size_t>(G), 0);
        sc.used_genres.clear();
        sc.entry_slot.clear();
        sc.entry_genre.clear();
        sc.entry_cw.clear();
        sc.entry_lp.clear();
        sc.entry_w.clear();
        sc.bound_slots.clear();
        if (keyed) {
            keyed_slots();
        } else {
            user_slots(user_stamp);
        }
        sc.table.assign(n_slots, 0.0);
        // alpha == 0: categories with p_g > 0 still absent from the list make KL infinite.
        if (alpha0) {
            sc.cov.assign(n_slots, 0.0);
            for (std::int32_t g = 0; g < G; ++g) uncovered += p[g] > 0.0 ? 1.0 : 0.0;
        }
        sc.W.assign(static_cast<std::size_t>(keyed ? keys->G4 : G), 0.0);
        sc.den.assign(static_cast<std::size_t>(keyed ? keys->G4 : G), 1.0);
        sc.inv.assign(static_cast<std::size_t>(G), 1.0);
    }

    // refresh computes the user's entry e (table slot `slot`) at step t (t1 = t + 1): the ratio
    // form, the overflow form ln(cw) - ln(o), or, for a category still uncovered with alpha
    // == 0, lam p_g ln(w / (t+1)) marked in cov.
    void refresh(std::size_t e, std::uint32_t slot, double t1, bool a0) {
        double* T = sc.table.data();
        const double o = sc.den[static_cast<std::size_t>(sc.entry_genre[e])];
        if (a0 && o == 0.0) {
            T[slot] = sc.entry_lp[e] * std::log(sc.entry_w[e] / t1);
            sc.cov[slot] = 1.0;
        } else {
            // ln((o + cw) / o); the ratio form unless cw / o would overflow (tiny alpha p_g)
            const double r = sc.entry_cw[e] * (1.0 / o);
            T[slot] = sc.entry_lp[e] * (r < 1e300 ? vlog(1.0 + r) : std::log(sc.entry_cw[e]) - std::log(o));
            if (alpha0) sc.cov[slot] = 0.0;
        }
    }

    // keyed_table fills the dense block T[1 + d * G4 + g] = lam p_g ln(1 + (1 - alpha) w_d / o_g)
    // in one vector pass; the same bits as the per-entry forms. A genre with p_g = 0 (and the
    // padding) gets o = 1, any finite value: its slots are lam * 0 * finite = 0.
    void keyed_table(double t1) {
        double* T = sc.table.data();
        double* Wg = sc.W.data();
        double* den = sc.den.data();
        const double* lp = sc.lp.data();
        const std::size_t G4 = static_cast<std::size_t>(keys->G4);
        if (ratio_log_block(sc.cwd.data(), static_cast<std::size_t>(D), Wg, sc.p4.data(), sc.ap.data(), 1.0 - alpha, t1,
                            lp, G4, T + 1))
            return;
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

    // entry_table fills the user's entries: the usual case in one batch of logs (the same bits
    // as refresh, entry by entry), refresh itself when some ratio needs a special form.
    void entry_table(double t1, bool a0) {
        double* T = sc.table.data();
        double* Wg = sc.W.data();
        double* den = sc.den.data();
        double* inv = sc.inv.data();
        for (std::int32_t g : sc.used_genres) {
            den[g] = (1.0 - alpha) * Wg[g] + alpha * p[g] * t1;
            inv[g] = 1.0 / den[g];
        }
        const std::size_t n_entries = sc.entry_slot.size();
        sc.ratio.resize(n_entries);
        double* arg = sc.ratio.data();
        bool special = false;
        for (std::size_t e = 0; e < n_entries; ++e) {
            const double r = sc.entry_cw[e] * inv[sc.entry_genre[e]];
            arg[e] = 1.0 + r;
            special |= !(r < 1e300);  // also an uncovered genre's o == 0 when alpha == 0
        }
        if (special) {
            for (std::size_t e = 0; e < n_entries; ++e) refresh(e, sc.entry_slot[e], t1, a0);
            return;
        }
        vlog_batch(arg, arg, n_entries);
        for (std::size_t e = 0; e < n_entries; ++e) T[sc.entry_slot[e]] = sc.entry_lp[e] * arg[e];
        if (alpha0)
            for (std::size_t e = 0; e < n_entries; ++e) sc.cov[sc.entry_slot[e]] = 0.0;
    }

    // scan_bound is an upper bound on any candidate's table sum at this step (with the 1e-12
    // relative slack): by weight pattern, or the sum of the `width` largest per-genre maxima (a
    // candidate's genres are distinct; entries are >= 0 and a genre's largest is its
    // largest-weight one).
    double scan_bound() {
        const double* T = sc.table.data();
        double bound = 0.0;
        if (keyed && keys->patterns) {
            sc.top.resize(static_cast<std::size_t>(4 * D));
            bound = pattern_bound(*keys, D, T, sc.top.data());
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
        return bound * (1.0 + kBoundSlack);
    }

    // choose returns this step's pick: the alpha == 0 scan while categories are uncovered, the
    // bounded scan of a score-sorted row, else the full scan; if every value is -inf (alpha ==
    // 0), the lowest unpicked index.
    std::int64_t choose(bool a0) {
        const double* T = sc.table.data();
        std::uint32_t* idx = sc.idx.data();
        std::int64_t bi;
        if (a0) {
            bi = use16 ? scan_alpha0(a, sc.idx16.data(), T, sc.cov.data(), C, width, stride, uncovered)
                       : scan_alpha0(a, idx, T, sc.cov.data(), C, width, stride, uncovered);
        } else if (sorted && !phase2 && C > kSortedChunk) {
            const double bound = scan_bound();
            bi = use16 ? scan_best_sorted(a, sc.a_head.data(), sc.idx16.data(), stride, width, T, C, sc.v.data(), bound,
                                          lazy.ix ? &lazy : nullptr)
                       : scan_best_sorted(a, sc.a_head.data(), idx, stride, width, T, C, sc.v.data(), bound);
        } else {
            if (lazy.ix) lazy.fill_to(C);
            bi = use16 ? scan_best(a, sc.idx16.data(), stride, width, T, C, sc.v.data())
                       : scan_best(a, idx, stride, width, T, C, sc.v.data());
        }
        if (bi >= 0) return bi;
        for (std::int64_t c = 0; c < C; ++c)
            if (!sc.picked[static_cast<std::size_t>(c)] && (phase2 || a[c] != kNegInf)) return c;
        return bi;
    }

    // take adds candidate bi to the list: marks it, and adds its categories' weights to W (for
    // a keyed user from its slots, in L1, in the CSR row's order, which the slots keep).
    void take(std::int64_t bi) {
        double* Wg = sc.W.data();
        sc.picked[static_cast<std::size_t>(bi)] = 1;
        a[bi] = kNegInf;
        if (!phase2) --finite_left;
        if (keyed) {  // keyed implies alpha > 0
            const std::uint16_t* ix = sc.idx16.data() + bi * stride;
            for (std::int32_t j = 0; j < width && ix[j]; ++j) Wg[keys->key_genre[ix[j]]] += keys->key_weight[ix[j]];
            return;
        }
        const std::int64_t it = item_of(bi);
        for (std::int64_t e = items.indptr[it]; e < items.indptr[it + 1]; ++e) {
            const std::int32_t g = items.genre[e];
            if (alpha0 && Wg[g] == 0.0 && p[g] > 0.0) uncovered -= 1.0;
            Wg[g] += items.weights[items.wclass[e]];
        }
    }

    // step runs greedy step t and returns its pick.
    std::int64_t step(std::int64_t t) {
        prefetch_step(sc);
        if (!phase2 && finite_left == 0) {
            // Only -inf candidates remain: the KL term alone decides among them.
            phase2 = true;
            for (std::int64_t c = 0; c < C; ++c)
                if (!sc.picked[static_cast<std::size_t>(c)]) a[c] = 0.0;
        }
        const double t1 = static_cast<double>(t + 1);
        const bool a0 = alpha0 && uncovered > 0.0;
        if (keyed) {
            keyed_table(t1);
        } else {
            entry_table(t1, a0);
        }
        const std::int64_t bi = choose(a0);
        take(bi);
        return bi;
    }
};

}  // namespace detail

// calibrated_user reranks one user: scores s[C] (S = float or double), candidate item ids
// cand[C] (nullptr: candidate c is item c), target p[G]; writes k candidate positions (not
// item ids) in list order to out[k], and if obj/miscal are non-null the final objective F(L)
// and KL(p || q~(L)). Returns the first bad input of this row (status ok otherwise).
// user_stamp distinguishes the users sharing sc (distinct within a chunk); keys: the batch's
// per-item keys, or nullptr.
template <class S>
RerankError calibrated_user(const S* s, const std::int64_t* cand, std::int64_t C, const ItemDist& items,
                            const double* p, const RerankParams& prm, std::int64_t* out, double* obj,
                            double* miscal, detail::Scratch& sc, std::int32_t user_stamp,
                            const detail::ItemKeys* keys) {
    detail::UserGreedy<S> ug(s, cand, C, items, p, prm, sc, keys);
    const RerankError err = ug.read_row();
    if (err.status != RerankStatus::ok) return err;
    if (prm.lam == 0.0) {
        ug.by_score(out);
    } else {
        ug.slots(user_stamp);
        for (std::int64_t t = 0; t < prm.k; ++t) out[t] = ug.step(t);
    }
    ug.final_objective(out, obj, miscal);
    return err;
}

// batch /////////////////////////////////////////////////////////////////////////////////////

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
