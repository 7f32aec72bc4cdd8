#!/usr/bin/env bash
# Installs every Debian package starling.cpp needs to build, test, fuzz and benchmark.
# Safe to run repeatedly. Needs root (or sudo) and access to Debian's package mirrors.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  clang-14 libclang-rt-14-dev   # libFuzzer and sanitizers for the fuzz targets
  libgtest-dev libgmock-dev     # unit tests
  nlohmann-json3-dev            # JSON (HF config and added-token files, CLI --json)
  libcli11-dev                  # command-line parsing for the starling CLI
  libsentencepiece-dev          # reference tokenizer: the tests' oracle and the benchmark's baseline
  sentencepiece                 # spm_encode, for cross-checking by hand
  libcpp-httplib-dev            # HTTP server (starling serve) and client (starling pull)
  libssl-dev                    # HTTPS for starling pull; sha256 of downloads
  libedit-dev                   # starling chat: line editing and history
  tmux                          # the terminal chat's test (Ctrl-C, editing) in a real terminal
  libopenmpi-dev openmpi-bin    # data-parallel training under mpirun (src/train/distributed.h)
  libblis-serial-dev            # sgemm for training's matrix products (src/kernels/gemm)
  libcairo2-dev                 # starling plot: training curves as SVG or PNG
  zlib1g-dev                    # CRC-32 of pytorch_model.bin entries
  python3 curl                  # the server's end-to-end test and the browser test's runner
  valgrind                      # memcheck of the CLI's option handling (tests/cli_memcheck.sh)
  chromium                      # the web page's headless-browser test (playwright-core from npm)
)
# Node.js and npm, to bundle the chat page at build time (src/server/web/build.mjs) and for the
# browser test: Debian's packages unless the machine already has node and npm
# (e.g. from NodeSource, whose nodejs conflicts with Debian's npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# The chat page's libraries and bundler (marked, DOMPurify, highlight.js, esbuild), pinned by
# src/server/web/package-lock.json: the build bundles them into the page (src/server/web/build.mjs),
# so it needs no network afterwards.
web_dir="$(cd "$(dirname "$0")/../src/server/web" && pwd)"
if [ ! -d "$web_dir/node_modules/esbuild" ] || [ ! -d "$web_dir/node_modules/marked" ]; then
  (cd "$web_dir" && npm ci --no-audit --no-fund)
fi
# playwright-core for the browser test, pinned by tests/browser/package-lock.json.
browser_dir="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  (cd "$browser_dir" && npm ci --no-audit --no-fund)
fi
echo "setup: all packages present"
