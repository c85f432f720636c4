#!/usr/bin/env bash
# Developer build: compiles neurovfm._core into python/neurovfm/ so that
# PYTHONPATH=python runs the source tree without installing.
# Usage: scripts/dev_build.sh [build-dir] [extra cmake args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/dev}
shift || true
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v python3)" "$@" >/dev/null
cmake --build "$build"
for so in "$build"/_core*.so; do
  # copy then rename: never overwrite a module a running process has mapped
  cp "$so" "$root/python/neurovfm/.$(basename "$so").tmp"
  mv -f "$root/python/neurovfm/.$(basename "$so").tmp" "$root/python/neurovfm/$(basename "$so")"
done
