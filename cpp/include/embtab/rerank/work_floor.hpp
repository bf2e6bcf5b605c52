// embtab/rerank/work_floor.hpp: a benchmark's reference kernel (bound to embtab._core._testing only).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "embtab/parallel.hpp"
#include "embtab/rerank/scan.hpp"
#include "embtab/rerank/types.hpp"
#include "embtab/vlog.hpp"

namespace embtab {

// work floor ////////////////////////////////////////////////////////////////////////////////

// work_floor runs only the arithmetic every greedy step needs, for a benchmark's reference:
// per user and step, n_entries logs into a table and a full scan of C candidates with `width`
// packed 16-bit slots each (then the argmax), on synthetic slots; no input checks, set-up or
// bookkeeping. logs_only skips the scan. Returns a checksum so nothing is optimised away.
inline double work_floor(std::int64_t U, std::int64_t C, std::int64_t k, int width, int n_entries, bool logs_only,
                         int num_threads) {
    const std::size_t chunks = (static_cast<std::size_t>(U) + kRerankGrain - 1) / kRerankGrain;
    std::vector<double> sums(chunks, 0.0);
    parallel_for(static_cast<std::size_t>(U), num_threads, kRerankGrain, [&](std::size_t b, std::size_t e) {
        std::vector<std::uint16_t> idx(static_cast<std::size_t>(C) * 4, 0);
        std::vector<double> a(static_cast<std::size_t>(C)), v(static_cast<std::size_t>(C));
        std::vector<double> T(static_cast<std::size_t>(n_entries) + 1, 0.0);
        std::uint64_t x = 0x9e3779b97f4a7c15ull * (b + 1);
        for (std::int64_t c = 0; c < C; ++c) {
            for (int j = 0; j < width; ++j) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                idx[static_cast<std::size_t>(c * 4 + j)] = static_cast<std::uint16_t>(1 + x % static_cast<std::uint64_t>(n_entries));
            }
            a[static_cast<std::size_t>(c)] = static_cast<double>(x % 1000) * 1e-3;
        }
        double acc = 0.0;
        for (std::size_t u = b; u < e; ++u) {
            for (std::int64_t t = 0; t < k; ++t) {
                const double o = 0.01 * static_cast<double>(t + 1) + static_cast<double>(u % 7) * 1e-3;
                for (int i = 1; i <= n_entries; ++i) T[static_cast<std::size_t>(i)] = 1.0 + static_cast<double>(i) / o;
                vlog_batch(T.data() + 1, T.data() + 1, static_cast<std::size_t>(n_entries));
                for (int i = 1; i <= n_entries; ++i) T[static_cast<std::size_t>(i)] *= 0.1;
                if (logs_only) {
                    acc += T[1];
                    continue;
                }
                std::int64_t bi;
                switch (width) {
                    case 1: detail::scan_values_packed<1>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    case 2: detail::scan_values_packed<2>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    case 3: detail::scan_values_packed<3>(a.data(), idx.data(), T.data(), C, v.data()); break;
                    default: detail::scan_values_packed<4>(a.data(), idx.data(), T.data(), C, v.data()); break;
                }
                bi = detail::argmax_first(v.data(), C);
                acc += static_cast<double>(bi);
            }
        }
        sums[b / kRerankGrain] = acc;
    });
    double total = 0.0;
    for (double x : sums) total += x;
    return total;
}

}  // namespace embtab
