// bench/parts/table_build.cpp: building a CuckooTable (embtab/table.hpp) of 10^7 random 64-bit
// keys from empty in batches of 65,536, outside Python; three builds, M keys/s each, and the
// time spent in the calls that grew the table.
// Usage: table_build MAX_LOAD_FACTOR THREADS [IDLE_SECONDS]
// IDLE_SECONDS (default 0): sleep before the first build, so that on a virtual machine whose
// kernel hands free memory back to the host the first build starts from cold pages (see
// bench/README.md, "Cold huge pages").
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "embtab/table.hpp"

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MAX_LOAD_FACTOR THREADS [IDLE_SECONDS]\n", argv[0]);
        return 2;
    }
    const double lf = std::atof(argv[1]);
    const int threads = std::atoi(argv[2]);
    const double idle = argc > 3 ? std::atof(argv[3]) : 0.0;
    const std::size_t n = 10000000, batch = 65536;
    std::vector<std::uint64_t> keys(n);
    std::mt19937_64 g(1);
    for (auto& k : keys) k = g();
    std::vector<std::int64_t> rows(batch);
    std::this_thread::sleep_for(std::chrono::duration<double>(idle));
    double growing[3];
    for (int rep = 0; rep < 3; ++rep) {
        embtab::TableConfig c;
        c.max_load_factor = lf;
        embtab::CuckooTable t(0, c);
        growing[rep] = 0.0;
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < n; i += batch) {
            const auto grows = t.stats().grows;
            const auto c0 = std::chrono::steady_clock::now();
            t.lookup_or_insert(keys.data() + i, std::min(batch, n - i), rows.data(), threads);
            if (t.stats().grows != grows)
                growing[rep] += std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%.2f ", static_cast<double>(n) / s / 1e6);
    }
    std::printf("M keys/s (max_load_factor %.2f, %d threads); ms in growing calls: %.0f %.0f %.0f\n", lf, threads,
                growing[0] * 1e3, growing[1] * 1e3, growing[2] * 1e3);
    return 0;
}
