// C++ unit tests of embtab::topk (rerank/topk.hpp) against std::partial_sort with the same
// order (value descending, then index ascending): float and double, small k (insertion
// buffer) and large k (radix select), rows with many ties, -inf, +inf and -0.0/+0.0, any
// thread count; and the lowest row holding a NaN is reported.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "check.hpp"
#include "embtab/rerank/topk.hpp"

namespace {

template <class S>
void against_partial_sort(std::int64_t U, std::int64_t N, std::int64_t k, int ties, int threads, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    std::vector<S> scores(static_cast<std::size_t>(U * N));
    for (auto& x : scores) {
        x = ties ? static_cast<S>(rng() % ties) : static_cast<S>(nd(rng));
        if (rng() % 97 == 0) x = -std::numeric_limits<S>::infinity();
        if (rng() % 101 == 0) x = std::numeric_limits<S>::infinity();
        if (rng() % 89 == 0) x = rng() % 2 ? S(0) : -S(0);
    }
    std::vector<S> vals(static_cast<std::size_t>(U * k));
    std::vector<std::int64_t> ids(static_cast<std::size_t>(U * k));
    CHECK(embtab::topk<S>(scores.data(), U, N, k, vals.data(), ids.data(), threads) == -1);
    for (std::int64_t u = 0; u < U; ++u) {
        const S* row = scores.data() + u * N;
        std::vector<std::int64_t> order(static_cast<std::size_t>(N));
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int64_t a, std::int64_t b) {
            return row[a] > row[b] || (row[a] == row[b] && a < b);
        });
        for (std::int64_t j = 0; j < k; ++j) {
            CHECK(ids[static_cast<std::size_t>(u * k + j)] == order[static_cast<std::size_t>(j)]);
            CHECK(vals[static_cast<std::size_t>(u * k + j)] == row[order[static_cast<std::size_t>(j)]]);
        }
    }
}

void nan_row_reported() {
    std::vector<double> s(40 * 50, 1.0);
    s[17 * 50 + 3] = std::nan("");
    s[30 * 50 + 9] = std::nan("");
    std::vector<double> v(40 * 5);
    std::vector<std::int64_t> ix(40 * 5);
    CHECK(embtab::topk<double>(s.data(), 40, 50, 5, v.data(), ix.data(), 2) == 17);
}

}  // namespace

int main() {
    for (int threads : {1, 3}) {
        against_partial_sort<double>(37, 500, 10, 0, threads, 1);
        against_partial_sort<float>(37, 500, 10, 0, threads, 2);
        against_partial_sort<double>(20, 3000, 200, 0, threads, 3);   // radix select
        against_partial_sort<float>(20, 3000, 200, 0, threads, 4);
        against_partial_sort<double>(20, 1000, 64, 5, threads, 5);    // heavy ties
        against_partial_sort<float>(20, 1000, 300, 3, threads, 6);
        against_partial_sort<double>(5, 7, 7, 0, threads, 7);         // k == N
    }
    nan_row_reported();
    return embtab_test::failures();
}
