#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and run starling on the
# embedded default model (stories260K, compiled into the executable): a story appears token
# by token. Extra arguments go to `starling generate` (e.g. -m MODEL -p "Once upon").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
if [ $# -eq 0 ]; then
  set -- -p "" -n 256 --temp 0.8 --seed 42  # a story from BOS alone
fi
build/starling generate -v "$@"
echo
