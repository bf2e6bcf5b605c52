// embtab/parallel.hpp: the one parallel loop embtab uses, on a persistent thread pool, or on
// the calling thread's OpenMP team when the process has GNU OpenMP loaded (see "OpenMP team").
#pragma once

#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstddef>
#include <exception>
#include <system_error>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace embtab {

// kMaxThreads: most threads one parallel_for uses, whatever num_threads asks (results do not
// depend on the count; this bounds what a huge num_threads can make the process start).
inline constexpr int kMaxThreads = 1024;

// hardware_threads: std::thread::hardware_concurrency(), read once per process. glibc answers
// it by reading /sys (more than a whole lookup of a few IDs costs), and every call of a module
// left at num_threads=0 asked it (bench/README.md, "A step's fixed costs").
inline unsigned hardware_threads() noexcept {
    static const unsigned hw = std::thread::hardware_concurrency();
    return hw;
}

// resolve_threads turns a user's num_threads (0 = all hardware threads) into a count in
// [1, kMaxThreads].
inline int resolve_threads(int num_threads) noexcept {
    if (num_threads > 0) return std::min(num_threads, kMaxThreads);
    const unsigned hw = hardware_threads();
    return hw == 0 ? 1 : static_cast<int>(std::min<unsigned>(hw, kMaxThreads));
}

// spin_pause tells the CPU that the calling thread is in a spin-wait loop.
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#else
    std::this_thread::yield();
#endif
}

// ThreadPoolKind: what runs parallel_for's loops (set_thread_pool, at the end of this file).
enum class ThreadPoolKind : int { kOpenMP = 0, kEmbtab = 1 };

namespace detail {

// ChunkJob: one parallel_for call. Lives on the caller's stack; the pool guarantees that no
// worker touches it after the caller returns (see ThreadPool::run).
struct ChunkJob {
    std::size_t n = 0, grain = 1, chunks = 0;
    void* ctx = nullptr;
    void (*call)(void* ctx, std::size_t begin, std::size_t end) = nullptr;
    int max_helpers = 0;  // workers allowed to join (guarded by the pool's mutex)
    int taken = 0;        // workers that joined (guarded by the pool's mutex)
    int active = 0;       // workers still running chunks (guarded by the pool's mutex)
    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mutex;

    // run_chunks claims chunks until none are left; records the first exception.
    void run_chunks() noexcept {
        for (;;) {
            if (failed.load(std::memory_order_relaxed)) return;
            const std::size_t c = next.fetch_add(1, std::memory_order_relaxed);
            if (c >= chunks) return;
            try {
                call(ctx, c * grain, std::min(n, (c + 1) * grain));
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
                return;
            }
        }
    }
};

// ThreadPool: up to hardware_concurrency - 1 workers that sleep until a job is posted. One job
// runs at a time (busy_); a caller that finds the pool busy (another Python thread's batch)
// falls back to threads of its own. Never destroyed: workers sleep through process exit. After
// fork() the child builds a fresh pool (pid check) and never touches the parent's copy.
// A worker the system refuses to start (std::system_error or std::bad_alloc: thread or memory limits) is not
// counted; the pool runs with the workers it has, possibly none (callers then work alone).
class ThreadPool {
  public:
    explicit ThreadPool(int workers) : pid_(::getpid()) {
        for (int i = 0; i < workers; ++i) {
            try {
                std::thread([this] { loop(); }).detach();
            } catch (...) {  // std::system_error, or std::bad_alloc for the thread's state
                break;
            }
            ++workers_;
        }
    }

    int workers() const noexcept { return workers_; }
    pid_t pid() const noexcept { return pid_; }

    // try_run runs job on the caller and up to job.max_helpers workers and returns true, or
    // returns false at once (job untouched) if another job holds the pool.
    bool try_run(ChunkJob& job) {
        if (!busy_.try_lock()) return false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = &job;
            ++generation_;
        }
        wake_.notify_all();
        job.run_chunks();
        {
            std::unique_lock<std::mutex> lock(mutex_);
            job_ = nullptr;  // no worker joins from now on
            done_.wait(lock, [&] { return job.active == 0; });
        }
        busy_.unlock();
        return true;
    }

