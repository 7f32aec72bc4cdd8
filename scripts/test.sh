#!/usr/bin/env bash
# Builds and runs every test on a fresh machine: dependencies, a short run of each fuzz
# target (FUZZ_SECONDS each, default 10; 0 skips them), the CLI and server tests in a
# sanitizer build (scripts/sanitize.sh; SANITIZE=0 skips it), then the build and the whole
# GoogleTest suite under ctest, whose summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${FUZZ_SECONDS:-10}" != "0" ]; then
  FUZZ_SEED="${FUZZ_SEED:-1}" bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
# The CLI and server tests under AddressSanitizer + UBSan (build-asan/; SANITIZE=0 skips).
if [ "${SANITIZE:-1}" != "0" ]; then
  bash scripts/sanitize.sh
fi
bash scripts/build.sh
cd build && ctest --output-on-failure -j "$(nproc)"
