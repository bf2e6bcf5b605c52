// tests/cpp/test_optim.cpp: embtab::fused_step against an oracle written from the grouping and
// summing rules in optim.hpp's file comment: for each distinct row (std::map), its occurrences'
// gradients (times per-sample weight, times 1 / live entries with mean) summed in ascending
// order from 0, divided by the count with by_freq, then update_row_body (whose formulas
// tests/test_optim.py checks against torch's optimizers). Same bits for 1 to 4 threads, float
// and double, every optimizer, with and without bags, weights, mean, by_freq, skipped rows (past
// the table or inside it), -0.0 values, d = 0, a broadcast gradient (ld = 0) and a column slice
// (ld > d); an out-of-range row throws and writes nothing, and the next call still works.
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "embtab/optim.hpp"

namespace {

template <class T>
struct Case {
    std::size_t R = 0, d = 0, n = 0, nb = 0;
    std::int64_t skip = 0;
    std::vector<std::int64_t> rows, off;
    std::vector<T> grad, psw;
    embtab::BatchGrad<T> bg;
    embtab::OptimStep p;
};

// oracle applies the step to w, s1, s2 from the definitions; returns the distinct rows.
template <class T>
std::size_t oracle(const Case<T>& c, std::vector<T>& w, T* s1, T* s2) {
    const auto& bg = c.bg;
    const std::int64_t skip = c.skip;
    std::map<std::int64_t, std::vector<T>> sum;
    std::map<std::int64_t, std::size_t> count;
    for (std::size_t b = 0; b < c.nb; ++b) {
        const std::size_t i0 = bg.offsets ? static_cast<std::size_t>(bg.offsets[b]) : b;
        const std::size_t i1 = bg.offsets ? static_cast<std::size_t>(bg.offsets[b + 1]) : b + 1;
        std::size_t live = 0;
        for (std::size_t i = i0; i < i1; ++i) live += c.rows[i] != skip;
        for (std::size_t i = i0; i < i1; ++i) {
            const std::int64_t r = c.rows[i];
            if (r == skip) continue;
            T k = bg.psw ? bg.psw[i] : T(1);
            if (bg.mean) k = k * (T(1) / static_cast<T>(live));
            auto it = sum.find(r);
            if (it == sum.end()) it = sum.emplace(r, std::vector<T>(c.d, T(0))).first;
            const T* g = bg.grad + b * bg.ld;
            for (std::size_t j = 0; j < c.d; ++j)
                it->second[j] = it->second[j] + (bg.psw || bg.mean ? g[j] * k : g[j]);
            ++count[r];
        }
    }
    const std::size_t w1 = c.p.kind == embtab::OptimKind::kRowWiseAdagrad ? 1 : c.d;
    std::vector<T> tmp(c.d);
    for (auto& [r, g] : sum) {
        if (bg.by_freq)
            for (auto& x : g) x = x / static_cast<T>(count[r]);
        const std::size_t u = static_cast<std::size_t>(r);
        embtab::fused_base::update_row_body<T>(c.p, w.data() + u * c.d, g.data(), s1 ? s1 + u * w1 : nullptr,
                                       s2 ? s2 + u * c.d : nullptr, tmp.data(), c.d);
    }
    return sum.size();
}

// same_bits: a and b hold the same bytes (NaN payloads and the sign of zero included).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// draw returns a value in (-1, 1), or -0.0 one time in 16 (the first occurrence's 0 + g must
// turn a -0.0 gradient into +0.0, as adding to a zeroed row does).
template <class T>
T draw(std::mt19937_64& g) {
    std::uniform_real_distribution<double> U(-1.0, 1.0);
    return g() % 16 == 0 ? -T(0) : static_cast<T>(U(g));
}

template <class T>
void random_steps() {
    std::mt19937_64 g(7);
    std::uniform_real_distribution<double> U(-1.0, 1.0);
    for (int trial = 0; trial < 48; ++trial) {
        Case<T> c;
        c.R = 1 + g() % 2000;
        c.d = g() % 41;  // d = 0 included
        c.n = g() % 30000;  // up to several of phase 3's chunks per thread
        // skip_row: the zero row past the table, or (one trial in 4) a row inside it
        c.skip = trial % 4 == 3 ? static_cast<std::int64_t>(g() % c.R) : static_cast<std::int64_t>(c.R);
        const bool bags = g() % 2, psw = g() % 2, mean = bags && g() % 2, by_freq = g() % 2, bcast = trial % 5 == 0;
        const std::size_t pad = trial % 3 == 1 ? 5 : 0;  // ld > d: a column slice of a wider gradient
        c.rows.resize(c.n);
        for (auto& r : c.rows) {  // skewed: a few rows take most occurrences; 2% skipped
            const double x = std::pow(0.5 + 0.5 * U(g), 3.0);
            r = std::min<std::int64_t>(static_cast<std::int64_t>(x * c.R), static_cast<std::int64_t>(c.R) - 1);
            if (g() % 50 == 0) r = c.skip;
        }
        c.nb = c.n;
        if (bags) {
            c.off.assign(1, 0);
            while (c.off.back() < static_cast<std::int64_t>(c.n))
                c.off.push_back(std::min<std::int64_t>(static_cast<std::int64_t>(c.n), c.off.back() + static_cast<std::int64_t>(g() % 9)));
            c.nb = c.off.size() - 1;
        }
        c.grad.resize(c.nb * (c.d + pad));
        for (auto& x : c.grad) x = draw<T>(g);
        c.psw.resize(c.n);
        for (auto& x : c.psw) x = draw<T>(g);
        c.bg.grad = c.grad.data();
        c.bg.num_bags = c.nb;
        c.bg.ld = bcast ? 0 : c.d + pad;
        c.bg.offsets = bags ? c.off.data() : nullptr;
        c.bg.psw = psw ? c.psw.data() : nullptr;
        c.bg.mean = mean;
        c.bg.by_freq = by_freq;
        c.p.kind = static_cast<embtab::OptimKind>(trial % 4);
        c.p.lr = 0.1;
        c.p.eps = 1e-3;
        if (trial % 8 == 0) {
            c.p.momentum = 0.9;
            c.p.weight_decay = 0.01;
            c.p.nesterov = trial % 16 == 0;
        }
        const bool has_s1 = c.p.kind != embtab::OptimKind::kSGD || c.p.momentum != 0.0;
        const bool has_s2 = c.p.kind == embtab::OptimKind::kAdam;
        std::vector<T> w0((c.R + 1) * c.d), s10((c.R + 1) * c.d), s20((c.R + 1) * c.d);
        for (auto& x : w0) x = draw<T>(g);
        for (auto& x : s10) x = std::abs(draw<T>(g));
        for (auto& x : s20) x = std::abs(draw<T>(g));
        std::vector<T> wo = w0, s1o = s10, s2o = s20;
        const std::size_t nu = oracle(c, wo, has_s1 ? s1o.data() : nullptr, has_s2 ? s2o.data() : nullptr);
        for (int threads : {1, 2, 3, 4}) {
            std::vector<T> w = w0, s1 = s10, s2 = s20;
            for (int rep = 0; rep < 2; ++rep) {  // the second call reuses the thread's scratch
                if (rep == 1) w = w0, s1 = s10, s2 = s20;
                const std::size_t got = embtab::fused_step<T>(
                    w.data(), c.R, c.d, c.rows.data(), c.n, c.skip, c.bg, has_s1 ? s1.data() : nullptr,
                    has_s2 ? s2.data() : nullptr, c.p, threads);
                CHECK(got == nu);
                CHECK(same_bits(w, wo));
                CHECK(same_bits(s1, s1o));
                CHECK(same_bits(s2, s2o));
            }
        }
    }
}

void out_of_range_writes_nothing() {
    const std::size_t R = 10, d = 4, n = 20000;
    std::vector<float> w((R + 1) * d, 1.0f);
    const std::vector<float> w0 = w;
    std::vector<std::int64_t> rows(n, 3);
    std::vector<float> grad(n * d, 1.0f);
    embtab::BatchGrad<float> bg;
    bg.grad = grad.data();
    bg.num_bags = n;
    bg.ld = d;
    embtab::OptimStep p;
    p.lr = 1.0;
    for (std::int64_t bad : {std::int64_t{11}, std::int64_t{-1}}) {
        rows[15000] = bad;
        for (int threads : {1, 2}) {
            bool threw = false;
            try {
                embtab::fused_step<float>(w.data(), R, d, rows.data(), n, static_cast<std::int64_t>(R), bg, nullptr,
                                          nullptr, p, threads);
            } catch (const std::out_of_range& e) {
                threw = std::strstr(e.what(), "rows[15000]") != nullptr;
            }
            CHECK(threw);
            CHECK(w == w0);
        }
    }
    rows[15000] = 3;  // the markers were reset: the next step sees row 3 as new
    CHECK(embtab::fused_step<float>(w.data(), R, d, rows.data(), n, static_cast<std::int64_t>(R), bg, nullptr,
                                    nullptr, p, 2) == 1);
    CHECK(w[3 * d] == 1.0f - static_cast<float>(n));
    CHECK(w[4 * d] == 1.0f);
}

}  // namespace

// first_occurrence_adds_to_zero: a row whose only gradient is -0.0 gets +0.0 (0 + -0), so an
// SGD step on a -0.0 weight gives -0.0 - lr * +0.0 = -0.0, where copying the gradient would give
// -0.0 - lr * -0.0 = +0.0.
void first_occurrence_adds_to_zero() {
    std::vector<float> w = {-0.0f, 1.0f};
    const std::vector<std::int64_t> rows = {0};
    const std::vector<float> grad = {-0.0f};
    embtab::BatchGrad<float> bg;
    bg.grad = grad.data();
    bg.num_bags = 1;
    bg.ld = 1;
    embtab::OptimStep p;
    p.lr = 1.0;
    CHECK(embtab::fused_step<float>(w.data(), 1, 1, rows.data(), 1, 1, bg, nullptr, nullptr, p, 1) == 1);
    CHECK(std::signbit(w[0]));
}

int main() {
    random_steps<float>();
    random_steps<double>();
    first_occurrence_adds_to_zero();
    out_of_range_writes_nothing();
    return embtab_test::failures();
}
