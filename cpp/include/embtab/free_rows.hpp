// embtab/free_rows.hpp: the set of a table's free rows (rows of erased IDs), lowest first.
//
// A CuckooTable hands a new ID the lowest free row, or a fresh one when none is free
// (docs/site/guide/tables.md). The free rows used to be a binary min-heap: 8 bytes per free row,
// and a pop that walked log2(F) levels of a heap scattered over memory, with a mispredicted
// branch at each, so that inserts into rows an eviction had freed ran several times slower
// than into fresh rows (bench/README.md, "Eviction and reused rows").
//
// FreeRowSet is instead a 64-ary tree of bit words: level 0 holds a bit per row (set = free),
// and a bit of level l + 1 says whether word of level l is non-zero; the top level is one
// word. The lowest free row is found by count-trailing-zeros from the top down, and push, pop
// and contains change or read one word per level: log64 of the rows covered (4 levels for
// 16 M rows). Memory is one bit per row covered (plus 1/63 of that for the upper levels),
// allocated on the first push and grown by doubling, so a table that never erases pays
// nothing.
//
// The walk down is a chain of dependent loads, and a batch of inserts pops the free rows in
// ascending order, a few per level-0 word; so the set also keeps `hint_`, a level-0 word below
// which every word is zero (the word of the last row popped, or lower after a push). top()
// reads that word first and walks the tree only when it has emptied: one load per pop for
// most pops (bench/README.md, "Eviction and reused rows").
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace embtab {

class FreeRowSet {
  public:
    bool empty() const noexcept { return count_ == 0; }
    std::uint64_t size() const noexcept { return count_; }

    // covered is the number of rows that push() can take without allocating.
    std::uint64_t covered() const noexcept { return levels_.empty() ? 0 : levels_[0].size() * 64; }

    // memory_bytes is the bytes the bit words take (their vectors' capacity).
    std::uint64_t memory_bytes() const noexcept {
        std::uint64_t b = 0;
        for (const auto& l : levels_) b += l.capacity() * sizeof(std::uint64_t);
        return b;
    }

    // reserve makes room for rows [0, n) (at least double the rows covered now, so that
    // growing row by row costs amortised O(1)). May throw std::bad_alloc, with the set
    // unchanged.
    void reserve(std::uint64_t n) {
        if (n <= covered()) return;
        const std::uint64_t words = (std::max<std::uint64_t>(n, 2 * covered()) + 63) / 64;
        std::vector<std::vector<std::uint64_t>> next;
        std::vector<std::uint64_t> base(words, 0);
        if (!levels_.empty()) std::copy(levels_[0].begin(), levels_[0].end(), base.begin());
        next.push_back(std::move(base));
        while (next.back().size() > 1) {  // each level: a bit per non-zero word of the one below
            const auto& below = next.back();
            std::vector<std::uint64_t> up((below.size() + 63) / 64, 0);
            for (std::size_t w = 0; w < below.size(); ++w) {
                if (below[w] != 0) up[w / 64] |= std::uint64_t{1} << (w % 64);
            }
            next.push_back(std::move(up));
        }
        levels_.swap(next);  // no throw from here on
    }

    // push adds row r, which must not be in the set. Allocates (may throw std::bad_alloc, the
    // set unchanged) only when r >= covered().
    void push(std::int64_t r) {
        auto u = static_cast<std::uint64_t>(r);
        if (u >= covered()) reserve(u + 1);
        hint_ = std::min<std::uint64_t>(hint_, u / 64);
        for (auto& level : levels_) {
            std::uint64_t& word = level[u / 64];
            const bool was_empty = word == 0;
            word |= std::uint64_t{1} << (u % 64);
            if (!was_empty) break;  // the levels above already mark this word
            u /= 64;
        }
        ++count_;
    }

    // top is the lowest row in the set. Assumes !empty().
    std::int64_t top() const noexcept {
        const std::uint64_t h = levels_[0][hint_];
        if (h != 0) return static_cast<std::int64_t>(hint_ * 64 + static_cast<std::uint64_t>(__builtin_ctzll(h)));
        std::uint64_t u = 0;
        for (std::size_t l = levels_.size(); l-- > 0;) {
            u = u * 64 + static_cast<std::uint64_t>(__builtin_ctzll(levels_[l][u]));
        }
        return static_cast<std::int64_t>(u);
    }

    // pop removes the lowest row. Assumes !empty().
    void pop() noexcept {
        const auto u = static_cast<std::uint64_t>(top());
        remove(u);
        hint_ = u / 64;  // every word below it is zero: u was the lowest row
    }

    bool contains(std::int64_t r) const noexcept {
        const auto u = static_cast<std::uint64_t>(r);
        return r >= 0 && u < covered() && ((levels_[0][u / 64] >> (u % 64)) & 1) != 0;
    }

    // clear empties the set and frees its memory.
    void clear() noexcept {
        levels_.clear();
        levels_.shrink_to_fit();
        count_ = 0;
        hint_ = 0;
    }

    // for_each calls f(row) for every row in the set, in increasing order.
    template <class F>
    void for_each(F&& f) const {
        if (levels_.empty()) return;
        const auto& bits = levels_[0];
        for (std::size_t w = 0; w < bits.size(); ++w) {
            for (std::uint64_t x = bits[w]; x != 0; x &= x - 1) {
                f(static_cast<std::int64_t>(w * 64 + static_cast<std::uint64_t>(__builtin_ctzll(x))));
            }
        }
    }

  private:
    void remove(std::uint64_t u) noexcept {
        for (auto& level : levels_) {
            std::uint64_t& word = level[u / 64];
            word &= ~(std::uint64_t{1} << (u % 64));
            if (word != 0) break;  // the word still has a free row: the levels above stay set
            u /= 64;
        }
        --count_;
    }

    std::vector<std::vector<std::uint64_t>> levels_;  // levels_[0]: a bit per row; back(): one word
    std::uint64_t count_ = 0;
    std::uint64_t hint_ = 0;  // every level-0 word below this one is zero (see the top)
};

}  // namespace embtab
