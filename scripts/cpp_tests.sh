#!/usr/bin/env bash
# C++ unit tests of the header-only core (tests/cpp): configures a separate build directory with
# EMBTAB_BUILD_TESTS=ON, builds the test programs with 2 jobs and runs them through ctest.
# Usage: scripts/cpp_tests.sh [extra cmake -D options, e.g. -DEMBTAB_SANITIZE=ON]
#        (PYTHON=... picks the interpreter whose pybind11 the configure step finds;
#         BUILD_DIR=... the build directory, default build/cpp-tests)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
build=${BUILD_DIR:-build/cpp-tests}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DEMBTAB_BUILD_TESTS=ON \
  -DPython_EXECUTABLE="$(command -v "$py")" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" "$@" >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target cpp_test_table cpp_test_vlog cpp_test_topk cpp_test_optim
ctest --test-dir "$build" --output-on-failure
