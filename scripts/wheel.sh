#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment without any build
# tool, and run the test suite against the installed wheel (not the source tree).
#
#   scripts/wheel.sh build          pip wheel . + auditwheel repair -> wheelhouse/ (Linux; C++17 compiler, CMake)
#   scripts/wheel.sh install        fresh venv (build/wheel-venv): torch==2.13.0 first, then the wheel
#                                   with its [test,qa,lightning] extras; binary packages only, build tools hidden
#   scripts/wheel.sh test [ARGS]    python -m pytest ARGS with the venv, build tools hidden,
#                                   NEUROVFM_EXPECT_INSTALLED=1 NEUROVFM_EXPECT_NO_BUILD_TOOLS=1
#                                   (tests/test_packaging.py checks both)
#
# Environment: NEUROVFM_WHEEL_VENV (default build/wheel-venv), PYTHON (default python3),
# TORCH_SPEC (default torch==2.13.0).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${NEUROVFM_WHEEL_VENV:-$root/build/wheel-venv}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
build_tools=(cmake ninja make cc c++ gcc g++ clang clang++ ld)

# A PATH without compilers or build systems: the venv's bin plus a folder of links
# to the few plain tools that tests and pip may call.
hidden_path() {
  local safe="$venv/.safe-bin"
  if [ ! -d "$safe" ]; then
    mkdir -p "$safe"
    local t p
    for t in sh bash env cat ls cp mv rm mkdir rmdir ln chmod touch dirname basename readlink realpath \
      uname head tail grep sed tr sort wc date sleep find xargs tee true false printf echo id nproc \
      ldconfig tar gzip cut timeout unshare mount ip gdcmconv ojph_compress; do
      p=$(type -P "$t" 2>/dev/null || true)  # the file, also for a shell builtin (true, echo)
      if [ -n "$p" ] && [ -x "$p" ]; then ln -sf "$p" "$safe/$t"; fi
    done
  fi
  echo "$venv/bin:$safe"
}

check_no_build_tools() {
  local path=$1 t found=()
  for t in "${build_tools[@]}"; do
    if PATH=$path command -v "$t" >/dev/null 2>&1; then found+=("$t=$(PATH=$path command -v "$t")"); fi
  done
  if [ ${#found[@]} -gt 0 ]; then
    echo "wheel.sh: build tools reachable on the test PATH: ${found[*]}" >&2
    exit 1
  fi
}

wheel_file() {
  local w
  w=$(ls -t wheelhouse/neurovfm-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$w" ]; then
    echo "wheel.sh: no wheel in wheelhouse/: run 'scripts/wheel.sh build' first" >&2
    exit 1
  fi
  echo "$root/$w"
}

case "${1:-}" in
  build)
    rm -rf dist wheelhouse
    "$python" -m pip wheel . --no-deps -w dist
    whl=$(ls dist/neurovfm-*.whl)
    case "$(uname -s)" in
      Linux)
        "$python" -m auditwheel repair "$whl" -w wheelhouse
        "$python" -m auditwheel show wheelhouse/neurovfm-*.whl ;;
      *)  # macOS/Windows wheels are repaired by cibuildwheel (delocate, delvewheel)
        mkdir -p wheelhouse && cp "$whl" wheelhouse/ ;;
    esac
    ls -l wheelhouse/
    ;;
  install)
    whl=$(wheel_file)
    rm -rf "$venv"
    "$python" -m venv "$venv"
    path=$(hidden_path)
    check_no_build_tools "$path"
    export PATH=$path
    # torch first and pinned (a plain resolve could pull another build of it).
    "$venv/bin/python" -m pip install -q --only-binary=:all: "$torch_spec"
    # Binary packages only: installing the wheel must not compile anything.
    "$venv/bin/python" -m pip install -q --only-binary=:all: "$whl[test,qa,lightning]"
    check_no_build_tools "$PATH"
    "$venv/bin/python" -m pip list --format=freeze | grep -i -E '^(neurovfm|torch|numpy|simpleitk|pytest|matplotlib|lightning)=' || true
    ;;
  test)
    shift
    [ -x "$venv/bin/python" ] || { echo "wheel.sh: no venv at $venv: run 'scripts/wheel.sh install' first" >&2; exit 1; }
    path=$(hidden_path)
    check_no_build_tools "$path"
    # Run from the repository root: its python/ folder is not on sys.path (no
    # PYTHONPATH), so `import neurovfm` finds the installed wheel; the tests check it.
    env -u PYTHONPATH PATH="$path" "$venv/bin/python" -c '
import neurovfm, os, sys
src = os.path.realpath(sys.argv[1])
where = os.path.realpath(neurovfm.__file__)
print("testing the installed package", where, flush=True)
sys.exit(where.startswith(src + os.sep) and "wheel.sh: neurovfm is imported from the source tree" or 0)
' "$root/python"
    exec env -u PYTHONPATH PATH="$path" NEUROVFM_EXPECT_INSTALLED=1 NEUROVFM_EXPECT_NO_BUILD_TOOLS=1 \
      "$venv/bin/python" -m pytest "$@"
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
