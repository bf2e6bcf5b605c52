// bench/parts/issue16.hpp: what the C++ harnesses of bench/parts share: the issue-16 workload's
// sizes and the batches parts.py writes (rows.bin: 8 batches of 65,536 int64 rows).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace issue16 {

inline constexpr std::size_t kRows = 1000000, kDim = 64, kBatch = 65536, kBag = 8, kBatches = 8;

// read_rows returns the kBatches * kBatch rows of `path`; exits with status 2 if it cannot.
inline std::vector<std::int64_t> read_rows(const char* path) {
    std::vector<std::int64_t> rows(kBatches * kBatch);
    FILE* f = std::fopen(path, "rb");
    if (f == nullptr || std::fread(rows.data(), 8, rows.size(), f) != rows.size()) {
        std::fprintf(stderr, "cannot read %s\n", path);
        std::exit(2);
    }
    std::fclose(f);
    return rows;
}

}  // namespace issue16
