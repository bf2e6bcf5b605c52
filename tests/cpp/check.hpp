// tests/cpp/check.hpp: the few assertions the C++ unit tests need (no test framework).
// CHECK(cond) reports the failed condition with its file and line and counts it; each test
// program returns failures() from main, so ctest sees a non-zero exit status on any failure.
#pragma once

#include <cstdio>

namespace embtab_test {

inline int& failure_count() {
    static int n = 0;
    return n;
}

inline int failures() {
    if (failure_count() == 0) std::printf("all checks passed\n");
    else std::printf("%d check(s) failed\n", failure_count());
    return failure_count() == 0 ? 0 : 1;
}

}  // namespace embtab_test

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            ++embtab_test::failure_count();                                           \
            std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                             \
    } while (0)
