// embtab/alloc.hpp: byte counts computed from a caller's numbers, checked before allocating.
//
// A size that overflows, or that is more than the machine has, is refused up front with an
// AllocError (a std::bad_alloc; Python sees MemoryError) that says what was asked for, instead
// of wrapping to a small buffer, or of an allocation that the kernel grants and then kills the
// process for touching. available_memory_bytes says how much more the process can have now
// (free RAM, or its memory cgroup's room), for optional allocations such as a table's
// prepared index (table.hpp, "Bulk loading").
#pragma once

#include <sys/sysinfo.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <new>
#include <string>
#include <utility>

namespace embtab {

// AllocError: memory that cannot be had; what() names the request and its size.
class AllocError : public std::bad_alloc {
  public:
    explicit AllocError(std::string msg) : msg_(std::move(msg)) {}
    const char* what() const noexcept override { return msg_.c_str(); }

  private:
    std::string msg_;
};

// machine_memory_bytes is the machine's RAM plus swap, or 0 when the system does not say.
inline std::uint64_t machine_memory_bytes() noexcept {
    struct sysinfo si;
    if (::sysinfo(&si) != 0) return 0;
    const std::uint64_t unit = si.mem_unit ? si.mem_unit : 1;
    return (static_cast<std::uint64_t>(si.totalram) + static_cast<std::uint64_t>(si.totalswap)) * unit;
}

// available_memory_bytes is the free RAM, or less when this process's memory cgroup (v2:
// memory.max - memory.current; v1: memory.limit_in_bytes - memory.usage_in_bytes), or one
// above it, has less left; UINT64_MAX when the system does not say. May throw std::bad_alloc.
inline std::uint64_t available_memory_bytes() {
    std::uint64_t avail = std::numeric_limits<std::uint64_t>::max();
    struct sysinfo si;
    if (::sysinfo(&si) == 0) avail = static_cast<std::uint64_t>(si.freeram) * (si.mem_unit ? si.mem_unit : 1);
    std::FILE* f = std::fopen("/proc/self/cgroup", "r");
    if (f == nullptr) return avail;
    std::string v2, v1;  // the cgroup paths, "" when not listed ("/" is listed as "")
    bool has_v2 = false, has_v1 = false;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, f)) {  // "ID:CONTROLLERS:PATH"
        std::string line(buf);
        while (!line.empty() && line.back() == '\n') line.pop_back();
        const auto a = line.find(':'), b = line.find(':', a == std::string::npos ? a : a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string ctrl = "," + line.substr(a + 1, b - a - 1) + ",";
        std::string path = line.substr(b + 1);
        while (!path.empty() && path.back() == '/') path.pop_back();
        if (line.compare(0, a, "0") == 0 && ctrl == ",,") {
            v2 = path;
            has_v2 = true;
        } else if (ctrl.find(",memory,") != std::string::npos) {
            v1 = path;
            has_v1 = true;
        }
    }
    std::fclose(f);
    auto read_u64 = [](const std::string& path, std::uint64_t& out) {
        std::FILE* g = std::fopen(path.c_str(), "r");
        if (g == nullptr) return false;
        unsigned long long v = 0;
        const bool ok = std::fscanf(g, "%llu", &v) == 1;  // "max" (no limit) reads as no number
        std::fclose(g);
        out = v;
        return ok;
    };
    auto walk = [&](std::string dir, const std::string& root, const char* max_file, const char* cur_file) {
        for (;;) {  // this cgroup, then each one above it
            std::uint64_t max = 0, current = 0;
            const std::string base = root + dir;
            if (read_u64(base + max_file, max) && read_u64(base + cur_file, current)) {
                avail = std::min(avail, max > current ? max - current : 0);
            }
            if (dir.empty()) break;
            const auto up = dir.rfind('/');
            dir.erase(up == std::string::npos ? 0 : up);
        }
    };
    if (has_v2) walk(v2, "/sys/fs/cgroup", "/memory.max", "/memory.current");
    if (has_v1) walk(v1, "/sys/fs/cgroup/memory", "/memory.limit_in_bytes", "/memory.usage_in_bytes");
    return avail;
}

// checked_bytes returns count * item_bytes; throws AllocError naming `what` if the product
// overflows std::size_t or exceeds machine_memory_bytes(). Assumes item_bytes > 0.
inline std::size_t checked_bytes(std::uint64_t count, std::uint64_t item_bytes, const char* what) {
    const std::uint64_t limit = std::numeric_limits<std::size_t>::max() / 2;
    const std::uint64_t machine = machine_memory_bytes();
    if (count > limit / item_bytes || (machine != 0 && count * item_bytes > machine)) {
        throw AllocError("cannot allocate " + std::string(what) + ": " + std::to_string(count) + " x " +
                         std::to_string(item_bytes) + " bytes is more than this machine's memory (" +
                         std::to_string(machine) + " bytes of RAM and swap)");
    }
    return static_cast<std::size_t>(count * item_bytes);
}

}  // namespace embtab
