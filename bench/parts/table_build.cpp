// bench/parts/table_build.cpp: building a CuckooTable (embtab/table.hpp) of 10^7 random 64-bit
// keys from empty in batches of 65,536, outside Python; three builds, M keys/s each.
// Usage: table_build MAX_LOAD_FACTOR THREADS
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "embtab/table.hpp"

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MAX_LOAD_FACTOR THREADS\n", argv[0]);
        return 2;
    }
    const double lf = std::atof(argv[1]);
    const int threads = std::atoi(argv[2]);
    const std::size_t n = 10000000, batch = 65536;
    std::vector<std::uint64_t> keys(n);
    std::mt19937_64 g(1);
    for (auto& k : keys) k = g();
    std::vector<std::int64_t> rows(batch);
    for (int rep = 0; rep < 3; ++rep) {
        embtab::TableConfig c;
        c.max_load_factor = lf;
        embtab::CuckooTable t(0, c);
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < n; i += batch)
            t.lookup_or_insert(keys.data() + i, std::min(batch, n - i), rows.data(), threads);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%.2f ", static_cast<double>(n) / s / 1e6);
    }
    std::printf("M keys/s (max_load_factor %.2f, %d threads)\n", lf, threads);
    return 0;
}
