// bench/parts/pool_collection.cpp: embtab::pool_bags (embtab/ops.hpp) alone on the shape of the
// 26-table collection of bench_collection.py: 26 features, tables of 10^3 to 10^6 rows
// (geometric) x 16 float32, 8,192 bags of one Zipf(1.1) entry each, into one (8192, 416)
// output. Prints the median and min of 200 calls on 1 thread.
// Build: g++ -O3 -std=c++17 -ffp-contract=off -I cpp/include bench/parts/pool_collection.cpp
//        -o pool_collection -lpthread   (against another commit's cpp/include to compare)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "embtab/ops.hpp"

int main() {
    constexpr std::size_t kFeatures = 26, kBags = 8192, kDim = 16;
    std::mt19937_64 gen(1);
    std::vector<std::vector<float>> weights(kFeatures);
    std::vector<std::vector<std::int64_t>> rows(kFeatures);
    std::vector<std::int64_t> offsets(kBags + 1);
    for (std::size_t b = 0; b <= kBags; ++b) offsets[b] = static_cast<std::int64_t>(b);
    for (std::size_t f = 0; f < kFeatures; ++f) {
        const auto n = static_cast<std::size_t>(std::llround(std::pow(10.0, 3.0 + 3.0 * f / (kFeatures - 1))));
        weights[f].resize((n + 1) * kDim);  // the last row: the zero row, skipped
        std::normal_distribution<float> normal;
        for (float& x : weights[f]) x = normal(gen);
        std::vector<double> cdf(n);
        double s = 0;
        for (std::size_t i = 0; i < n; ++i) cdf[i] = s += std::pow(static_cast<double>(i + 1), -1.1);
        std::uniform_real_distribution<double> u(0, s);
        rows[f].resize(kBags);
        for (auto& r : rows[f]) {
            const auto rank = std::upper_bound(cdf.begin(), cdf.end(), u(gen)) - cdf.begin();
            r = std::min<std::int64_t>(rank, static_cast<std::int64_t>(n) - 1);
        }
    }
    std::vector<float> out(kBags * kFeatures * kDim);
    std::vector<embtab::PoolFeature<float>> feats(kFeatures);
    for (std::size_t f = 0; f < kFeatures; ++f) {
        auto& p = feats[f];
        p.weight = weights[f].data();
        p.num_rows = weights[f].size() / kDim;
        p.d = kDim;
        p.rows = rows[f].data();
        p.offsets = offsets.data();
        p.num_bags = kBags;
        p.skip_row = static_cast<std::int64_t>(p.num_rows) - 1;
        p.out = out.data() + f * kDim;
        p.ld = kFeatures * kDim;
    }
    std::vector<double> ts;
    for (int rep = 0; rep < 200; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        embtab::pool_bags<float>(feats.data(), kFeatures, 1);
        ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    std::printf("pool_bags, 26 features x 8192 bags of 1 x 16 float32, threads=1: median %.3f ms min %.3f ms\n",
                ts[ts.size() / 2], ts[0]);
    return 0;
}
