// embtab/table.hpp: a bucketized cuckoo hash table from raw 64-bit IDs to embedding rows.
//
// Every ID (any 64-bit value: no key is reserved) gets its own row number in [0, num_rows()).
// Rows are handed out lowest-free-first: a new ID takes the lowest row returned by erase, else
// the next never-used row. Rows are stable: growth rehashes the index but never moves an ID
// to another row. The whole state is therefore determined by the (key, row) pairs and
// num_rows(), which is what serialize() writes.
//
// Layout: an array of 64-byte buckets (kSlotsPerBucket keys + rows, one cache line). A key
// lives in one of its two candidate buckets, chosen by embtab::mix64 of the key under the
// table's seed. An insert into two full buckets searches a displacement path breadth-first
// (at most kMaxBfsPathLen moves, fixed-size queue, as in libcuckoo / Li et al. EuroSys 2014)
// and grows the table by growth_factor when none exists or the load factor would pass
// max_load_factor. Growth by a whole factor (the default 2) splits each old bucket into its
// children in one sequential pass (split(), in chunks on the inserting batch's threads);
// other factors re-place every key (rehash()).
//
// Bulk loading: while batches of more than kParallelGrain IDs are mostly new (at least half of
// the batch inserted), a batch allowed two or more threads takes the one-pass insert (probing
// first in parallel would only find misses), and, once the load has passed kPrepareAtLoad of
// max_load_factor, the table prepares the index of its next growth on a background thread: it
// allocates that array and faults its pages in while the inserting thread goes on, so that the
// growth, when it comes, finds its memory ready. Only a table whose last growth came from its
// inserts prepares (not one sized by its capacity or reserve(), as the torch modules size
// theirs). The first batch that is not bulk (or allows one thread), a batch that fails,
// clear(), assign(), a growth by reserve() and the destructor give a prepared array back (after
// the thread's current 2 MiB chunk). Preparing is a hint: it never changes a result, and it is
// skipped when it cannot be had (no memory, no thread, more than half of the free RAM or of the
// cgroup's memory left). While it lasts, the table holds the next index beside the current one
// (stats: prepared_bytes): (1 + growth_factor) times the index alone. See
// docs/site/guide/tables.md, "Bulk loading".
//
// Concurrency contract: every public member function is safe to call concurrently with every
// other. Readers (lookup, contains, items, serialize, size, stats, ...) share a reader lock;
// mutators (lookup_or_insert, erase, reserve, clear, assign) hold the writer lock for the whole
// batch, so each batch is applied atomically with respect to every other call. The lock
// (rwlock.hpp) prefers writers: a writer waits for the readers already in, not for readers
// that keep arriving; and a forked child can use a table the parent was reading at the fork.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>  // std::shared_lock (the mutex is rwlock.hpp's RwLock)
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <stdlib.h>
#include <pthread.h>
#include <sys/mman.h>

#include "embtab/alloc.hpp"
#include "embtab/config.hpp"
#include "embtab/free_rows.hpp"
#include "embtab/hash.hpp"
#include "embtab/parallel.hpp"
#include "embtab/rwlock.hpp"

namespace embtab {

// TableFullError: lookup_or_insert would exceed max_size. Thrown before anything is changed.
struct TableFullError : std::runtime_error {
    TableFullError(const std::string& msg, std::uint64_t capacity_, double load_factor_)
        : std::runtime_error(msg), capacity(capacity_), load_factor(load_factor_) {}
    std::uint64_t capacity;
    double load_factor;
};

// TableConfig: what a table is built with. Checked by validate(); never mutated by the table.
struct TableConfig {
    double growth_factor = kDefaultGrowthFactor;     // bucket count multiplier on growth, in (1, 16]
    double max_load_factor = kDefaultMaxLoadFactor;  // grow before the load passes this
    std::uint64_t max_size = 0;                      // most live IDs; 0 = unbounded
    std::uint64_t seed = 0;                          // hash seed (mix64's seed)

    // validate throws std::invalid_argument naming the bad field.
    void validate() const {
        if (!(growth_factor > 1.0 && growth_factor <= 16.0)) {
            throw std::invalid_argument("growth_factor must be in (1, 16], got " + exact(growth_factor));
        }
        if (!(max_load_factor >= kMinMaxLoadFactor && max_load_factor <= kMaxMaxLoadFactor)) {
            throw std::invalid_argument("max_load_factor must be in [" + exact(kMinMaxLoadFactor) + ", " +
                                        exact(kMaxMaxLoadFactor) + "], got " + exact(max_load_factor));
        }
    }

    // exact formats x with the digits that tell it from its neighbours (std::to_string's six
    // decimals printed 0.4999999 as 0.500000, inside the range it was refused for).
    static std::string exact(double x) {
        char buf[32];
        for (int digits = 1; digits <= 17; ++digits) {   // the shortest form that reads back as x
            std::snprintf(buf, sizeof buf, "%.*g", digits, x);
            if (std::strtod(buf, nullptr) == x) break;
        }
        return buf;
    }
};

// TableStats: counters a user tuning a table wants to see. Cumulative since construction
// (or load), except the gauges (size, capacity, ...), which describe the table now.
struct TableStats {
    std::uint64_t size = 0, capacity = 0, num_buckets = 0, num_rows = 0, free_rows = 0;
    double load_factor = 0.0;
    std::uint64_t memory_bytes = 0;       // buckets + free-row bits
    std::uint64_t free_row_bytes = 0;     // the free rows' bits (free_rows.hpp)
    std::uint64_t prepared_bytes = 0;     // the next growth's index, prepared while bulk loading
    std::uint64_t lookups = 0;            // keys looked up (lookup, contains, lookup_or_insert)
    std::uint64_t second_bucket_probes = 0;  // lookups that had to read the second bucket
    std::uint64_t inserts = 0, erases = 0;
    std::uint64_t displacements = 0;      // keys moved along BFS paths
    std::uint64_t bfs_searches = 0;       // inserts that found both buckets full
    std::uint64_t max_bfs_path = 0;       // longest displacement path used
    std::uint64_t grows = 0;
    std::uint64_t grows_on_failed_insert = 0;  // growths forced by a BFS that found no path
    double load_factor_at_last_grow = 0.0;
    std::uint64_t rehashed_keys = 0;
};

struct TableTestAccess;

class CuckooTable {
  public:
    // The constructor reserves room for `capacity` IDs under max_load_factor.
    // Throws std::invalid_argument on a bad config, AllocError if the index for `capacity` IDs
    // overflows or is more than the machine's memory.
    explicit CuckooTable(std::uint64_t capacity = 0, TableConfig config = {}) : config_(config) {
        config_.validate();
        buckets_ = Buckets(buckets_for(capacity));
    }

    ~CuckooTable() { drop_prepared(); }

    CuckooTable(const CuckooTable&) = delete;
    CuckooTable& operator=(const CuckooTable&) = delete;

    const TableConfig& config() const noexcept { return config_; }

    // lookup ///////////////////////////////////////////////////////////////////////////////

    // lookup writes the row of each of keys[0..n) to rows_out, kNoRow where absent.
    // Reader: safe concurrently with everything. Parallel over the batch.
    // Returns how many of the keys are absent (their rows_out is -1).
    std::size_t lookup(const std::uint64_t* keys, std::size_t n, std::int64_t* rows_out, int num_threads) const {
        std::shared_lock<RwLock> lock(mutex_);
        return lookup_unlocked(keys, n, rows_out, num_threads);
    }