  private:
    void loop() {
        std::uint64_t seen = 0;
        for (;;) {
            ChunkJob* job = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                job = job_;
                if (job == nullptr || job->taken >= job->max_helpers) continue;
                ++job->taken;
                ++job->active;
            }
            job->run_chunks();
            {
                std::lock_guard<std::mutex> lock(mutex_);
                --job->active;
            }
            done_.notify_all();
        }
    }

    const pid_t pid_;
    int workers_ = 0;  // set by the constructor only
    std::mutex busy_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::uint64_t generation_ = 0;
    ChunkJob* job_ = nullptr;
};

// OpenMP team ///////////////////////////////////////////////////////////////////////////////
//
// torch's CPU builds run their parallel ops on GNU OpenMP (libgomp), whose workers keep
// spinning for a while after each op. On a machine with as many busy threads as cores those
// spinning workers hold the cores embtab's own workers need right after (torch's `sum()` and
// autograd ops come just before a fused step), and a 2-thread step then gains little over one
// (docs/site/guide/modules.md, "embtab's threads beside torch's"). So, when the process has libgomp loaded, parallel_for runs its chunks on
// the calling thread's OpenMP team (GOMP_parallel, the entry point GCC emits for
// `#pragma omp parallel`, looked up at run time: embtab does not link OpenMP): the workers that
// are spinning pick the chunks up at once, and no second set of threads competes with them.
// The chunks and their results are the same as on embtab's pool. The team is used only when
//   - the pool setting is kOpenMP (the default; set_thread_pool),
//   - this process is not the child of a fork() made after the guard was installed (when
//     embtab's module was loaded; libgomp is not fork-safe: a child's team may wait for
//     workers that exist only in the parent, GCC bug 60035),
//   - the caller is not inside an OpenMP parallel region, and
//   - the caller's OpenMP thread count (omp_get_max_threads: torch.set_num_threads sets it)
//     allows as many threads as the loop would use; with fewer (torch told to use 1 thread,
//     as in a DataLoader worker) embtab's own pool runs the loop.

struct OpenMPEntry {
    using Parallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
    using IntFn = int (*)();
    std::atomic<int> kind{static_cast<int>(ThreadPoolKind::kOpenMP)};
    std::atomic<Parallel> parallel{nullptr};
    std::atomic<IntFn> max_threads{nullptr};
    std::atomic<IntFn> in_parallel{nullptr};
    std::atomic<bool> forked{false};  // set in the child of a fork() made after the first lookup
    std::mutex lookup_mutex;
};

inline OpenMPEntry& openmp_entry() {
    static OpenMPEntry e;  // never destroyed before the pools that use it
    return e;
}

// install_fork_guard makes the child of every later fork() use embtab's own pool (the parent
// may have run OpenMP regions by the time it forks). Idempotent; the module calls it when it
// is loaded, and find_openmp before any lookup.
inline void install_fork_guard() {
    static std::once_flag once;
    std::call_once(once, [] {
        ::pthread_atfork(nullptr, nullptr, [] { openmp_entry().forked.store(true, std::memory_order_relaxed); });
    });
}

// find_openmp looks up libgomp's entry points among the objects loaded in the process (as a
// symbol lookup in the global scope: torch loads its libgomp there); returns whether found.
// Idempotent and cheap once found.
inline bool find_openmp() {
    OpenMPEntry& e = openmp_entry();
    if (e.parallel.load(std::memory_order_acquire) != nullptr) return true;
    std::lock_guard<std::mutex> lock(e.lookup_mutex);
    if (e.parallel.load(std::memory_order_acquire) != nullptr) return true;
    install_fork_guard();
    void* par = ::dlsym(RTLD_DEFAULT, "GOMP_parallel");
    void* mx = ::dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    void* inp = ::dlsym(RTLD_DEFAULT, "omp_in_parallel");
    if (par == nullptr || mx == nullptr || inp == nullptr) return false;
    e.max_threads.store(reinterpret_cast<OpenMPEntry::IntFn>(mx), std::memory_order_relaxed);
    e.in_parallel.store(reinterpret_cast<OpenMPEntry::IntFn>(inp), std::memory_order_relaxed);
    e.parallel.store(reinterpret_cast<OpenMPEntry::Parallel>(par), std::memory_order_release);
    return true;
}

