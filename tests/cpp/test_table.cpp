// C++ unit tests of embtab::CuckooTable (header-only core): random batches of inserts, lookups
// and erases against std::unordered_map, with the table's invariants checked after each batch
// (TableTestAccess), growth under every growth factor, the file format's round trip and its
// refusal of a flipped bit, sizes beyond the machine refused with AllocError, and bulk loading
// (the next index prepared on a background thread) giving the same table as one thread.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#include "check.hpp"
#include "embtab/free_rows.hpp"
#include "embtab/table.hpp"

using embtab::CuckooTable;
using embtab::TableTestAccess;

namespace {

void against_a_map(double growth_factor, std::uint64_t seed, int threads) {
    embtab::TableConfig cfg;
    cfg.growth_factor = growth_factor;
    cfg.seed = seed;
    CuckooTable t(0, cfg);
    std::unordered_map<std::uint64_t, std::int64_t> want;
    std::vector<std::int64_t> free_rows;  // rows erase returned, handed out lowest first
    std::int64_t next_row = 0;
    std::mt19937_64 rng(seed + 1);
    for (int batch = 0; batch < 60; ++batch) {
        const std::size_t n = 1 + rng() % 3000;
        std::vector<std::uint64_t> keys(n);
        for (auto& k : keys) k = rng() % 20000 + (rng() % 2 ? 0 : ~std::uint64_t{0} - 20000);
        if (batch % 3 == 2) {
            const std::uint64_t removed = t.erase(keys.data(), n);
            std::uint64_t expect = 0;
            for (auto k : keys) {
                auto it = want.find(k);
                if (it == want.end()) continue;
                free_rows.push_back(it->second);
                want.erase(it);
                ++expect;
            }
            CHECK(removed == expect);
        } else {
            std::vector<std::int64_t> rows(n);
            t.lookup_or_insert(keys.data(), n, rows.data(), threads);
            for (std::size_t i = 0; i < n; ++i) {
                auto it = want.find(keys[i]);
                if (it == want.end()) {
                    std::int64_t r;
                    if (!free_rows.empty()) {
                        auto lo = std::min_element(free_rows.begin(), free_rows.end());
                        r = *lo;
                        free_rows.erase(lo);
                    } else {
                        r = next_row++;
                    }
                    it = want.emplace(keys[i], r).first;
                }
                CHECK(rows[i] == it->second);
            }
        }
        CHECK(TableTestAccess::check_invariants(t).empty());
        CHECK(t.size() == want.size());
    }
    std::vector<std::uint64_t> probe;
    for (const auto& kv : want) probe.push_back(kv.first);
    probe.push_back(123456789);  // absent
    std::vector<std::int64_t> rows(probe.size());
    t.lookup(probe.data(), probe.size(), rows.data(), threads);
    for (std::size_t i = 0; i + 1 < probe.size(); ++i) CHECK(rows[i] == want[probe[i]]);
    CHECK(rows.back() == embtab::kNoRow || want.count(123456789));
}

void file_round_trip() {
    CuckooTable t;
    std::vector<std::uint64_t> keys(5000);
    for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = i * 0x9E3779B97F4A7C15ULL;
    std::vector<std::int64_t> rows(keys.size());
    t.lookup_or_insert(keys.data(), keys.size(), rows.data(), 1);
    t.erase(keys.data() + 10, 100);
    const std::string bytes = t.serialize();
    auto back = CuckooTable::deserialize(bytes.data(), bytes.size());
    CHECK(back->serialize() == bytes);
    CHECK(TableTestAccess::check_invariants(*back).empty());
    std::string flipped = bytes;
    flipped[bytes.size() / 2] ^= 0x10;
    bool refused = false;
    try {
        CuckooTable::deserialize(flipped.data(), flipped.size());
    } catch (const std::invalid_argument&) {
        refused = true;
    }
    CHECK(refused);
}

void huge_sizes_refused() {
    embtab::TableConfig cfg;
    cfg.max_load_factor = 0.5;
    bool refused = false;
    try {
        CuckooTable t(std::uint64_t{1} << 59, cfg);
    } catch (const embtab::AllocError&) {
        refused = true;
    }
    CHECK(refused);
    CuckooTable t(0, cfg);
    refused = false;
    try {
        t.reserve(std::uint64_t{1} << 50);
    } catch (const std::bad_alloc&) {
        refused = true;
    }
    CHECK(refused);
    CHECK(TableTestAccess::check_invariants(t).empty());
}

// bulk_loading_same_table: batches of new IDs at 2 threads (the one-pass insert, the next
// growth's index prepared in the background) serialize to the same bytes as at 1 thread after
// every batch; prepared memory is there only while the batches are new.
void bulk_loading_same_table() {
    std::mt19937_64 g(5);
    std::vector<std::uint64_t> keys(600000);
    for (auto& k : keys) k = g();
    CuckooTable one, two;
    std::vector<std::int64_t> r1(50000), r2(50000);
    bool prepared = false;
    for (std::size_t i = 0; i < keys.size(); i += 50000) {
        one.lookup_or_insert(keys.data() + i, 50000, r1.data(), 1);
        two.lookup_or_insert(keys.data() + i, 50000, r2.data(), 2);
        CHECK(r1 == r2);
        CHECK(one.serialize() == two.serialize());
        CHECK(one.stats().prepared_bytes == 0);
        prepared = prepared || two.stats().prepared_bytes > 0;
    }
    CHECK(prepared);
    two.lookup_or_insert(keys.data(), 50000, r2.data(), 2);  // known IDs: given back
    CHECK(two.stats().prepared_bytes == 0);
    CHECK(TableTestAccess::check_invariants(two).empty());
}

// FreeRowSet (free_rows.hpp) against std::set: random pushes, pops of the lowest and clears
// over row ranges that cross one, two and three levels of its bit tree (64, 4,096, 262,144).
void free_row_set_against_a_set(std::uint64_t span, std::uint64_t seed) {
    embtab::FreeRowSet f;
    std::set<std::int64_t> want;
    std::mt19937_64 rng(seed);
    CHECK(f.empty() && f.memory_bytes() == 0);
    for (int op = 0; op < 20000; ++op) {
        const auto kind = rng() % 100;
        if (kind < 55) {
            // clustered near the bottom most of the time (pops must then walk a full word),
            // anywhere in [0, span) otherwise
            const std::int64_t r = static_cast<std::int64_t>(rng() % (rng() % 4 == 0 ? span : std::min<std::uint64_t>(span, 200)));
            if (want.insert(r).second) f.push(r);
        } else if (kind < 99) {
            if (!want.empty()) {
                CHECK(!f.empty() && f.top() == *want.begin());
                f.pop();
                want.erase(want.begin());
            }
        } else {
            f.clear();
            want.clear();
        }
        CHECK(f.size() == want.size() && f.empty() == want.empty());
        if (op % 997 == 0) {
            std::vector<std::int64_t> listed;
            f.for_each([&](std::int64_t r) { listed.push_back(r); });
            CHECK(listed == std::vector<std::int64_t>(want.begin(), want.end()));
            for (std::int64_t r : {std::int64_t{0}, static_cast<std::int64_t>(span - 1), std::int64_t{-1}}) {
                CHECK(f.contains(r) == (want.count(r) == 1));
            }
        }
    }
    // reserve keeps what is in the set (the levels above are rebuilt)
    f.clear();
    want.clear();
    for (std::int64_t r : {std::int64_t{5}, std::int64_t{63}, std::int64_t{64}}) {
        f.push(r);
        want.insert(r);
    }
    const std::uint64_t before = f.covered();
    f.reserve(span * 64 + 1);
    CHECK(f.covered() >= span * 64 + 1 && f.covered() >= 2 * before);
    f.push(static_cast<std::int64_t>(span * 64));
    want.insert(static_cast<std::int64_t>(span * 64));
    while (!want.empty()) {
        CHECK(f.top() == *want.begin());
        f.pop();
        want.erase(want.begin());
    }
    CHECK(f.empty());
}

// RwLock (rwlock.hpp) prefers writers: once a writer waits behind a reader, a new reader is
// refused (try_lock_shared) until the writer is through; the writer gets in when the reader
// leaves. Under a reader-preferring lock the new reader would get in at once, forever.
void rwlock_prefers_writers() {
    embtab::RwLock lock;
    lock.lock_shared();  // a reader inside
    std::atomic<int> writer{0};
    std::thread w([&] {
        writer = 1;
        lock.lock();
        writer = 2;
        lock.unlock();
    });
    bool refused = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!refused && std::chrono::steady_clock::now() < deadline) {
        if (writer == 1 && !lock.try_lock_shared()) {
            refused = true;  // the writer is waiting: readers queue behind it
        } else {
            if (writer == 1) lock.unlock_shared();
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    CHECK(refused);
    CHECK(writer == 1);  // still waiting for the first reader
    lock.unlock_shared();
    w.join();
    CHECK(writer == 2);
    CHECK(lock.try_lock_shared());
    lock.unlock_shared();
}

}  // namespace

int main() {
    rwlock_prefers_writers();
    for (std::uint64_t span : {64, 4096, 262144, 1000003}) free_row_set_against_a_set(span, span + 1);
    for (double g : {2.0, 1.5, 1.1, 3.0, 16.0}) against_a_map(g, 7, 1);
    against_a_map(2.0, 11, 4);
    file_round_trip();
    huge_sizes_refused();
    bulk_loading_same_table();
    return embtab_test::failures();
}
