#!/usr/bin/env bash
# Builds and runs every test on a fresh machine: dependencies, build, ctest, then a short
# run of each fuzz target (FUZZ_SECONDS each, default 15; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")
if [ "${FUZZ_SECONDS:-15}" != "0" ]; then
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
fi
