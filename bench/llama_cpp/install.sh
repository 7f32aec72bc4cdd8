#!/usr/bin/env bash
# Fetches llama.cpp's prebuilt Linux x64 CPU libraries from npm, outside the repository:
#   bash bench/llama_cpp/install.sh [DIR]          (default /tmp/llamacpp-npm)
# The packages are node-llama-cpp's: @node-llama-cpp/linux-x64 ships libllama, libggml,
# libggml-base, libllama-common and one libggml-cpu-<variant>.so per x86 level (loaded at run
# time by score), built from llama.cpp release v0.5.0; node-llama-cpp itself ships that
# release's source as a git bundle (llama/gitRelease.bundle), whose public headers and
# tools/llama-bench we compile against the libraries. `npm pack` downloads just these two
# tarballs (npm checks their integrity); `npm install` would also pull the CUDA and Vulkan
# builds and the Node dependencies. Nothing here is committed to the repository.
# Leaves DIR/lib (the shared libraries), DIR/llama.cpp (headers, common/, vendor/,
# tools/llama-bench/) and DIR/llama.cpp.info.json; prints DIR.
set -euo pipefail
dir="${1:-/tmp/llamacpp-npm}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
case "$dir" in
  "$(cd "$(dirname "$0")/../.." && pwd)"*) echo "install.sh: $dir is inside the repository" >&2; exit 2 ;;
esac
if [[ ! -f "$dir/.installed-$version" ]]; then
  rm -rf "${dir:?}/npm" "${dir:?}/pkg" "${dir:?}/llama.cpp" "${dir:?}/lib"
  mkdir -p "$dir/npm" "$dir/pkg/main" "$dir/pkg/bins"
  (cd "$dir/npm" && npm pack --silent "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" >/dev/null)
  tar -xzf "$dir/npm/node-llama-cpp-$version.tgz" -C "$dir/pkg/main"
  tar -xzf "$dir/npm/node-llama-cpp-linux-x64-$version.tgz" -C "$dir/pkg/bins"
  ln -s "$dir/pkg/bins/package/bins/linux-x64" "$dir/lib"
  cp "$dir/pkg/main/package/llama/llama.cpp.info.json" "$dir/llama.cpp.info.json"
  # Only what we compile against: the public headers and llama-bench with its common/ headers.
  git clone --quiet --no-checkout "$dir/pkg/main/package/llama/gitRelease.bundle" "$dir/llama.cpp"
  git -C "$dir/llama.cpp" checkout --quiet HEAD -- include ggml/include common vendor tools/llama-bench LICENSE
  (cd "$dir/npm" && sha256sum ./*.tgz) > "$dir/npm/SHA256SUMS"
  touch "$dir/.installed-$version"
fi
echo "$dir"
