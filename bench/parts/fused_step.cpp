// bench/parts/fused_step.cpp: the C++ fused step alone (embtab/optim.hpp), outside Python, on
// the batches bench/parts/parts.py writes (rows.bin: 8 batches of 65,536 int64 rows, the module's
// rows of Zipf(1.1) IDs over 1,000,000, first-occurrence order). Prints the median and min of
// 400 calls. Usage: fused_step ROWS_FILE {sgd|rw|adagrad|adam} THREADS [bcast]
// (bcast: one gradient row for every bag, as a sum() loss gives; default one row per bag)
// Compile against another commit's cpp/include to compare the step across commits (before
// commit 5481923, BatchGrad has no `ld`: drop that line).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "embtab/optim.hpp"
#include "issue16.hpp"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s ROWS_FILE {sgd|rw|adagrad|adam} THREADS\n", argv[0]);
        return 2;
    }
    const char* kind = argv[2];
    const int threads = std::atoi(argv[3]);
    const std::size_t n = issue16::kRows, d = issue16::kDim, batch = issue16::kBatch, bag = issue16::kBag;
    const std::vector<std::int64_t> rows = issue16::read_rows(argv[1]);
    // 64-byte aligned (issue16::Floats): with std::vector the 2-thread step looked slower than
    // the modules' is
    issue16::StepArrays a;
    issue16::Floats &w = a.w, &s1 = a.s1, &s2 = a.s2;
    std::vector<float>& grad = a.grad;
    std::vector<std::int64_t>& off = a.off;
    embtab::BatchGrad<float> bg;
    bg.grad = grad.data();
    bg.num_bags = batch / bag;
    bg.ld = argc > 4 && !std::strcmp(argv[4], "bcast") ? 0 : d;  // bcast: a sum() loss's gradient
    bg.offsets = off.data();
    embtab::OptimStep p;
    p.lr = 1e-3;
    p.eps = 1e-8;
    if (!std::strcmp(kind, "rw")) p.kind = embtab::OptimKind::kRowWiseAdagrad;
    if (!std::strcmp(kind, "adagrad")) p.kind = embtab::OptimKind::kAdagrad;
    if (!std::strcmp(kind, "adam")) p.kind = embtab::OptimKind::kAdam;
    std::vector<double> ts;
    for (int rep = 0; rep < 400; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        embtab::fused_step<float>(w.p, n, d, rows.data() + (rep % 8) * batch, batch, static_cast<std::int64_t>(n),
                                  bg, p.kind == embtab::OptimKind::kSGD ? nullptr : s1.p,
                                  p.kind == embtab::OptimKind::kAdam ? s2.p : nullptr, p, threads);
        ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    std::printf("%s threads=%d median %.3f ms min %.3f ms\n", kind, threads, ts[ts.size() / 2], ts[0]);
    return 0;
}
