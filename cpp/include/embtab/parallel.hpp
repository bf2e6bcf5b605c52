// embtab/parallel.hpp: the one parallel loop embtab uses.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace embtab {

// resolve_threads turns a user's num_threads (0 = all hardware threads) into a count >= 1.
inline int resolve_threads(int num_threads) noexcept {
    if (num_threads > 0) return num_threads;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// parallel_for runs fn(begin, end) over [0, n) in chunks of `grain` items on up to
// num_threads threads (0 = hardware concurrency). Work is handed out through an atomic
// counter; the chunk boundaries do not depend on the thread count, so a fn that writes only
// its own chunk's outputs gives identical results for any thread count. Runs serially on the
// calling thread when one thread is asked for or n <= grain. The first exception thrown by
// any chunk is captured and rethrown on the calling thread after every worker has joined;
// the remaining chunks are skipped. Assumes grain > 0.
template <class Fn>
void parallel_for(std::size_t n, int num_threads, std::size_t grain, Fn&& fn) {
    if (n == 0) return;
    const std::size_t chunks = (n + grain - 1) / grain;
    const int threads =
        static_cast<int>(std::min<std::size_t>(chunks, static_cast<std::size_t>(resolve_threads(num_threads))));
    if (threads <= 1) {
        for (std::size_t c = 0; c < chunks; ++c) fn(c * grain, std::min(n, (c + 1) * grain));
        return;
    }
    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&]() {
        for (;;) {
            if (failed.load(std::memory_order_relaxed)) return;
            std::size_t c = next.fetch_add(1, std::memory_order_relaxed);
            if (c >= chunks) return;
            try {
                fn(c * grain, std::min(n, (c + 1) * grain));
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!first_error) first_error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
                return;
            }
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
    if (first_error) std::rethrow_exception(first_error);
}

}  // namespace embtab
