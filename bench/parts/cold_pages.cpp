// bench/parts/cold_pages.cpp: how long a 256 MiB huge-page array takes to touch (one write per
// 4 KiB) depending on how long ago the same amount was freed. On a virtual machine whose kernel
// hands free memory back to its host, memory freed moments before is warm and memory left free
// for a second or two is cold again (bench/README.md, "Bulk loading").
// Usage: cold_pages
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main() {
    const std::size_t bytes = std::size_t{256} << 20;
    // The idle time before each allocation (the first allocation is the process's first).
    const double idles[] = {0.0, 0.0, 0.1, 0.5, 1.0, 2.0, 0.0, 3.0};
    for (double idle : idles) {
        std::this_thread::sleep_for(std::chrono::duration<double>(idle));
        void* p = nullptr;
        if (posix_memalign(&p, std::size_t{1} << 21, bytes) != 0) return 1;
        madvise(p, bytes, MADV_HUGEPAGE);
        const double t0 = now();
        for (std::size_t i = 0; i < bytes; i += 4096) static_cast<volatile char*>(p)[i] = 1;
        std::printf("after %.1f s idle: %.0f ms\n", idle, (now() - t0) * 1e3);
        std::free(p);
    }
    return 0;
}
