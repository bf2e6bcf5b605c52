// embtab/alloc.hpp: byte counts computed from a caller's numbers, checked before allocating.
//
// A size that overflows, or that is more than the machine has, is refused up front with an
// AllocError (a std::bad_alloc; Python sees MemoryError) that says what was asked for, instead
// of wrapping to a small buffer, or of an allocation that the kernel grants and then kills the
// process for touching.
#pragma once

#include <sys/sysinfo.h>

#include <cstddef>
#include <cstdint>
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
