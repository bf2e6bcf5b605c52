// embtab/rwlock.hpp: the readers-writer lock of a CuckooTable.
//
// std::shared_mutex on glibc prefers readers: while readers keep overlapping (threads that
// look up batches back to back), a writer waits for as long as they do, with no bound
// (tests/cpp/test_table.cpp checks the preference below). RwLock is a
// pthread rwlock of glibc's writer-preferring kind (PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP,
// on glibc 2.29 and later: see writer_preference_works):
// once a writer waits, new readers wait behind it, so a writer waits only for the readers
// already in. Non-recursive: a thread must not take the read lock it already holds (table.hpp
// takes it once per call and works through *_unlocked helpers). Elsewhere (no glibc
// extension) it is the default pthread rwlock.
//
// fork(): a child is a copy of one thread of its parent, and the lock word comes with it,
// counting readers and writers that are threads of the parent only. A child would wait for
// them forever at its first write. So every RwLock notes the process generation it was last
// used in (a counter that a pthread_atfork child handler bumps); the first lock taken in a
// new child re-initialises the lock (no thread of the child can hold it). A table that
// another thread was writing at the fork is still off limits in the child (its data may be
// half-changed); one that was only being read is usable.
#pragma once

#include <pthread.h>
#if defined(__GLIBC__)
#include <gnu/libc-version.h>
#endif

#include <atomic>
#include <cstdio>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <system_error>

namespace embtab {

namespace detail {

inline std::atomic<std::uint64_t>& fork_generation() {
    static std::atomic<std::uint64_t> g{0};
    return g;
}

inline void install_rwlock_fork_guard() {
    static std::once_flag once;
    std::call_once(once, [] {
        ::pthread_atfork(nullptr, nullptr, [] { fork_generation().fetch_add(1, std::memory_order_relaxed); });
    });
}

// Serialises the re-initialisation of locks in a child (never taken in a process that has not
// forked since its locks were made: it is held by no thread at any fork that matters).
inline std::mutex& rwlock_reset_mutex() {
    static std::mutex m;
    return m;
}

}  // namespace detail

// RwLock meets the SharedMutex requirements used here (std::shared_lock, std::unique_lock).
class RwLock {
  public:
    RwLock() {
        detail::install_rwlock_fork_guard();
        init();
        generation_.store(detail::fork_generation().load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    ~RwLock() { ::pthread_rwlock_destroy(&rw_); }
    RwLock(const RwLock&) = delete;
    RwLock& operator=(const RwLock&) = delete;

    void lock() {
        refresh();
        check(::pthread_rwlock_wrlock(&rw_));
    }
    bool try_lock() {
        refresh();
        return ::pthread_rwlock_trywrlock(&rw_) == 0;
    }
    void unlock() { ::pthread_rwlock_unlock(&rw_); }

    void lock_shared() {
        refresh();
        check(::pthread_rwlock_rdlock(&rw_));
    }
    bool try_lock_shared() {
        refresh();
        return ::pthread_rwlock_tryrdlock(&rw_) == 0;
    }
    void unlock_shared() { ::pthread_rwlock_unlock(&rw_); }

  private:
    void init() {
        pthread_rwlockattr_t attr;
        ::pthread_rwlockattr_init(&attr);
#if defined(__GLIBC__)
        if (writer_preference_works()) {
            ::pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        }
#endif
        const int rc = ::pthread_rwlock_init(&rw_, &attr);
        ::pthread_rwlockattr_destroy(&attr);
        check(rc);
    }

#if defined(__GLIBC__)
    // writer_preference_works: glibc 2.29 fixed readers of the writer-preferring kind that
    // could stay blocked on a lock no one held (its test tst-rwlock-pwn); the wheels also run
    // on glibc 2.28, so the kind is chosen by the glibc the process runs with, not the one it
    // was built against. Older ones keep the default (reader-preferring) kind.
    static bool writer_preference_works() noexcept {
        static const bool ok = [] {
            unsigned major = 0, minor = 0;
            return std::sscanf(::gnu_get_libc_version(), "%u.%u", &major, &minor) == 2 &&
                   (major > 2 || (major == 2 && minor >= 29));
        }();
        return ok;
    }
#endif

    // refresh re-initialises the lock the first time it is used in a process forked since.
    void refresh() {
        const std::uint64_t now = detail::fork_generation().load(std::memory_order_relaxed);
        if (generation_.load(std::memory_order_acquire) == now) return;
        std::lock_guard<std::mutex> guard(detail::rwlock_reset_mutex());
        if (generation_.load(std::memory_order_relaxed) == now) return;
        init();  // over the parent's copy of the lock word (held by threads that are gone)
        generation_.store(now, std::memory_order_release);
    }

    static void check(int rc) {
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "embtab: table lock");
    }

    pthread_rwlock_t rw_;
    std::atomic<std::uint64_t> generation_{0};
};

}  // namespace embtab
