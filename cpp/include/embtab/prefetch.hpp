// embtab/prefetch.hpp: software prefetch of table rows read at random, shared by the fused
// optimizer step (optim.hpp) and the pooling of bags (ops.hpp).
#pragma once

#include <algorithm>
#include <cstddef>

namespace embtab {

// A loop over random rows asks for the row it will use rows_ahead(row_bytes) rows later: about
// kPrefetchBytes of rows in flight, at least kPrefetchRowsMin and at most kPrefetchRowsMax rows
// (a fixed 8 rows would keep only 512 bytes in flight for the 64-byte rows of d = 16 float32).
inline constexpr std::size_t kPrefetchBytes = 2048;
inline constexpr std::size_t kPrefetchRowsMin = 8;
inline constexpr std::size_t kPrefetchRowsMax = 32;

// rows_ahead is how many rows of `row_bytes` bytes ahead to prefetch (see kPrefetchBytes).
inline std::size_t rows_ahead(std::size_t row_bytes) noexcept {
    return std::clamp(kPrefetchBytes / std::max<std::size_t>(row_bytes, 1), kPrefetchRowsMin, kPrefetchRowsMax);
}

// prefetch_row asks for the cache lines of x[0, len) to be written soon.
template <class T>
inline void prefetch_row(const T* x, std::size_t len) noexcept {
    const char* c = reinterpret_cast<const char*>(x);
    for (std::size_t b = 0; b < len * sizeof(T); b += 64) __builtin_prefetch(c + b, 1, 3);
}

// prefetch_row_read asks for the cache lines of x[0, len) to be read soon.
template <class T>
inline void prefetch_row_read(const T* x, std::size_t len) noexcept {
    const char* c = reinterpret_cast<const char*>(x);
    for (std::size_t b = 0; b < len * sizeof(T); b += 64) __builtin_prefetch(c + b, 0, 3);
}

}  // namespace embtab
