// C++ unit tests of embtab's vectorised log (vlog.hpp) against std::log: within 1 ulp over
// random inputs of the reranker's domain (1 + r, r >= 0) and over all finite normal doubles,
// bit-identical at every ISA level the CPU has (the dispatch capped through isa_limit), and
// for any batch length (a vector lane or the scalar tail gives the same bits).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "check.hpp"
#include "embtab/vlog.hpp"

namespace {

std::int64_t ulps(double a, double b) {
    std::int64_t ia, ib;
    std::memcpy(&ia, &a, 8);
    std::memcpy(&ib, &b, 8);
    return ia > ib ? ia - ib : ib - ia;  // both positive or both negative here
}

std::vector<double> inputs() {
    std::mt19937_64 rng(2026);
    std::vector<double> x;
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int i = 0; i < 200000; ++i) x.push_back(1.0 + u(rng) * std::pow(10.0, -12.0 + 24.0 * u(rng)));
    for (int i = 0; i < 200000; ++i) {
        std::uint64_t b = rng() & 0x7FFFFFFFFFFFFFFFULL;
        double d;
        std::memcpy(&d, &b, 8);
        if (std::isnormal(d)) x.push_back(d);
    }
    for (double e : {1.0, 2.0, 0.5, 1e-300, 1e300, 0.7071067811865476, 1.4142135623730951}) x.push_back(e);
    return x;
}

}  // namespace

int main() {
    const std::vector<double> x = inputs();
    std::vector<double> best(x.size()), y(x.size());
    embtab::vlog_batch(x.data(), best.data(), x.size());
    std::int64_t worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double want = std::log(x[i]);
        if (want == 0.0) {
            CHECK(best[i] == 0.0);
            continue;
        }
        worst = std::max(worst, ulps(best[i], want));
    }
    CHECK(worst <= 1);
    for (std::size_t i = 0; i < 1000; ++i) CHECK(embtab::vlog(x[i]) == best[i]);
    for (int level : {2, 1}) {  // at most AVX2, then the baseline ISA
        embtab::detail::isa_limit().store(level);
        embtab::vlog_batch(x.data(), y.data(), x.size());
        CHECK(std::memcmp(y.data(), best.data(), x.size() * sizeof(double)) == 0);
    }
    embtab::detail::isa_limit().store(0);
    for (std::size_t n : {1, 3, 4, 7, 8, 9, 15, 17}) {
        embtab::vlog_batch(x.data() + 5, y.data(), n);
        CHECK(std::memcmp(y.data(), best.data() + 5, n * sizeof(double)) == 0);
    }
    return embtab_test::failures();
}
