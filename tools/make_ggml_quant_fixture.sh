#!/usr/bin/env bash
# Regenerates tests/data/ggml-quants/ggml_quants.bin with ggml's own reference quantizers and
# dequantizers (tools/ggml_quant_fixture.c), compiled from a ggml checkout:
#   bash tools/make_ggml_quant_fixture.sh /path/to/ggml   # the ggml repository (or llama.cpp/ggml)
# Compiled without fma contraction, as ggml's portable reference build and our quantizers are.
set -euo pipefail
ggml="${1:?usage: make_ggml_quant_fixture.sh GGML_DIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cc -O2 -ffp-contract=off -std=c11 -I"$ggml/include" -I"$ggml/src" -c "$ggml/src/ggml-quants.c" \
  -o "$work/ggml-quants.o"
cc -O2 -ffp-contract=off -std=c11 -I"$ggml/include" -I"$ggml/src" \
  "$here/tools/ggml_quant_fixture.c" "$work/ggml-quants.o" -lm -o "$work/fixture"
mkdir -p "$here/tests/data/ggml-quants"
"$work/fixture" "$here/tests/data/ggml-quants/ggml_quants.bin"
echo "wrote tests/data/ggml-quants/ggml_quants.bin from $ggml" \
  "($(git -C "$ggml" rev-parse HEAD 2>/dev/null || echo 'unknown commit'))"