    // contains writes 1 for each present key, else 0. Reader.
    void contains(const std::uint64_t* keys, std::size_t n, std::uint8_t* out, int num_threads) const {
        std::shared_lock<RwLock> lock(mutex_);
        parallel_for(n, num_threads, kParallelGrain, [&](std::size_t b, std::size_t e) {
            std::uint64_t second = 0;
            probe_batch(buckets_, keys + b, e - b, [&](std::size_t i, std::int64_t row, bool in_second) {
                out[b + i] = row != kNoRow;
                second += in_second;
            });
            count_lookups(e - b, second);
        });
    }

    // insert ///////////////////////////////////////////////////////////////////////////////

    // lookup_or_insert writes each key's row to rows_out, giving new keys rows in order of
    // first occurrence. If max_size would be exceeded, throws TableFullError and changes nothing.
    // Writer. Hits are found in parallel; misses are inserted serially in batch order, so the
    // result is identical for any num_threads. Any other failure (std::bad_alloc in a growth;
    // std::invalid_argument for an ID that cannot be placed, see insert_new) undoes the batch
    // before it propagates: the same IDs, rows, free rows and num_rows as before the call (the
    // index may keep a growth's room); rows_out is then unspecified.
    void lookup_or_insert(const std::uint64_t* keys, std::size_t n, std::int64_t* rows_out, int num_threads) {
        std::unique_lock<RwLock> lock(mutex_);
        const std::uint64_t next_row_before = next_row_;
        const std::uint64_t size_before = size_;
        reused_rows_.clear();
        try {
            lookup_or_insert_locked(keys, n, rows_out, num_threads);
        } catch (...) {
            undo_inserts(next_row_before, size_before);
            bulk_ = false;
            drop_prepared();
            throw;
        }
    }

  private:
    void lookup_or_insert_locked(const std::uint64_t* keys, std::size_t n, std::int64_t* rows_out, int num_threads) {
        // A growth during this batch splits the index on the batch's threads.
        struct GrowThreads {
            int& slot;
            ~GrowThreads() { slot = 1; }
        } grow_threads{grow_threads_};
        grow_threads_ = resolve_threads(num_threads);
        const bool may_fill = config_.max_size != 0 && size_ + n > config_.max_size;
        const int threads = grow_threads_;
        const std::uint64_t size_at_start = size_;
        if (!may_fill && (n <= kParallelGrain || threads == 1 || bulk_)) {
            // One fused pass: probe, and insert at once on a miss. Cannot exceed max_size.
            insert_misses([keys](std::size_t j) { return keys[j]; }, n, [](std::size_t j) { return j; }, rows_out);
            count_lookups(n, 0);
        } else {
            lookup_unlocked(keys, n, rows_out, num_threads);
            std::vector<std::size_t> misses;
            for (std::size_t i = 0; i < n; ++i) {
                if (rows_out[i] == kNoRow) misses.push_back(i);
            }
            if (config_.max_size != 0 && size_ + misses.size() > config_.max_size) {
                // The misses' IDs are copied once, counted, and inserted from the copy: read
                // twice from the caller's array, which another thread may write during the call,
                // the insert could bring IDs the count never saw, past max_size.
                std::vector<std::uint64_t> fresh_keys(misses.size());
                for (std::size_t j = 0; j < misses.size(); ++j) fresh_keys[j] = keys[misses[j]];
                const std::uint64_t fresh = count_distinct(fresh_keys);
                if (size_ + fresh > config_.max_size) throw_full(fresh);
                insert_misses([&](std::size_t j) { return fresh_keys[j]; }, misses.size(),
                              [&](std::size_t j) { return misses[j]; }, rows_out);
            } else if (!misses.empty()) {
                insert_misses([&](std::size_t j) { return keys[misses[j]]; }, misses.size(),
                              [&](std::size_t j) { return misses[j]; }, rows_out);
            }
        }
        // Bulk loading (see the top of this file): this batch decides the next one's path and
        // whether the next growth's index is prepared now.
        bulk_ = n > kParallelGrain && 2 * (size_ - size_at_start) >= n;
        if (bulk_ && threads >= 2) {
            prepare_next();
        } else {
            drop_prepared();
        }
    }

