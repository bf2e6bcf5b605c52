// bench/parts/fused_ab_lib.cpp: one build of the fused step (embtab/optim.hpp) as a shared
// library with one C entry point, so that fused_ab.cpp can load two builds (two commits'
// cpp/include) into one process and time them side by side. Build one per commit:
//   g++ -O3 -std=c++17 -ffp-contract=off -fPIC -shared -fvisibility=hidden \
//       -I COMMIT/cpp/include bench/parts/fused_ab_lib.cpp -o COMMIT.so -lpthread
#include <cstddef>
#include <cstdint>

#include "embtab/optim.hpp"

// fused_ab_step runs one embtab::fused_step<float> of optimizer `kind` (embtab::OptimKind's
// value; lr 1e-3, eps 1e-8) over `batch` rows of the [n, d] weight (row n skipped), with the
// gradient of each bag (row stride ld; 0: one row for all), on `threads` threads.
extern "C" __attribute__((visibility("default"))) void fused_ab_step(
    float* w, std::size_t n, std::size_t d, const std::int64_t* rows, std::size_t batch, const float* grad,
    std::size_t num_bags, std::size_t ld, const std::int64_t* offsets, float* s1, float* s2, int kind, int threads) {
    embtab::BatchGrad<float> bg;
    bg.grad = grad;
    bg.num_bags = num_bags;
    bg.ld = ld;
    bg.offsets = offsets;
    embtab::OptimStep p;
    p.lr = 1e-3;
    p.eps = 1e-8;
    p.kind = static_cast<embtab::OptimKind>(kind);
    embtab::fused_step<float>(w, n, d, rows, batch, static_cast<std::int64_t>(n), bg, s1, s2, p, threads);
}
