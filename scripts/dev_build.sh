#!/usr/bin/env bash
# Developer build: compiles embtab._core into python/embtab/ so that
# `PYTHONPATH=python pytest` runs against the working tree without reinstalling.
# Usage: scripts/dev_build.sh [extra cmake -D options]   (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
build=${BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
  -DPython_EXECUTABLE="$(command -v "$py")" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" \
  -DEMBTAB_INPLACE_DIR="$PWD/python/embtab" "$@" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
