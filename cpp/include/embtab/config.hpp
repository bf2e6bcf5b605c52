// embtab/config.hpp: the tuning constants of the cuckoo table, each with what it governs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace embtab {

// Slots in one bucket. A bucket is 4 keys + 4 rows = 64 bytes: one cache line, so a lookup
// costs at most two cache misses (its two candidate buckets).
inline constexpr std::size_t kSlotsPerBucket = 4;

// Bytes in one cache line; buckets are aligned to it.
inline constexpr std::size_t kCacheLine = 64;

// Longest displacement path the insert BFS explores (number of keys moved). libcuckoo uses 5;
// with 4-slot buckets it lets the table fill past 0.95 before an insert fails.
inline constexpr std::size_t kMaxBfsPathLen = 5;

// kMinPlaceableCheckBuckets: in an index of at least this many buckets, an ID that finds no
// place under half of max_load_factor is refused as one of a set chosen to collide
// (CuckooTable::check_placeable); smaller indexes grow for it.
inline constexpr std::uint64_t kMinPlaceableCheckBuckets = 64;

// Fixed BFS queue size: an insert never allocates. Enough for every bucket reachable within
// kMaxBfsPathLen - 1 displacements from two start buckets (2·(1+4+16+64+256) = 682).
inline constexpr std::size_t kBfsQueueSize = 1024;

// How many keys ahead a batched lookup hashes and prefetches, so that many cache misses are in
// flight at once. 32 beat 16 by 1.1-1.3x on uniform lookups of a 10^7-key table (bench/README.md).
inline constexpr std::size_t kPrefetchDistance = 32;

// The same for inserting batches (lookup_or_insert), whose inserts write the buckets they read.
inline constexpr std::size_t kInsertPrefetchDistance = 16;

// Keys per work item of a parallel batch; batches at most this long run on the calling thread.
inline constexpr std::size_t kParallelGrain = 1 << 14;

// Default load factor at which the table grows, and the accepted range for it. 0.9, not 0.95:
// the inserts between 0.9 and 0.95 load need displacement searches (a few random bucket reads
// each); filling a reserved table of 10^7 IDs ran at 6.0 M keys/s to 0.95 against 9.6 to 0.9,
// and growing builds 1.2-2.1x slower in the median (bench/README.md, "New IDs", its runs from
// 0b0ab01 to 299b59d), for 16.8 instead of 17.8 index bytes per key at growth.
inline constexpr double kDefaultMaxLoadFactor = 0.9;
inline constexpr double kMinMaxLoadFactor = 0.5;
inline constexpr double kMaxMaxLoadFactor = 0.98;

// Default growth factor of the bucket count (any value in (1, 16] is accepted).
inline constexpr double kDefaultGrowthFactor = 2.0;

// Smallest bucket count; the two candidate buckets of a key are always distinct.
inline constexpr std::uint64_t kMinBuckets = 2;

// Largest bucket count: its byte count (x 64) and slot count (x 4) fit in 63 bits, so no size
// derived from it overflows. (Far beyond any machine: allocation is refused long before.)
inline constexpr std::uint64_t kMaxBuckets = std::uint64_t{1} << 56;

// Marks an empty slot (rows are never negative) and an absent key in lookup results.
inline constexpr std::int64_t kNoRow = -1;

// The on-disk format (see CuckooTable::serialize).
inline constexpr char kFileMagic[8] = {'E', 'M', 'B', 'T', 'A', 'B', 'C', 'K'};
inline constexpr std::uint32_t kFormatVersion = 1;

static_assert(kSlotsPerBucket * 2 * sizeof(std::uint64_t) == kCacheLine,
              "a bucket (keys + rows) must fill exactly one cache line");
static_assert((kPrefetchDistance & (kPrefetchDistance - 1)) == 0, "prefetch distance must be a power of 2");
static_assert((kInsertPrefetchDistance & (kInsertPrefetchDistance - 1)) == 0, "prefetch distance must be a power of 2");
static_assert(kMaxBuckets <= (std::uint64_t{1} << 63) / kCacheLine, "the largest index must have a representable size");
static_assert(kBfsQueueSize >= 2 * (1 + 4 + 16 + 64 + 256), "BFS queue must hold every reachable bucket");

}  // namespace embtab
