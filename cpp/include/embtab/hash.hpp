// embtab/hash.hpp: the 64-bit mixing function every component of embtab hashes with.
//
// One definition serves the cuckoo table's bucket choice, the hashing-trick baseline
// (row = hash(id) mod m), the per-ID initialisation of new embedding rows and the shard
// owner of an ID, so that Python and C++ agree bit for bit on all of them.
#pragma once

#include <cstdint>

namespace embtab {

// mix64 is a bijective avalanche mixer of x keyed by seed (the SplitMix64 / Stafford
// "variant 13" finaliser applied to x + golden-ratio·(seed+1)). Every output bit depends on
// every input bit; for a fixed seed distinct inputs give distinct outputs. Assumes nothing;
// never throws. The Python mirror is embtab._hashing.mix64 (tested to agree).
inline constexpr std::uint64_t mix64(std::uint64_t x, std::uint64_t seed) noexcept {
    x += 0x9E3779B97F4A7C15ULL * (seed + 1);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// fastrange maps a uniform 64-bit hash onto [0, n) without a division (Lemire 2016):
// the high word of h·n. Assumes n > 0; never throws.
inline std::uint64_t fastrange(std::uint64_t h, std::uint64_t n) noexcept {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace embtab