    // undo_inserts removes every entry whose row this call handed out (a row >= next_row_before,
    // or one taken from the free rows: reused_rows_) and gives those rows back, so that the
    // table holds what it held before. One pass over the index: the failure path only.
    void undo_inserts(std::uint64_t next_row_before, std::uint64_t size_before) noexcept {
        std::sort(reused_rows_.begin(), reused_rows_.end());
        auto taken = [&](std::int64_t r) {
            return static_cast<std::uint64_t>(r) >= next_row_before ||
                   std::binary_search(reused_rows_.begin(), reused_rows_.end(), r);
        };
        for (std::uint64_t b = 0; b < buckets_.count && size_ > size_before; ++b) {
            Bucket& bk = buckets_.data[b];
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] != kNoRow && taken(bk.rows[s])) {
                    bk.rows[s] = kNoRow;
                    bk.keys[s] = 0;
                    --size_;
                }
            }
        }
        next_row_ = next_row_before;
        // Each was popped from free_rows_ in this call: covered by its bits, so push cannot allocate.
        for (std::int64_t r : reused_rows_) free_rows_.push(r);
        reused_rows_.clear();
    }

  public:

    // erase removes each present key and returns its row to the free pool; returns the number
    // of keys removed (a key repeated in the batch counts once). Throws std::bad_alloc (table
    // unchanged) only if the free rows' bits cannot grow to cover every row handed out. Keys
    // are hashed and their buckets prefetched ahead, as lookups are. Writer.
    std::uint64_t erase(const std::uint64_t* keys, std::size_t n) {
        std::unique_lock<RwLock> lock(mutex_);
        if (n == 0) return 0;
        free_rows_.reserve(next_row_);  // the one step that can throw: before any change
        std::uint64_t removed = 0;
        probe_batch(buckets_, keys, n, [&](std::size_t i, std::int64_t row, bool) {
            if (row == kNoRow) return;
            const BucketPair bp = buckets_of(keys[i], buckets_.count);
            for (std::uint64_t b : {bp.first, bp.second}) {
                Bucket& bk = buckets_.data[b];
                for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                    if (bk.rows[s] == row && bk.keys[s] == keys[i]) {
                        free_rows_.push(row);
                        bk.rows[s] = kNoRow;
                        bk.keys[s] = 0;
                        --size_;
                        ++removed;
                        return;
                    }
                }
            }
        });
        stats_erases_ += removed;
        return removed;
    }

    // assign rebuilds the table to hold exactly the given (key, row) pairs, with num_rows rows
    // handed out (every row in [0, num_rows) not in `rows` is free). Throws
    // std::invalid_argument, changing nothing, if a key or a row repeats, a row is negative or
    // >= num_rows, or max_size is exceeded; AllocError if 9 bytes per row handed out would be
    // more than the machine's memory: a plausibility bound on num_rows (the bookkeeping takes
    // about 1.2 bytes per row; a float32 weight of num_rows rows, at any dim above 2, more
    // than 9). Writer.
    void assign(const std::uint64_t* keys, const std::int64_t* rows, std::size_t n, std::uint64_t num_rows) {
        std::unique_lock<RwLock> lock(mutex_);
        if (config_.max_size != 0 && n > config_.max_size) {
            throw std::invalid_argument("cannot hold " + std::to_string(n) + " IDs: max_size is " +
                                        std::to_string(config_.max_size));
        }
        // used[] (a byte per row) and the free rows' bits: bounded by 9 bytes per row (above)
        checked_bytes(num_rows, 9, "the row bookkeeping for num_rows rows");
        std::vector<std::uint8_t> used(num_rows, 0);
        for (std::size_t i = 0; i < n; ++i) {
            if (rows[i] < 0 || static_cast<std::uint64_t>(rows[i]) >= num_rows) {
                throw std::invalid_argument("row " + std::to_string(rows[i]) + " of ID " + std::to_string(keys[i]) +
                                            " is outside [0, num_rows=" + std::to_string(num_rows) + ")");
            }
            if (used[rows[i]]) throw std::invalid_argument("row " + std::to_string(rows[i]) + " is given twice");
            used[rows[i]] = 1;
        }
        drop_prepared();
        grown_by_inserts_ = false;
        Buckets fresh(std::max(buckets_for(n), buckets_.count));
        for (std::size_t i = 0; i < n; ++i) {
            const BucketPair bp = buckets_of(keys[i], fresh.count);
            if (find_in(fresh, keys[i], bp) != kNoRow) {
                throw std::invalid_argument("ID " + std::to_string(keys[i]) + " is given twice");
            }
            while (!place(fresh, keys[i], rows[i], nullptr)) {
                check_placeable(keys[i], i, fresh);
                fresh = rehash(fresh, grown_count(fresh.count));
            }
        }
        FreeRowSet free_set;
        if (n < num_rows) {
            free_set.reserve(num_rows);
            for (std::uint64_t r = 0; r < num_rows; ++r) {
                if (!used[r]) free_set.push(static_cast<std::int64_t>(r));
            }
        }
        buckets_ = std::move(fresh);
        size_ = n;
        next_row_ = num_rows;
        free_rows_ = std::move(free_set);
    }

    // capacity /////////////////////////////////////////////////////////////////////////////

    // reserve grows the table so that n IDs fit without passing max_load_factor; throws
    // AllocError (table unchanged) if that index is more than the machine can hold. Writer.
    void reserve(std::uint64_t n) {
        std::unique_lock<RwLock> lock(mutex_);
        const std::uint64_t want = buckets_for(n);
        if (want > buckets_.count) {
            grow_to(want, false);
            grown_by_inserts_ = false;
        }
    }

    // clear removes every ID; the next ID gets row 0. Keeps the capacity. Writer.
    void clear() {
        std::unique_lock<RwLock> lock(mutex_);
        drop_prepared();
        bulk_ = grown_by_inserts_ = false;
        buckets_.reset();
        size_ = 0;
        next_row_ = 0;
        free_rows_.clear();
    }

    std::uint64_t size() const {
        std::shared_lock<RwLock> lock(mutex_);
        return size_;
    }
    std::uint64_t capacity() const {
        std::shared_lock<RwLock> lock(mutex_);
        return buckets_.count * kSlotsPerBucket;
    }
    std::uint64_t num_rows() const {
        std::shared_lock<RwLock> lock(mutex_);
        return next_row_;
    }
    double load_factor() const {
        std::shared_lock<RwLock> lock(mutex_);
        return static_cast<double>(size_) / static_cast<double>(buckets_.count * kSlotsPerBucket);
    }

    TableStats stats() const {
        std::shared_lock<RwLock> lock(mutex_);
        TableStats s;
        s.size = size_;
        s.capacity = buckets_.count * kSlotsPerBucket;
        s.num_buckets = buckets_.count;
        s.num_rows = next_row_;
        s.free_rows = free_rows_.size();
        s.load_factor = static_cast<double>(size_) / static_cast<double>(s.capacity);
        s.free_row_bytes = free_rows_.memory_bytes();
        s.memory_bytes = buckets_.count * sizeof(Bucket) + s.free_row_bytes;
        s.prepared_bytes = prepared_ ? prepared_->count * sizeof(Bucket) : 0;
        s.lookups = stats_lookups_.load();
        s.second_bucket_probes = stats_second_.load();
        s.inserts = stats_inserts_;
        s.erases = stats_erases_;
        s.displacements = stats_displacements_;
        s.bfs_searches = stats_bfs_;
        s.max_bfs_path = stats_max_path_;
        s.grows = stats_grows_;
        s.grows_on_failed_insert = stats_grows_failed_;
        s.load_factor_at_last_grow = stats_lf_at_grow_;
        s.rehashed_keys = stats_rehashed_;
        return s;
    }

    // items returns every live (key, row) pair ordered by row, and num_rows. Reader.
    void items(std::vector<std::uint64_t>& keys_out, std::vector<std::int64_t>& rows_out) const {
        std::shared_lock<RwLock> lock(mutex_);
        items_unlocked(keys_out, rows_out);
    }

    // persistence //////////////////////////////////////////////////////////////////////////

    // serialize renders the table in the versioned binary format:
    //   magic "EMBTABCK" | u32 version | u32 header bytes (=72) | u64 seed | f64 growth_factor |
    //   f64 max_load_factor | u64 max_size | u64 size | u64 num_rows | u64 capacity (see deserialize) |
    //   size × (u64 key, i64 row), ordered by row | u64 checksum
    // all little-endian; the checksum is checksum64 over every byte before it. Reader.
    std::string serialize() const {
        std::vector<std::uint64_t> keys;
        std::vector<std::int64_t> rows;
        std::string out;
        {
            std::shared_lock<RwLock> lock(mutex_);
            items_unlocked(keys, rows);
            out.reserve(kHeaderBytes + keys.size() * 16 + 8);
            out.append(kFileMagic, 8);
            put<std::uint32_t>(out, kFormatVersion);
            put<std::uint32_t>(out, static_cast<std::uint32_t>(kHeaderBytes));
            put<std::uint64_t>(out, config_.seed);
            put<double>(out, config_.growth_factor);
            put<double>(out, config_.max_load_factor);
            put<std::uint64_t>(out, config_.max_size);
            put<std::uint64_t>(out, keys.size());
            put<std::uint64_t>(out, next_row_);
            put<std::uint64_t>(out, buckets_.count * kSlotsPerBucket);
        }
        for (std::size_t i = 0; i < keys.size(); ++i) {
            put<std::uint64_t>(out, keys[i]);
            put<std::int64_t>(out, rows[i]);
        }
        put<std::uint64_t>(out, checksum64(out.data(), out.size()));
        return out;
    }

    // deserialize parses serialize()'s output into a new table. Throws std::invalid_argument
    // with the reason (wrong magic, version, truncation, checksum, inconsistent content) for a
    // foreign, truncated or corrupt buffer; never reads outside [data, data + n).
    static std::unique_ptr<CuckooTable> deserialize(const char* data, std::size_t n) {
        if (n < 8 || std::memcmp(data, kFileMagic, 8) != 0) {
            throw std::invalid_argument("not an embtab CuckooTable file (bad magic number)");
        }
        if (n < kHeaderBytes + 8) throw std::invalid_argument("truncated file: header incomplete");
        const auto version = get<std::uint32_t>(data + 8);
        if (version != kFormatVersion) {
            throw std::invalid_argument("unsupported format version " + std::to_string(version) +
                                        " (this embtab reads version " + std::to_string(kFormatVersion) + ")");
        }
        if (get<std::uint32_t>(data + 12) != kHeaderBytes) throw std::invalid_argument("corrupt header length");
        const auto size = get<std::uint64_t>(data + 48);
        if (size > (n - kHeaderBytes - 8) / 16 || kHeaderBytes + size * 16 + 8 != n) {
            throw std::invalid_argument("truncated or oversized file: header says " + std::to_string(size) +
                                        " entries but the file has " + std::to_string(n) + " bytes");
        }
        const auto stored = get<std::uint64_t>(data + n - 8);
        if (stored != checksum64(data, n - 8)) throw std::invalid_argument("checksum mismatch: the file is corrupt");
        TableConfig cfg;
        cfg.seed = get<std::uint64_t>(data + 16);
        cfg.growth_factor = get<double>(data + 24);
        cfg.max_load_factor = get<double>(data + 32);
        cfg.max_size = get<std::uint64_t>(data + 40);
        const auto num_rows = get<std::uint64_t>(data + 56);
        const auto capacity = get<std::uint64_t>(data + 64);
        if (num_rows < size) throw std::invalid_argument("corrupt file: num_rows < size");
        try {
            cfg.validate();
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("corrupt file: ") + e.what());
        }
        if (num_rows > (std::uint64_t{1} << 33)) throw std::invalid_argument("corrupt file: implausible num_rows");
        std::vector<std::uint64_t> keys(size);
        std::vector<std::int64_t> rows(size);
        for (std::uint64_t i = 0; i < size; ++i) {
            keys[i] = get<std::uint64_t>(data + kHeaderBytes + 16 * i);
            rows[i] = get<std::int64_t>(data + kHeaderBytes + 16 * i + 8);
        }
        // The saved index size is restored up to 8 slots per ID (2 * max(IDs, rows) + 1024 at
        // least), so that a loaded table does not regrow and a reserve() made for growth to come
        // survives the round trip, while a table that grew and was emptied does not come back
        // as a bare index of its old size. The IDs then go into that index; should they not all
        // find a place there (IDs chosen against the seed can crowd buckets of a smaller index
        // that they did not crowd in the saved one), they go into an index of the saved size,
        // which held them. The saved size is the file's word: it is used only while that index
        // takes at most an eighth of this machine's memory (a file from a larger machine, or a
        // crafted one, must not take the rest).
        const std::uint64_t machine = machine_memory_bytes();
        const std::uint64_t content = std::min<std::uint64_t>(capacity, 2 * std::max(size, num_rows) + 1024);
        const bool plausible = machine == 0 || capacity <= machine / 8 / (sizeof(Bucket) / kSlotsPerBucket);
        const std::uint64_t keep =
            plausible ? std::max(content, std::min<std::uint64_t>(capacity, 8 * size)) : content;
        auto load = [&](std::uint64_t slots) {
            auto t = std::make_unique<CuckooTable>(static_cast<std::uint64_t>(slots * cfg.max_load_factor), cfg);
            t->assign(keys.data(), rows.data(), size, num_rows);
            return t;
        };
        std::unique_ptr<CuckooTable> table;
        try {
            try {
                table = load(keep);
            } catch (const std::invalid_argument&) {
                if (!plausible || keep >= capacity) throw;
                table = load(capacity);  // the saved size, which held these IDs
            }
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("corrupt file: ") + e.what());
        }
        return table;
    }

    // checksum64 is a 64-bit checksum of a byte string: mix64 folded over little-endian
    // 8-byte words (the tail zero-padded) and the length. Detects every single-bit flip.
    static std::uint64_t checksum64(const char* p, std::size_t n) noexcept {
        std::uint64_t h = 0x6A09E667F3BCC909ULL ^ n;
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) h = mix64(h ^ get<std::uint64_t>(p + i), i);
        std::uint64_t tail = 0;
        std::memcpy(&tail, p + i, n - i);
        return mix64(h ^ tail, n);
    }

  private:
    friend struct TableTestAccess;

    static constexpr std::size_t kHeaderBytes = 72;

    // Invariants: rows[s] == kNoRow marks an empty slot (keys[s] is then 0, unread); a live
    // key is in one of its two candidate buckets; no key and no row appears twice; every row
    // is < next_row_; live rows and free_rows_ partition [0, next_row_).
    struct alignas(kCacheLine) Bucket {
        std::uint64_t keys[kSlotsPerBucket];
        std::int64_t rows[kSlotsPerBucket];
    };
    static_assert(sizeof(Bucket) == kCacheLine, "a bucket is one cache line");

    struct FreeDeleter {
        void operator()(Bucket* p) const noexcept { std::free(p); }
    };

    // allocate_buckets returns uninitialised storage for n buckets, cache-line aligned; arrays
    // of 2 MiB or more are 2 MiB aligned and advised to use transparent huge pages, which
    // spares most random probes a TLB miss. Throws AllocError (a std::bad_alloc) if n buckets
    // are more than the machine has or the system refuses them.
    static Bucket* allocate_buckets(std::uint64_t n) {
        constexpr std::size_t kHuge = std::size_t{1} << 21;
        const std::size_t bytes = checked_bytes(n, sizeof(Bucket), "the table index");
        const std::size_t align = bytes >= kHuge ? kHuge : kCacheLine;
        const std::size_t rounded = (bytes + align - 1) / align * align;
        void* p = nullptr;
        if (::posix_memalign(&p, align, rounded) != 0) {
            throw AllocError("cannot allocate the table index: " + std::to_string(n) + " buckets (" +
                             std::to_string(bytes) + " bytes) refused by the system");
        }
#ifdef MADV_HUGEPAGE
        if (align == kHuge) ::madvise(p, rounded, MADV_HUGEPAGE);
#endif
        return static_cast<Bucket*>(p);
    }

    // Buckets owns a cache-line-aligned bucket array.
    struct Buckets {
        std::uint64_t count = 0;
        std::unique_ptr<Bucket[], FreeDeleter> data;
        Buckets() = default;
        explicit Buckets(std::uint64_t n) : count(n), data(allocate_buckets(n)) { reset(); }
        // Uninitialised: the caller writes every slot (split() does).
        Buckets(std::uint64_t n, std::nullptr_t) : count(n), data(allocate_buckets(n)) {}
        void reset() {
            for (std::uint64_t b = 0; b < count; ++b) {
                for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                    data[b].keys[s] = 0;
                    data[b].rows[s] = kNoRow;
                }
            }
        }
    };

    struct BucketPair {
        std::uint64_t first, second;
    };


    template <class T>
    static T get(const char* p) noexcept {
        T v;
        std::memcpy(&v, p, sizeof(T));
        return v;
    }
    template <class T>
    static void put(std::string& out, T v) {
        char buf[sizeof(T)];
        std::memcpy(buf, &v, sizeof(T));
        out.append(buf, sizeof(T));
    }

    // buckets_of gives a key's two candidate buckets in a table of `count` buckets: the high
    // and the low half of mix64(key, seed), each mapped by fastrange; distinct by construction.
    BucketPair buckets_of(std::uint64_t key, std::uint64_t count) const noexcept {
        const std::uint64_t h = mix64(key, config_.seed);
        std::uint64_t b1 = fastrange(h, count);
        std::uint64_t b2 = fastrange((h << 32) | (h >> 32), count);
        if (b2 == b1) b2 = (b1 + 1 == count) ? 0 : b1 + 1;
        return {b1, b2};
    }

    // buckets_for is the bucket count that holds n keys under max_load_factor. Throws
    // AllocError if that is more than kMaxBuckets.
    std::uint64_t buckets_for(std::uint64_t n) const {
        const double b = std::ceil(std::ceil(static_cast<double>(n) / config_.max_load_factor) / kSlotsPerBucket);
        if (!(b <= static_cast<double>(kMaxBuckets))) {
            throw AllocError("cannot make room for " + std::to_string(n) + " IDs: at max_load_factor " +
                             std::to_string(config_.max_load_factor) + " the index would need more than 2**56 buckets");
        }
        return std::max(static_cast<std::uint64_t>(b), kMinBuckets);
    }

    // grown_count is the bucket count after one growth from `count`, at most kMaxBuckets.
    // Throws AllocError if count is kMaxBuckets already.
    std::uint64_t grown_count(std::uint64_t count) const {
        if (count >= kMaxBuckets) throw AllocError("cannot grow the table index past 2**56 buckets");
        const double g = std::ceil(static_cast<double>(count) * config_.growth_factor);
        if (!(g < static_cast<double>(kMaxBuckets))) return kMaxBuckets;
        return std::max(static_cast<std::uint64_t>(g), count + 1);
    }

    static void prefetch(const Bucket& b) noexcept { __builtin_prefetch(&b, 0, 1); }

    // find_in returns key's row if it sits in one of bp's buckets, else kNoRow. Sets
    // *in_second when the second bucket had to be read.
    static std::int64_t find_in(const Buckets& bs, std::uint64_t key, BucketPair bp, bool* in_second = nullptr) noexcept {
        const Bucket& b1 = bs.data[bp.first];
        for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
            if (b1.keys[s] == key && b1.rows[s] != kNoRow) return b1.rows[s];
        }
        if (in_second) *in_second = true;
        const Bucket& b2 = bs.data[bp.second];
        for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
            if (b2.keys[s] == key && b2.rows[s] != kNoRow) return b2.rows[s];
        }
        return kNoRow;
    }

    // probe_batch looks up keys[0..n) in bs, hashing and prefetching kPrefetchDistance keys
    // ahead, and calls fn(i, row, read_second_bucket) for each in order. Assumes the caller
    // holds a lock that keeps bs alive and unchanged.
    template <class Fn>
    void probe_batch(const Buckets& bs, const std::uint64_t* keys, std::size_t n, Fn&& fn) const {
        BucketPair ring[kPrefetchDistance];
        const std::size_t head = std::min(n, kPrefetchDistance);
        for (std::size_t i = 0; i < head; ++i) {
            ring[i] = buckets_of(keys[i], bs.count);
            prefetch(bs.data[ring[i].first]);
            prefetch(bs.data[ring[i].second]);
        }
        for (std::size_t i = 0; i < n; ++i) {
            const BucketPair bp = ring[i & (kPrefetchDistance - 1)];
            if (i + kPrefetchDistance < n) {
                BucketPair& next = ring[i & (kPrefetchDistance - 1)];
                next = buckets_of(keys[i + kPrefetchDistance], bs.count);
                prefetch(bs.data[next.first]);
                prefetch(bs.data[next.second]);
            }
            bool second = false;
            const std::int64_t row = find_in(bs, keys[i], bp, &second);
            fn(i, row, second);
        }
    }

    void count_lookups(std::uint64_t n, std::uint64_t second) const noexcept {
        stats_lookups_.fetch_add(n, std::memory_order_relaxed);
        stats_second_.fetch_add(second, std::memory_order_relaxed);
    }

    // items_unlocked: items() without taking the lock; the caller holds it.
    void items_unlocked(std::vector<std::uint64_t>& keys_out, std::vector<std::int64_t>& rows_out) const {
        std::vector<std::uint64_t> key_of_row(next_row_);
        std::vector<std::uint8_t> live(next_row_, 0);
        for (std::uint64_t b = 0; b < buckets_.count; ++b) {
            const Bucket& bk = buckets_.data[b];
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] == kNoRow) continue;
                key_of_row[bk.rows[s]] = bk.keys[s];
                live[bk.rows[s]] = 1;
            }
        }
        keys_out.clear();
        rows_out.clear();
        keys_out.reserve(size_);
        rows_out.reserve(size_);
        for (std::uint64_t r = 0; r < next_row_; ++r) {
            if (!live[r]) continue;
            keys_out.push_back(key_of_row[r]);
            rows_out.push_back(static_cast<std::int64_t>(r));
        }
    }

    // lookup_unlocked: lookup without taking the lock; the caller holds it (either kind).
    // Returns the number of absent keys (counted as they are probed: a caller that needs to know
    // whether any key is absent then reads no row again).
    std::size_t lookup_unlocked(const std::uint64_t* keys, std::size_t n, std::int64_t* rows_out,
                                int num_threads) const {
        std::atomic<std::size_t> absent{0};
        parallel_for(n, num_threads, kParallelGrain, [&](std::size_t b, std::size_t e) {
            std::uint64_t second = 0;
            std::size_t miss = 0;
            probe_batch(buckets_, keys + b, e - b, [&](std::size_t i, std::int64_t row, bool in_second) {
                rows_out[b + i] = row;
                second += in_second;
                miss += row == kNoRow;
            });
            count_lookups(e - b, second);
            if (miss) absent.fetch_add(miss, std::memory_order_relaxed);
        });
        return absent.load(std::memory_order_relaxed);
    }

    // count_distinct counts the distinct keys among `keys` (sorting a copy).
    static std::uint64_t count_distinct(const std::vector<std::uint64_t>& keys) {
        std::vector<std::uint64_t> k(keys);
        std::sort(k.begin(), k.end());
        return static_cast<std::uint64_t>(std::unique(k.begin(), k.end()) - k.begin());
    }

    [[noreturn]] __attribute__((noinline, cold)) void throw_full(std::uint64_t fresh) const {
        const std::uint64_t cap = buckets_.count * kSlotsPerBucket;
        throw TableFullError("table is full: max_size=" + std::to_string(config_.max_size) + " IDs, " +
                                 std::to_string(size_) + " live, the batch brings " + std::to_string(fresh) +
                                 " new; nothing was inserted",
                             cap, static_cast<double>(size_) / static_cast<double>(cap));
    }

    std::int64_t take_row() {
        if (!free_rows_.empty()) {
            const std::int64_t r = free_rows_.top();
            reused_rows_.push_back(r);  // first: if it throws, nothing is taken
            free_rows_.pop();
            return r;
        }
        return static_cast<std::int64_t>(next_row_++);
    }

    // insert_misses looks up, inserting if absent, key_at(j) for j in [0, m) in order (an
    // earlier key of the batch may have been the same), writing its row to rows_out[index(j)],
    // prefetching ahead. Each key is read once, into the prefetch ring, and its buckets, lookup
    // and insert all use that value: a caller's array written by another thread during the call
    // (which the bindings borrow, not copy) cannot pair one key with another's buckets, which
    // would file it where lookups never find it and let a later batch give it a second row.
    // Writer lock held.
    template <class KeyAt, class Index>
    void insert_misses(KeyAt&& key_at, std::size_t m, Index&& index, std::int64_t* rows_out) {
        struct Pending {
            std::uint64_t key;
            BucketPair bp;
        };
        Pending ring[kInsertPrefetchDistance];
        std::uint64_t ring_count = 0;  // bucket count the ring was hashed for
        auto hash = [&](Pending& p) {
            p.bp = buckets_of(p.key, buckets_.count);
            prefetch(buckets_.data[p.bp.first]);
            prefetch(buckets_.data[p.bp.second]);
        };
        auto fill = [&](std::size_t j) {
            Pending& p = ring[j & (kInsertPrefetchDistance - 1)];
            p.key = key_at(j);
            hash(p);
        };
        const std::size_t ahead = std::min(m, kInsertPrefetchDistance);
        for (std::size_t j = 0; j < ahead; ++j) fill(j);
        ring_count = buckets_.count;
        for (std::size_t j = 0; j < m; ++j) {
            if (ring_count != buckets_.count) {  // a growth: the keys in the ring hashed again
                ring_count = buckets_.count;
                for (std::size_t k = j; k < std::min(m, j + kInsertPrefetchDistance); ++k)
                    hash(ring[k & (kInsertPrefetchDistance - 1)]);
            }
            const Pending p = ring[j & (kInsertPrefetchDistance - 1)];
            if (j + kInsertPrefetchDistance < m) fill(j + kInsertPrefetchDistance);
            std::int64_t row = find_in(buckets_, p.key, p.bp);
            if (row == kNoRow) row = insert_new(p.key, p.bp);
            rows_out[index(j)] = row;
        }
    }

    // insert_new adds a key known to be absent, at bucket pair bp (valid for the current
    // bucket count), growing first if the load would pass max_load_factor. Returns its row.
    std::int64_t insert_new(std::uint64_t key, BucketPair bp) {
        // (the product rounds: buckets_for, which sized the index, has the last word, so that
        // a table reserved for n keys holds n without growing)
        if (static_cast<double>(size_ + 1) > config_.max_load_factor * static_cast<double>(buckets_.count * kSlotsPerBucket) &&
            buckets_for(size_ + 1) > buckets_.count) {
            grow_to(grown_count(buckets_.count), false);
            grown_by_inserts_ = true;
            bp = buckets_of(key, buckets_.count);
        }
        const std::int64_t row = take_row();
        while (!place(buckets_, key, row, &bp)) {
            check_placeable(key, size_, buckets_);
            grow_to(grown_count(buckets_.count), true);
            grown_by_inserts_ = true;
            bp = buckets_of(key, buckets_.count);
        }
        ++size_;
        ++stats_inserts_;
        return row;
    }

    // check_placeable is called when `key` finds no place in bs, before growing for it. Random
    // IDs essentially never do that below half of max_load_factor (a search of up to
    // kMaxBfsPathLen moves finds room); IDs chosen so that more than 2 * kSlotsPerBucket of them
    // share both buckets, which they can only be by someone who knows the seed, do it at every
    // size, and growing for them would not end before memory does. So, in an index of at least
    // kMinPlaceableCheckBuckets buckets under that load, throws std::invalid_argument instead.
    // `live`: the entries bs holds.
    void check_placeable(std::uint64_t key, std::uint64_t live, const Buckets& bs) const {
        const double load = static_cast<double>(live) / static_cast<double>(bs.count * kSlotsPerBucket);
        if (bs.count < kMinPlaceableCheckBuckets || load >= 0.5 * config_.max_load_factor) return;
        throw std::invalid_argument(
            "ID " + std::to_string(key) + " cannot be placed: its buckets are full of IDs that crowd them "
            "at a load factor (" + std::to_string(load) + ") at which random IDs find room; "
            "IDs like these are chosen against a known seed: give the table a seed of your own "
            "(seed=...); nothing of this batch was inserted");
    }

    // place puts (key, row) into bs: a free slot of its first, else second bucket, else at the
    // end of a displacement path found by BFS. Returns false (bs unchanged) if no path exists
    // within kMaxBfsPathLen. Assumes key is absent. hint: the key's buckets if known.
    bool place(Buckets& bs, std::uint64_t key, std::int64_t row, const BucketPair* hint, bool first_fit = false) {
        const BucketPair bp = hint ? *hint : buckets_of(key, bs.count);
        if (first_fit) {
            // Rehash into a fresh table that is at most half full: the first bucket almost
            // always has room, and reading only it saves a cache miss per key.
            Bucket& bk = bs.data[bp.first];
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] == kNoRow) {
                    bk.keys[s] = key;
                    bk.rows[s] = row;
                    return true;
                }
            }
        }
        // The emptier of the two buckets takes the key (ties: the first): spreading keys this
        // way keeps displacement searches rare until the load nears max_load_factor.
        Bucket& b1 = bs.data[bp.first];
        Bucket& b2 = bs.data[bp.second];
        std::size_t free1 = 0, free2 = 0, slot1 = 0, slot2 = 0;
        for (std::size_t s = kSlotsPerBucket; s-- > 0;) {
            if (b1.rows[s] == kNoRow) ++free1, slot1 = s;
            if (b2.rows[s] == kNoRow) ++free2, slot2 = s;
        }
        if (free1 | free2) {
            Bucket& bk = free1 >= free2 ? b1 : b2;
            const std::size_t s = free1 >= free2 ? slot1 : slot2;
            bk.keys[s] = key;
            bk.rows[s] = row;
            return true;
        }
        ++stats_bfs_;
        Path path;
        if (!bfs(bs, bp, path)) return false;
        // Move keys from the end of the path backwards; each move empties the slot the
        // previous one fills.
        for (std::size_t i = path.len; i-- > 0;) {
            Bucket& from = bs.data[path.bucket[i]];
            Bucket& to = bs.data[path.bucket[i + 1]];
            const std::size_t fs = path.slot[i], ts = path.slot[i + 1];
            to.keys[ts] = from.keys[fs];
            to.rows[ts] = from.rows[fs];
            from.rows[fs] = kNoRow;
        }
        Bucket& start = bs.data[path.bucket[0]];
        start.keys[path.slot[0]] = key;
        start.rows[path.slot[0]] = row;
        stats_displacements_ += path.len;
        stats_max_path_ = std::max<std::uint64_t>(stats_max_path_, path.len);
        return true;
    }

    // A displacement path: the key in (bucket[i], slot[i]) moves to (bucket[i+1], slot[i+1])
    // for i < len; slot[len] of bucket[len] is empty.
    struct Path {
        std::size_t len = 0;
        std::uint64_t bucket[kMaxBfsPathLen + 1];
        std::size_t slot[kMaxBfsPathLen + 1];
    };

    // bfs searches breadth-first from both of a key's buckets for the shortest path (at most
    // kMaxBfsPathLen moves, through distinct buckets) ending at an empty slot. Uses a
    // fixed-size queue: never allocates. Returns false if none is found.
    bool bfs(const Buckets& bs, BucketPair start, Path& out) const {
        struct Node {
            std::uint64_t bucket;
            std::uint32_t parent;  // index into queue, or kRoot
            std::uint8_t slot;     // slot of parent's bucket whose key leads here
            std::uint8_t depth;
        };
        constexpr std::uint32_t kRoot = 0xFFFFFFFFu;
        Node queue[kBfsQueueSize];
        std::size_t head = 0, tail = 0;
        queue[tail++] = {start.first, kRoot, 0, 0};
        queue[tail++] = {start.second, kRoot, 0, 0};
        while (head < tail) {
            const std::uint32_t ni = static_cast<std::uint32_t>(head++);
            const Node node = queue[ni];
            const Bucket& bk = bs.data[node.bucket];
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] == kNoRow && node.depth > 0) {
                    if (build_path(queue, ni, s, out)) return true;
                }
            }
            if (node.depth >= kMaxBfsPathLen) continue;
            for (std::size_t s = 0; s < kSlotsPerBucket && tail < kBfsQueueSize; ++s) {
                if (bk.rows[s] == kNoRow) continue;
                const BucketPair kp = buckets_of(bk.keys[s], bs.count);
                const std::uint64_t alt = kp.first == node.bucket ? kp.second : kp.first;
                prefetch(bs.data[alt]);
                queue[tail++] = {alt, ni, static_cast<std::uint8_t>(s), static_cast<std::uint8_t>(node.depth + 1)};
            }
        }
        return false;
    }

    // build_path unwinds the BFS tree from queue[leaf] (whose bucket has empty slot
    // `empty_slot`) into out. Returns false if the path visits a bucket twice.
    template <class Node>
    static bool build_path(const Node* queue, std::uint32_t leaf, std::size_t empty_slot, Path& out) {
        const std::size_t len = queue[leaf].depth;
        std::uint32_t ni = leaf;
        out.len = len;
        out.bucket[len] = queue[ni].bucket;
        out.slot[len] = empty_slot;
        for (std::size_t i = len; i-- > 0;) {
            out.slot[i] = queue[ni].slot;
            ni = queue[ni].parent;
            out.bucket[i] = queue[ni].bucket;
        }
        for (std::size_t i = 0; i <= len; ++i) {
            for (std::size_t j = i + 1; j <= len; ++j) {
                if (out.bucket[i] == out.bucket[j]) return false;
            }
        }
        return true;
    }

    // growth ///////////////////////////////////////////////////////////////////////////////

    // rehash builds a table of `count` buckets holding every entry of bs, in one pass with
    // prefetching; if some entry finds no place, retries with a grown count. Rows never change.
    // When count is a whole multiple of bs.count (the default growth factor 2 is), split()
    // does it in one sequential pass instead.
    Buckets rehash(const Buckets& bs, std::uint64_t count) {
        if (count % bs.count == 0 && count / bs.count <= kMaxSplit) {
            Buckets fresh;
            if (split(bs, count / bs.count, fresh)) return fresh;  // else the general pass below
        }
        for (;;) {
            Buckets fresh = take_prepared(count);
            if (fresh.data) {
                fresh.reset();
            } else {
                fresh = Buckets(count);
            }
            bool ok = true;
            struct Pending {
                std::uint64_t key;
                std::int64_t row;
                BucketPair bp;
            };
            Pending ring[kPrefetchDistance];
            std::size_t pending = 0, first = 0;
            auto flush_one = [&]() {
                const Pending& p = ring[first];
                first = (first + 1) & (kPrefetchDistance - 1);
                --pending;
                if (ok && !place(fresh, p.key, p.row, &p.bp, true)) ok = false;
            };
            for (std::uint64_t b = 0; b < bs.count && ok; ++b) {
                const Bucket& bk = bs.data[b];
                for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                    if (bk.rows[s] == kNoRow) continue;
                    if (pending == kPrefetchDistance) flush_one();
                    Pending& p = ring[(first + pending) & (kPrefetchDistance - 1)];
                    p = {bk.keys[s], bk.rows[s], buckets_of(bk.keys[s], count)};
                    prefetch(fresh.data[p.bp.first]);
                    ++pending;
                }
            }
            while (pending > 0) flush_one();
            if (ok) return fresh;
            count = grown_count(count);
        }
    }

    // split fills `out` with bs re-placed into m * bs.count buckets. fastrange keeps order: for
    // a whole m, fastrange(h, m * n) / m == fastrange(h, n), so a key's buckets in the new table
    // are children m*b .. m*b+m-1 of its buckets in the old one, and the keys of old bucket b
    // (at most kSlotsPerBucket) always fit its m children. One sequential read of bs and one
    // sequential write of `out`, no probing; chunks of kSplitGrain old buckets run in parallel
    // on grow_threads_ threads (they write disjoint children, and fault in their own part of
    // `out`), with the same result for any thread count. The rare key whose old bucket was the
    // b1+1 stand-in for a coinciding second bucket is placed afterwards by place(), in bucket
    // order. Returns false (out unusable) only if such a key finds no place.
    static constexpr std::uint64_t kMaxSplit = 16;
    static constexpr std::uint64_t kSplitGrain = std::uint64_t{1} << 15;
    bool split(const Buckets& bs, std::uint64_t m, Buckets& out) {
        const std::uint64_t count = bs.count * m;
        out = take_prepared(count);
        if (!out.data) out = Buckets(count, nullptr);
        const std::size_t chunks = static_cast<std::size_t>((bs.count + kSplitGrain - 1) / kSplitGrain);
        std::vector<std::vector<std::pair<std::uint64_t, std::int64_t>>> late(chunks);
        parallel_for(static_cast<std::size_t>(bs.count), grow_threads_, kSplitGrain, [&](std::size_t b0, std::size_t b1) {
            split_range(bs, m, count, b0, b1, out, late[b0 / kSplitGrain]);
        });
        for (const auto& chunk : late)
            for (const auto& [key, row] : chunk)
                if (!place(out, key, row, nullptr)) return false;
        return true;
    }

    // split_range does split's pass for old buckets [b0, b1), collecting the late keys.
    void split_range(const Buckets& bs, std::uint64_t m, std::uint64_t count, std::uint64_t b0, std::uint64_t b1,
                     Buckets& out, std::vector<std::pair<std::uint64_t, std::int64_t>>& late) const {
        for (std::uint64_t b = b0; b < b1; ++b) {
            const Bucket& bk = bs.data[b];
            Bucket* ch = &out.data[m * b];
            std::size_t fill[kMaxSplit] = {};
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] == kNoRow) continue;
                const BucketPair bp = buckets_of(bk.keys[s], count);
                std::uint64_t c;
                if (bp.first / m == b) {
                    c = bp.first - m * b;
                } else if (bp.second / m == b) {
                    c = bp.second - m * b;
                } else {
                    late.emplace_back(bk.keys[s], bk.rows[s]);
                    continue;
                }
                ch[c].keys[fill[c]] = bk.keys[s];
                ch[c].rows[fill[c]] = bk.rows[s];
                ++fill[c];
            }
            for (std::uint64_t c = 0; c < m; ++c) {
                for (std::size_t s = fill[c]; s < kSlotsPerBucket; ++s) {
                    ch[c].keys[s] = 0;
                    ch[c].rows[s] = kNoRow;
                }
            }
        }
    }

    // the prepared index (bulk loading; see the top of this file) ////////////////////////

    // Prepared: an index array being faulted in by a detached background thread, which holds
    // a reference until it stops. `stop` asks it to stop after its current chunk; `done` says
    // it no longer touches `data`. `generation` is fork_generation() when it started: in a
    // child forked since, the thread does not exist, so nothing is waited for there (a pid
    // would not do: pids are reused, and a pid namespace's first process is 1 in each).
    struct Prepared {
        std::uint64_t count = 0;
        Bucket* data = nullptr;
        std::atomic<bool> stop{false}, done{false};
        std::uint64_t generation = 0;
        ~Prepared() { std::free(data); }
    };

    // fork_generation counts the fork()s this process descends from since the first table
    // was made (rwlock.hpp: a pthread_atfork child handler, installed by every table's lock
    // before this can be called, adds one in each child).
    static std::uint64_t fork_generation() noexcept {
        return detail::fork_generation().load(std::memory_order_relaxed);
    }

    // stop_prepared asks the thread to stop and waits until it no longer touches the array
    // (at most its current 2 MiB chunk), unless this process is a child forked since it
    // started. The array is then the table's alone.
    void stop_prepared() noexcept {
        prepared_->stop.store(true, std::memory_order_relaxed);
        if (prepared_->generation == fork_generation()) {
            while (!prepared_->done.load(std::memory_order_acquire)) std::this_thread::yield();
        }
    }
    // Arrays smaller than this fault in quickly enough not to be prepared.
    static constexpr std::size_t kPrepareMinBytes = std::size_t{8} << 20;
    // Preparing starts once the load passes this fraction of max_load_factor (a growth leaves
    // it at half): late enough that a load that stops soon after a growth holds no second
    // index, early enough that faulting it in overlaps the inserts before the growth (measured:
    // bench/README.md, "Bulk loading").
    static constexpr double kPrepareAtLoad = 0.7;

    // prepare_next starts preparing the index of the next growth, unless it is prepared or
    // being prepared already, the load is under kPrepareAtLoad of the limit, it is small, or it
    // cannot be had (max_size already held, more than half of the free RAM, no memory, no
    // thread): a hint that never throws.
    void prepare_next() noexcept {
        try {
            if (!grown_by_inserts_) return;
            if (config_.max_size != 0 && buckets_for(config_.max_size) <= buckets_.count) return;
            const std::uint64_t next = grown_count(buckets_.count);
            if (prepared_ && prepared_->count == next) return;
            if (static_cast<double>(size_) <
                kPrepareAtLoad * config_.max_load_factor * static_cast<double>(buckets_.count * kSlotsPerBucket)) {
                return;
            }
            drop_prepared();
            const std::size_t bytes = checked_bytes(next, sizeof(Bucket), "the prepared index");
            if (bytes < kPrepareMinBytes) return;
            if (bytes > available_memory_bytes() / 2) return;
            auto p = std::make_shared<Prepared>();
            p->count = next;
            p->data = allocate_buckets(next);
            p->generation = fork_generation();
            std::thread([p, bytes]() noexcept { fault_in(*p, bytes); }).detach();
            prepared_ = std::move(p);
        } catch (...) {  // AllocError, std::bad_alloc, std::system_error: not prepared
        }
    }

    // fault_in faults in the pages of p.data (bytes long) in 2 MiB chunks, stopping early when
    // asked: MADV_POPULATE_WRITE (Linux 5.14) where the kernel has it, else one write per page.
    // A populate that fails otherwise (ENOMEM: the memory is not there) stops it: a write would
    // then bring the OOM killer rather than an error, and the growth reports AllocError instead.
    static void fault_in(Prepared& p, std::size_t bytes) noexcept {
        constexpr std::size_t kChunk = std::size_t{1} << 21;
        char* c = reinterpret_cast<char*>(p.data);
        bool populate = true;
        for (std::size_t o = 0; o < bytes && !p.stop.load(std::memory_order_relaxed); o += kChunk) {
            const std::size_t len = std::min(kChunk, bytes - o);
#ifdef MADV_POPULATE_WRITE
            if (populate) {
                if (::madvise(c + o, len, MADV_POPULATE_WRITE) == 0) continue;
                if (errno != EINVAL) break;
            }
#endif
            populate = false;
            for (std::size_t q = 0; q < len; q += 4096) reinterpret_cast<volatile char*>(c + o)[q] = 0;
        }
        p.done.store(true, std::memory_order_release);
    }

    // take_prepared hands over the prepared array if it has `count` buckets (uninitialised),
    // after its thread has stopped; else an empty Buckets.
    Buckets take_prepared(std::uint64_t count) noexcept {
        Buckets out;
        if (!prepared_ || prepared_->count != count) return out;
        stop_prepared();
        out.count = count;
        out.data.reset(prepared_->data);
        prepared_->data = nullptr;
        prepared_.reset();
        return out;
    }

    // drop_prepared gives the prepared array back to the system, once its thread has stopped.
    void drop_prepared() noexcept {
        if (!prepared_) return;
        stop_prepared();
        std::free(prepared_->data);
        prepared_->data = nullptr;
        prepared_.reset();
    }

    void grow_to(std::uint64_t count, bool forced_by_failure) {
        const double lf = static_cast<double>(size_) / static_cast<double>(buckets_.count * kSlotsPerBucket);
        if (prepared_ && prepared_->count != count) drop_prepared();  // not for this growth: first
        buckets_ = rehash(buckets_, count);
        drop_prepared();  // used by rehash, or sized for another growth
        ++stats_grows_;
        stats_grows_failed_ += forced_by_failure;
        stats_lf_at_grow_ = lf;
        stats_rehashed_ += size_;
    }

    TableConfig config_;
    std::shared_ptr<Prepared> prepared_;  // the next growth's index while bulk loading
    bool bulk_ = false;                   // the last batch was bulk (see the top of this file)
    bool grown_by_inserts_ = false;       // the last growth came from inserts, not reserve()
    int grow_threads_ = 1;  // threads of a growth's split: the inserting batch's (writer lock)
    Buckets buckets_;
    std::uint64_t size_ = 0;
    std::uint64_t next_row_ = 0;
    FreeRowSet free_rows_;
    std::vector<std::int64_t> reused_rows_;  // rows a lookup_or_insert took from free_rows_
    mutable RwLock mutex_;  // rwlock.hpp: writer-preferring, reset in a forked child

    mutable std::atomic<std::uint64_t> stats_lookups_{0}, stats_second_{0};
    std::uint64_t stats_inserts_ = 0, stats_erases_ = 0, stats_displacements_ = 0, stats_bfs_ = 0;
    std::uint64_t stats_max_path_ = 0, stats_grows_ = 0, stats_grows_failed_ = 0, stats_rehashed_ = 0;
    double stats_lf_at_grow_ = 0.0;
};