// openmp_team_for returns GOMP_parallel when a loop of `threads` threads may run on the calling
// thread's OpenMP team (the conditions above), else nullptr.
inline OpenMPEntry::Parallel openmp_team_for(int threads) noexcept {
    OpenMPEntry& e = openmp_entry();
    if (e.kind.load(std::memory_order_relaxed) != static_cast<int>(ThreadPoolKind::kOpenMP)) return nullptr;
    const auto par = e.parallel.load(std::memory_order_acquire);
    if (par == nullptr || e.forked.load(std::memory_order_relaxed)) return nullptr;
    if (e.in_parallel.load(std::memory_order_relaxed)() != 0) return nullptr;
    if (e.max_threads.load(std::memory_order_relaxed)() < threads) return nullptr;
    return par;
}

// pool returns this process's pool, creating it on first use (and anew in a forked child).
inline ThreadPool* pool() {
    static std::atomic<ThreadPool*> current{nullptr};
    static std::mutex create_mutex;
    ThreadPool* p = current.load(std::memory_order_acquire);
    if (p != nullptr && p->pid() == ::getpid()) return p;
    std::lock_guard<std::mutex> lock(create_mutex);
    p = current.load(std::memory_order_acquire);
    if (p == nullptr || p->pid() != ::getpid()) {
        p = new ThreadPool(std::max(1, resolve_threads(0) - 1));  // intentionally never freed
        current.store(p, std::memory_order_release);
    }
    return p;
}

}  // namespace detail

// parallel_for runs fn(begin, end) over [0, n) in chunks of `grain` items on up to
// num_threads threads (0 = hardware concurrency). Work is handed out through an atomic
// counter; the chunk boundaries do not depend on the thread count, so a fn that writes only
// its own chunk's outputs gives identical results for any thread count. Runs serially on the
// calling thread when one thread is asked for or n <= grain. Uses the persistent pool when it
// is free, else threads of its own; a thread the system refuses to start (std::system_error)
// is done without, down to the calling thread alone, with the same results. The first exception thrown by any chunk is rethrown on the
// calling thread after every helper has stopped; the remaining chunks are skipped.
// Assumes grain > 0.
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
    using F = std::remove_reference_t<Fn>;
    detail::ChunkJob job;
    job.n = n;
    job.grain = grain;
    job.chunks = chunks;
    job.ctx = const_cast<void*>(static_cast<const void*>(&fn));
    job.call = [](void* ctx, std::size_t b, std::size_t e) { (*static_cast<F*>(ctx))(b, e); };
    if (const auto team = detail::openmp_team_for(threads)) {
        // Every team thread claims chunks as a pool worker would; run_chunks catches.
        team([](void* j) { static_cast<detail::ChunkJob*>(j)->run_chunks(); }, &job,
             static_cast<unsigned>(threads), 0u);
        if (job.error) std::rethrow_exception(job.error);
        return;
    }
    detail::ThreadPool* p = detail::pool();
    job.max_helpers = std::min(threads - 1, p->workers());
    if (!p->try_run(job)) {
        std::vector<std::thread> helpers;
        helpers.reserve(static_cast<std::size_t>(threads - 1));
        for (int t = 1; t < threads; ++t) {
            try {
                helpers.emplace_back([&job] { job.run_chunks(); });
            } catch (...) {  // std::system_error or std::bad_alloc: the chunks are claimed
                break;       // through job.next, so fewer threads do them all
            }
        }
        job.run_chunks();
        for (auto& th : helpers) th.join();
    }
    if (job.error) std::rethrow_exception(job.error);
}

// set_thread_pool chooses what runs parallel_for's loops: kOpenMP (the default) the calling
// thread's OpenMP team when libgomp is loaded (and the other conditions of "OpenMP team"
// hold), else embtab's pool; kEmbtab always embtab's pool. Returns the previous setting.
inline ThreadPoolKind set_thread_pool(ThreadPoolKind kind) noexcept {
    return static_cast<ThreadPoolKind>(detail::openmp_entry().kind.exchange(static_cast<int>(kind)));
}

inline ThreadPoolKind thread_pool_setting() noexcept {
    return static_cast<ThreadPoolKind>(detail::openmp_entry().kind.load());
}

// openmp_team_active says whether a loop of `threads` threads started now on this thread would
// run on an OpenMP team (after looking libgomp up, if it was not found yet).
inline bool openmp_team_active(int threads) {
    detail::find_openmp();
    return detail::openmp_team_for(resolve_threads(threads)) != nullptr;
}

}  // namespace embtab
