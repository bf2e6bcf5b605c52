// bench/parts/issue16.hpp: what the C++ harnesses of bench/parts share: the issue-16 workload's
// sizes and the batches parts.py writes (rows.bin: 8 batches of 65,536 int64 rows).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
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

// Floats is an array of n floats set to v, aligned to 64 bytes as torch's and NumPy's large
// arrays are (std::vector's memory, malloc's, is 16-byte aligned: it splits every row over one
// more cache line and lets rows of two threads' parts share a line). Exits with status 2 if
// it cannot allocate.
struct Floats {
    float* p;
    Floats(std::size_t n, float v)
        : p(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {
        if (p == nullptr) std::exit(2);
        std::fill_n(p, n, v);
    }
    ~Floats() { std::free(p); }
    Floats(const Floats&) = delete;
    Floats& operator=(const Floats&) = delete;
};

// StepArrays is what a fused step of the issue-16 workload reads and writes: the weight
// [kRows + 1, kDim] drawn N(0, 1) (seed 1), two zeroed state arrays of its shape, one gradient
// row of 1e-3 per bag and the bags' offsets (kBag entries each).
struct StepArrays {
    Floats w{(kRows + 1) * kDim, 0.0f}, s1{(kRows + 1) * kDim, 0.0f}, s2{(kRows + 1) * kDim, 0.0f};
    std::vector<float> grad = std::vector<float>(kBatch / kBag * kDim, 1e-3f);
    std::vector<std::int64_t> off = std::vector<std::int64_t>(kBatch / kBag + 1);
    StepArrays() {
        std::mt19937 g(1);
        std::normal_distribution<float> nd;
        for (std::size_t i = 0; i < (kRows + 1) * kDim; ++i) w.p[i] = nd(g);
        for (std::size_t b = 0; b < off.size(); ++b) off[b] = static_cast<std::int64_t>(b * kBag);
    }
};

}  // namespace issue16
