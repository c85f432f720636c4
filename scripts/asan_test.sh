#!/usr/bin/env bash
# Build neurovfm._core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake
# preset "asan": every finding aborts) and run the test suite under it.
#
#   scripts/asan_test.sh                 tests/, less the files of WHEEL_STAGE_ONLY below
#                                        (printed with their reasons before the tests)
#   scripts/asan_test.sh tests/test_x.py -k foo   exactly these pytest arguments
#   scripts/asan_test.sh --build-only    only configure and compile build/asan (.ci/run does
#                                        this in the background while the wheel builds)
#
# The stage is there for the C++ kernels (cpp/, bound in cpp/bindings). WHEEL_STAGE_ONLY
# lists the test files that reach no native code path which the files run here do not
# reach too (object storage, README walkthroughs, Lightning, packaging, runner and
# metadata plumbing): under the sanitizers they only cost time. They are deselected
# here, not skipped: the installed-wheel stage of .ci/run (scripts/test.sh) runs the
# whole suite, these files included. Ray, SLURM and torchrun tests skip themselves here
# (NEUROVFM_SANITIZERS: their work runs in processes of their own).
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
if [ "${1:-}" = --build-only ] && [ $# -eq 1 ]; then
  exit 0
fi

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

# 2. The test suite under the sanitizers. Without arguments: tests/ less these files, each
# with why it adds nothing here (seconds: their cost under the sanitizers, 2-core VM).
WHEEL_STAGE_ONLY=(
  tests/test_readme.py "README and docs examples run as scripts in child processes (~80 s): the demo, load_image, prepare, tokenize, cache, QA and CLI calls they make are the ones test_info_demo, test_pipelines, test_cli, test_cache and test_qa make here"
  tests/test_datamodule.py "Lightning: YAML config, Trainer.fit and a 2-process DDP run (~60 s); its batches are ImageDataset items through the collators, which test_datasets, test_multiblock, test_multiview, test_collate and test_loader_load (DataLoader workers) run here"
  tests/test_remote.py "object storage through a local S3 server (moto, ~15 s): a URL is staged to a local file and read as one, the readers the local tests run here"
  tests/test_readme_remote.py "README's S3 examples against the same server (~10 s; its Ray examples skip here anyway): staged reads, as test_remote"
  tests/test_packaging.py "import isolation and the installed wheel (3 of 5 skip here anyway); its .pt files come from the pure-Python writer (data/cache/ptfile.py)"
  tests/test_published_files.py "the published metadata.json layout (keys, errors); the cache it builds and reads is test_cache's and test_datasets' path"
  tests/test_cli_flags.py "CLI flags -j/-w reach the right parameters; kernel threads: test_threads, workers: test_pipelines and test_cache"
  tests/test_runner.py "the runner's executors, shards, progress bar and summary files; its one prepare run is test_batch_prepare's path"
  tests/test_metadata.py "DatasetMetadata messages and exit codes; series discovery: test_series and test_dicom"
  tests/test_sampler.py "StudyAwareBatchSampler, pure Python"
)
if [ $# -eq 0 ]; then
  set -- tests/
  echo "left out here, run by the installed-wheel stage (scripts/test.sh) with the rest of the suite:"
  for ((i = 0; i < ${#WHEEL_STAGE_ONLY[@]}; i += 2)); do
    f=${WHEEL_STAGE_ONLY[i]}
    [ -f "$f" ] || { echo "asan_test.sh: WHEEL_STAGE_ONLY names $f, which does not exist" >&2; exit 1; }
    printf '  %-30s %s\n' "$f" "${WHEEL_STAGE_ONLY[i + 1]}"
    set -- "$@" --deselect "$f::"
  done
fi
"${san_env[@]}" "$test_exe" -c 'import neurovfm._core as c, sys; assert "/build/asan/" in c.__file__, c.__file__; print("instrumented module:", c.__file__)'
exec "${san_env[@]}" "$test_exe" -m pytest -q -p no:cacheprovider "$@"
