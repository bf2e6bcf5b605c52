// tests/cpp/test_optim.cpp: embtab::fused_step against an oracle written from the definitions
// in optim.hpp's file comment: for each distinct row (std::map), its occurrences' gradients
// (times per-sample weight, times 1 / live entries with mean) summed in ascending order from 0,
// divided by the count with by_freq, then update_row_body. Same bits for 1 to 4 threads, every
// optimizer, with and without bags, weights, mean, by_freq, skipped rows and a broadcast
// gradient; an out-of-range row throws and writes nothing, and the next call still works.
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "embtab/optim.hpp"

namespace {

struct Case {
    std::size_t R = 0, d = 0, n = 0, nb = 0;
    std::vector<std::int64_t> rows, off;
    std::vector<float> grad, psw;
    embtab::BatchGrad<float> bg;
    embtab::OptimStep p;
};

// oracle applies the step to w, s1, s2 from the definitions; returns the distinct rows.
std::size_t oracle(const Case& c, std::vector<float>& w, float* s1, float* s2) {
    const auto& bg = c.bg;
    const std::int64_t skip = static_cast<std::int64_t>(c.R);
    std::map<std::int64_t, std::vector<float>> sum;
    std::map<std::int64_t, std::size_t> count;
    for (std::size_t b = 0; b < c.nb; ++b) {
        const std::size_t i0 = bg.offsets ? static_cast<std::size_t>(bg.offsets[b]) : b;
        const std::size_t i1 = bg.offsets ? static_cast<std::size_t>(bg.offsets[b + 1]) : b + 1;
        std::size_t live = 0;
        for (std::size_t i = i0; i < i1; ++i) live += c.rows[i] != skip;
        for (std::size_t i = i0; i < i1; ++i) {
            const std::int64_t r = c.rows[i];
            if (r == skip) continue;
            float k = bg.psw ? bg.psw[i] : 1.0f;
            if (bg.mean) k = k * (1.0f / static_cast<float>(live));
            auto it = sum.find(r);
            if (it == sum.end()) it = sum.emplace(r, std::vector<float>(c.d, 0.0f)).first;
            const float* g = bg.grad + b * bg.ld;
            for (std::size_t j = 0; j < c.d; ++j)
                it->second[j] = it->second[j] + (bg.psw || bg.mean ? g[j] * k : g[j]);
            ++count[r];
        }
    }
    const std::size_t w1 = c.p.kind == embtab::OptimKind::kRowWiseAdagrad ? 1 : c.d;
    std::vector<float> tmp(c.d);
    for (auto& [r, g] : sum) {
        if (bg.by_freq)
            for (auto& x : g) x = x / static_cast<float>(count[r]);
        const std::size_t u = static_cast<std::size_t>(r);
        embtab::update_row_body<float>(c.p, w.data() + u * c.d, g.data(), s1 ? s1 + u * w1 : nullptr,
                                       s2 ? s2 + u * c.d : nullptr, tmp.data(), c.d);
    }
    return sum.size();
}

void random_steps() {
    std::mt19937_64 g(7);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    for (int trial = 0; trial < 48; ++trial) {
        Case c;
        c.R = 1 + g() % 2000;
        c.d = 1 + g() % 40;
        c.n = g() % 30000;  // up to several of phase 3's chunks per thread
        const bool bags = g() % 2, psw = g() % 2, mean = bags && g() % 2, by_freq = g() % 2, bcast = trial % 5 == 0;
        c.rows.resize(c.n);
        for (auto& r : c.rows) {  // skewed: a few rows take most occurrences; 2% skipped
            const double x = std::pow(0.5 + 0.5 * U(g), 3.0);
            r = std::min<std::int64_t>(static_cast<std::int64_t>(x * c.R), static_cast<std::int64_t>(c.R) - 1);
            if (g() % 50 == 0) r = static_cast<std::int64_t>(c.R);
        }
        c.nb = c.n;
        if (bags) {
            c.off.assign(1, 0);
            while (c.off.back() < static_cast<std::int64_t>(c.n))
                c.off.push_back(std::min<std::int64_t>(static_cast<std::int64_t>(c.n), c.off.back() + static_cast<std::int64_t>(g() % 9)));
            c.nb = c.off.size() - 1;
        }
        c.grad.resize(c.nb * c.d);
        for (auto& x : c.grad) x = U(g);
        c.psw.resize(c.n);
        for (auto& x : c.psw) x = U(g);
        c.bg.grad = c.grad.data();
        c.bg.num_bags = c.nb;
        c.bg.ld = bcast ? 0 : c.d;
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
        std::vector<float> w0((c.R + 1) * c.d), s10((c.R + 1) * c.d), s20((c.R + 1) * c.d);
        for (auto& x : w0) x = U(g);
        for (auto& x : s10) x = std::abs(U(g));
        for (auto& x : s20) x = std::abs(U(g));
        std::vector<float> wo = w0, s1o = s10, s2o = s20;
        const std::size_t nu = oracle(c, wo, has_s1 ? s1o.data() : nullptr, has_s2 ? s2o.data() : nullptr);
        for (int threads : {1, 2, 3, 4}) {
            std::vector<float> w = w0, s1 = s10, s2 = s20;
            for (int rep = 0; rep < 2; ++rep) {  // the second call reuses the thread's scratch
                if (rep == 1) w = w0, s1 = s10, s2 = s20;
                const std::size_t got = embtab::fused_step<float>(
                    w.data(), c.R, c.d, c.rows.data(), c.n, static_cast<std::int64_t>(c.R), c.bg,
                    has_s1 ? s1.data() : nullptr, has_s2 ? s2.data() : nullptr, c.p, threads);
                CHECK(got == nu);
                CHECK(std::memcmp(w.data(), wo.data(), w.size() * sizeof(float)) == 0);
                CHECK(std::memcmp(s1.data(), s1o.data(), s1.size() * sizeof(float)) == 0);
                CHECK(std::memcmp(s2.data(), s2o.data(), s2.size() * sizeof(float)) == 0);
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

int main() {
    random_steps();
    out_of_range_writes_nothing();
    return embtab_test::failures();
}