// TableTestAccess: the tests' one door into the table's internals.
struct TableTestAccess {
    // candidate_buckets gives a key's two buckets at the table's current size.
    static std::pair<std::uint64_t, std::uint64_t> candidate_buckets(const CuckooTable& t, std::uint64_t key) {
        std::shared_lock<RwLock> lock(t.mutex_);
        const auto bp = t.buckets_of(key, t.buckets_.count);
        return {bp.first, bp.second};
    }

    // check_invariants returns "" if every invariant holds, else a description of the first
    // violation found.
    static std::string check_invariants(const CuckooTable& t) {
        std::shared_lock<RwLock> lock(t.mutex_);
        std::vector<std::uint8_t> row_seen(t.next_row_, 0);
        std::uint64_t live = 0;
        for (std::uint64_t b = 0; b < t.buckets_.count; ++b) {
            const auto& bk = t.buckets_.data[b];
            for (std::size_t s = 0; s < kSlotsPerBucket; ++s) {
                if (bk.rows[s] == kNoRow) continue;
                ++live;
                const auto bp = t.buckets_of(bk.keys[s], t.buckets_.count);
                if (bp.first != b && bp.second != b) return "key " + std::to_string(bk.keys[s]) + " in a foreign bucket";
                if (bk.rows[s] < 0 || static_cast<std::uint64_t>(bk.rows[s]) >= t.next_row_) return "row out of range";
                if (row_seen[bk.rows[s]]++) return "row " + std::to_string(bk.rows[s]) + " shared";
                if (CuckooTable::find_in(t.buckets_, bk.keys[s], bp) != bk.rows[s]) {
                    return "key " + std::to_string(bk.keys[s]) + " stored twice";
                }
            }
        }
        if (live != t.size_) return "size " + std::to_string(t.size_) + " but " + std::to_string(live) + " live slots";
        std::string bad;
        std::uint64_t listed = 0;
        std::int64_t lowest = -1;
        t.free_rows_.for_each([&](std::int64_t r) {
            if (listed++ == 0) lowest = r;
            if (!bad.empty()) return;
            if (r < 0 || static_cast<std::uint64_t>(r) >= t.next_row_) {
                bad = "free row out of range";
            } else if (row_seen[r]++) {
                bad = "free row " + std::to_string(r) + " is live or listed twice";
            }
        });
        if (!bad.empty()) return bad;
        if (listed != t.free_rows_.size()) return "free row count is off";
        if (!t.free_rows_.empty() && t.free_rows_.top() != lowest) return "top is not the lowest free row";
        for (std::uint64_t r = 0; r < t.next_row_; ++r) {
            if (!row_seen[r]) return "row " + std::to_string(r) + " neither live nor free";
        }
        return "";
    }
};

}  // namespace embtab
