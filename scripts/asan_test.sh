#!/usr/bin/env bash
# Build neurovfm._core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake
# preset "asan": every finding aborts) and run the whole test suite under it.
#
#   scripts/asan_test.sh                 every test in tests/
#   scripts/asan_test.sh tests/test_x.py -k foo
#
# Python is not instrumented, so the sanitizer runtime is preloaded
# (LD_PRELOAD=$(c++ -print-file-name=libasan.so), then libstdc++); leak detection is off (CPython
# keeps memory to the end). Before the tests, a planted heap overflow and a planted
# signed overflow in the module (_core._sanitizer_selftest, sanitizer builds only)
# must each kill the interpreter: proof that a real finding fails the run.
#
# Environment: PYTHON (default python3: needs pybind11 to configure, and the test
# dependencies to run; a separate interpreter for the tests: TEST_PYTHON), CMake and
# a GCC or Clang that supports -fsanitize=address,undefined (Linux).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
test_python=${TEST_PYTHON:-$python}
build=$root/build/asan
stage=$build/site  # a copy of the package with the instrumented module

"$python" -m pybind11 --cmakedir >/dev/null 2>&1 || {
  echo "asan_test.sh: pybind11 is not installed for $python (pip install pybind11)" >&2; exit 1; }
cmake --preset asan -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" >/dev/null
cmake --build --preset asan

rm -rf "$stage"
mkdir -p "$stage"
cp -r python/neurovfm "$stage/"
rm -f "$stage"/neurovfm/_core*.so "$stage"/neurovfm/_core*.pyd
cp "$build"/_core*.so "$stage/neurovfm/"

cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
libasan=$("${cxx:-c++}" -print-file-name=libasan.so)
if [ ! -f "$libasan" ]; then
  echo "asan_test.sh: $cxx has no shared ASan runtime (got '$libasan')" >&2
  exit 1
fi
# The C++ runtime too: the interpreter does not link it, and ASan's __cxa_throw
# interceptor must find it at start-up (else every C++ exception aborts).
libstdcxx=$("${cxx:-c++}" -print-file-name=libstdc++.so)
preload=$libasan
if [ -f "$libstdcxx" ]; then preload="$libasan $(readlink -f "$libstdcxx")"; fi
test_exe=$("$test_python" -c 'import sys; print(sys.executable)')  # not through a shell shim
san_env=(
  env -u NEUROVFM_EXPECT_INSTALLED
  NEUROVFM_SANITIZERS=address,undefined  # tests that measure memory skip those checks
  PYTHONPATH="$stage"
  LD_PRELOAD="$preload"
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_init_order=1:check_initialization_order=1"
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
)

# 1. The sanitizers are on, and fatal.
for kind in heap-buffer-overflow signed-integer-overflow; do
  log=$build/selftest-$kind.log
  if ( "${san_env[@]}" "$test_exe" -c "from neurovfm import _core; _core._sanitizer_selftest('$kind')"; exit $? ) >"$log" 2>&1; then
    echo "asan_test.sh: the planted $kind did not stop the interpreter: sanitizers are not active" >&2
    cat "$log" >&2
    exit 1
  fi
  if ! grep -q -E "AddressSanitizer: heap-buffer-overflow|runtime error: signed integer overflow" "$log"; then
    echo "asan_test.sh: the planted $kind failed without a sanitizer report:" >&2
    cat "$log" >&2
    exit 1
  fi
  echo "sanitizer self-test: planted $kind caught ($(grep -m1 -o -E 'AddressSanitizer: [a-z-]+|runtime error: [a-z ]+' "$log"))"
done

# 2. The test suite under the sanitizers.
if [ $# -eq 0 ]; then
  set -- tests/
fi
"${san_env[@]}" "$test_exe" -c 'import neurovfm._core as c, sys; assert "/build/asan/" in c.__file__, c.__file__; print("instrumented module:", c.__file__)'
exec "${san_env[@]}" "$test_exe" -m pytest -q -p no:cacheprovider "$@"
