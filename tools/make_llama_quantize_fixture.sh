#!/usr/bin/env bash
# Regenerates tests/data/llama-quantize/: a small random llama model written by our make-model
# (source-f16.gguf) and what llama.cpp's own quantizer, llama_model_quantize() in the prebuilt
# libllama of the npm package node-llama-cpp (llama.cpp v0.5.0), makes of it for ten types.
#   bash tools/make_llama_quantize_fixture.sh [STARLING] [NPM_DIR]
# STARLING: our executable (default build/starling); NPM_DIR: where bench/llama_cpp/install.sh
# puts the npm packages (default /tmp/llamacpp-npm, never inside the repository).
# Every step is deterministic: make-model with a fixed seed, llama_model_quantize on one thread;
# a rerun writes the same bytes (the README's sha256 sums say so).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
starling="${1:-$here/build/starling}"
npm_dir="$(bash "$here/bench/llama_cpp/install.sh" "${2:-/tmp/llamacpp-npm}")"
out="$here/tests/data/llama-quantize"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

lib="$npm_dir/lib"
inc="$npm_dir/llama.cpp"
cc -O2 -std=c11 -Wall -Wextra -I"$inc/include" -I"$inc/ggml/include" \
  "$here/tools/llama_quantize_fixture.c" -o "$work/llama_quantize_fixture" \
  -L"$lib" -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so -l:libggml-base.so -Wl,-rpath,"$lib"

mkdir -p "$out"
# Rows of 256 (hidden and intermediate) so that every K-quant applies without fallbacks;
# stories260K's 512-token vocabulary and tied embeddings keep each file under 1 MB.
"$starling" make-model "$out/source-f16.gguf" --config "$out/config.json" \
  --vocab "$here/models/stories260K.gguf" --type f16 --seed 1
for type in q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k_m q4_k_m q5_k_m q6_k; do
  "$work/llama_quantize_fixture" "$out/source-f16.gguf" "$out/$type.gguf" "$type" "$lib" \
    > "$work/$type.log" 2>&1 || { cat "$work/$type.log"; exit 1; }
done
(cd "$out" && sha256sum source-f16.gguf q*.gguf)
