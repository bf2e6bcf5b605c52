// bench/parts/pool_bags.cpp: embtab::pool_bags (embtab/ops.hpp) alone, outside Python, on the
// batches bench/parts/parts.py writes (rows.bin: 8 batches of 65,536 int64 rows of the issue-16
// workload, Zipf(1.1) over 1,000,000 rows) as one feature of 8,192 bags of 8 entries, sum pooling,
// a 1,000,001 x 64 float32 weight. Prints the median and min of 400 calls on 1 thread.
// Usage: pool_bags ROWS_FILE. Compile against another commit's cpp/include to compare.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "embtab/ops.hpp"
#include "issue16.hpp"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s ROWS_FILE\n", argv[0]);
        return 2;
    }
    const std::size_t n = issue16::kRows, d = issue16::kDim, batch = issue16::kBatch, bag = issue16::kBag;
    const std::vector<std::int64_t> rows = issue16::read_rows(argv[1]);
    std::vector<float> w((n + 1) * d);
    std::mt19937 g(1);
    std::normal_distribution<float> nd;
    for (auto& x : w) x = nd(g);
    std::vector<std::int64_t> off(batch / bag + 1);
    for (std::size_t b = 0; b <= batch / bag; ++b) off[b] = static_cast<std::int64_t>(b * bag);
    std::vector<float> out(batch / bag * d);
    std::vector<double> ts;
    for (int rep = 0; rep < 400; ++rep) {
        embtab::PoolFeature<float> p;
        p.weight = w.data();
        p.num_rows = n + 1;
        p.d = d;
        p.rows = rows.data() + (rep % 8) * batch;
        p.offsets = off.data();
        p.num_bags = batch / bag;
        p.skip_row = static_cast<std::int64_t>(n);
        p.out = out.data();
        p.ld = d;
        const auto t0 = std::chrono::steady_clock::now();
        embtab::pool_bags<float>(&p, 1, 1);
        ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    std::printf("pool_bags threads=1 median %.3f ms min %.3f ms\n", ts[ts.size() / 2], ts[0]);
    return 0;
}
