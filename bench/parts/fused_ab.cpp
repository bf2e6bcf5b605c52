// bench/parts/fused_ab.cpp: two builds of the fused step (fused_ab_lib.cpp, built from two
// commits' cpp/include) in one process, on the batches bench/parts/parts.py writes (rows.bin),
// at 1 and 2 threads. The four settings take turns every 8 calls over 3,200 calls, so that the
// host's slow spells, which move a 2-thread run of one process by up to 1.5x, fall on all of
// them alike; prints each setting's median and the 2-thread / 1-thread speed-up of each build.
// Usage: fused_ab ROWS_FILE {sgd|adagrad|rw|adam} {rows|bcast} A.so B.so
// (rows: one gradient row per bag; bcast: one row for every bag, as a sum() loss gives.)
// Build: g++ -O3 -std=c++17 -I bench/parts bench/parts/fused_ab.cpp -o fused_ab -ldl
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "issue16.hpp"

using StepFn = void (*)(float*, std::size_t, std::size_t, const std::int64_t*, std::size_t, const float*, std::size_t,
                        std::size_t, const std::int64_t*, float*, float*, int, int);

// load returns fused_ab_step of the library at `path`; exits with status 2 if it cannot.
static StepFn load(const char* path) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    void* f = h != nullptr ? dlsym(h, "fused_ab_step") : nullptr;
    if (f == nullptr) {
        std::fprintf(stderr, "cannot load fused_ab_step from %s: %s\n", path, dlerror());
        std::exit(2);
    }
    return reinterpret_cast<StepFn>(f);
}

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: %s ROWS_FILE {sgd|adagrad|rw|adam} {rows|bcast} A.so B.so\n", argv[0]);
        return 2;
    }
    const char* names[] = {"sgd", "adagrad", "rw", "adam"};  // embtab::OptimKind's order
    int kind = -1;
    for (int k = 0; k < 4; ++k)
        if (!std::strcmp(argv[2], names[k])) kind = k;
    if (kind < 0) return 2;
    const bool bcast = !std::strcmp(argv[3], "bcast");
    const std::size_t n = issue16::kRows, d = issue16::kDim, batch = issue16::kBatch, bag = issue16::kBag;
    const std::vector<std::int64_t> rows = issue16::read_rows(argv[1]);
    const StepFn step[2] = {load(argv[4]), load(argv[5])};
    issue16::StepArrays a;
    issue16::Floats &w = a.w, &s1 = a.s1, &s2 = a.s2;
    std::vector<float>& grad = a.grad;
    std::vector<std::int64_t>& off = a.off;
    std::vector<double> ts[2][2];
    for (int call = 0; call < 3200; ++call) {
        const int setting = (call / 8) % 4, lib = setting / 2, threads = 1 + setting % 2;
        const auto t0 = std::chrono::steady_clock::now();
        step[lib](w.p, n, d, rows.data() + (call % issue16::kBatches) * batch, batch, grad.data(), batch / bag,
                  bcast ? 0 : d, off.data(), kind == 0 ? nullptr : s1.p, kind == 3 ? s2.p : nullptr, kind, threads);
        ts[lib][threads - 1].push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    double med[2][2];
    for (int lib = 0; lib < 2; ++lib) {
        for (int t = 0; t < 2; ++t) {
            auto& x = ts[lib][t];
            std::sort(x.begin(), x.end());
            med[lib][t] = x[x.size() / 2];
        }
    }
    std::printf("%s %s: A 1 thread %.3f ms, 2 threads %.3f ms (%.2fx) | B 1 thread %.3f ms, 2 threads %.3f ms (%.2fx)\n",
                argv[2], bcast ? "bcast" : "rows", med[0][0], med[0][1], med[0][0] / med[0][1], med[1][0], med[1][1],
                med[1][0] / med[1][1]);
    return 0;
}
