// embtab/cpu.hpp: the run-time CPU dispatch shared by the vector code (vlog, the reranker's
// kernels): which SIMD level to use, and a cap on it that tests lower to check that every level
// gives the same bits.
//
// Every vector kernel exists in a baseline form (SSE2 on x86-64, compiled for the wheel's ISA)
// and in forms for AVX2 and AVX-512 compiled with __attribute__((target(...))); a dispatcher
// asks use_avx512() / use_avx2() per call. EMBTAB_X86_INTRIN is defined where x86 intrinsics
// are available to such target functions.
#pragma once

#include <atomic>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EMBTAB_X86_INTRIN 1
#endif

namespace embtab {
namespace detail {

// isa_limit caps the dispatch below (and the reranker's): 0 = the best the CPU has, 1 = the
// baseline ISA, 2 = at most AVX2. A test hook (_core._testing.set_isa_limit) that checks every level
// gives the same bits.
inline std::atomic<int>& isa_limit() {
    static std::atomic<int> level{0};
    return level;
}

// use_avx512 says whether to dispatch to AVX-512 code (8 lanes; the same bits as 4).
inline bool use_avx512() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                               __builtin_cpu_supports("avx512vl");
    return avx512 && isa_limit().load(std::memory_order_relaxed) == 0;
#else
    return false;
#endif
}

// use_avx2 says whether to dispatch to AVX2 code: the CPU has it and no test forced baseline.
inline bool use_avx2() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2 && isa_limit().load(std::memory_order_relaxed) != 1;
#else
    return false;
#endif
}

}  // namespace detail
}  // namespace embtab
