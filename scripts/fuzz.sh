#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs each for
# SECONDS (default 60) on a seed corpus made from the shipped files. Crashes are saved to
# fuzz-corpus/crashes and make the script fail.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_sentencepiece_model fuzz_tokenizer fuzz_gguf fuzz_hf_tokenizer_files fuzz_safetensors)
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CXX=clang++-14 cmake -S . -B build-fuzz "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSTARLING_FUZZ=ON -DSTARLING_BUILD_TESTS=OFF -DSTARLING_BUILD_BENCH=OFF
fi
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"

mkdir -p fuzz-corpus/crashes
seed() {  # seed corpus per target, from files the repo ships
  local dir=fuzz-corpus/$1
  mkdir -p "$dir"
  case $1 in
    fuzz_sentencepiece_model)
      cp -f models/openchat-3.5-tokenizer/tokenizer.model "$dir/mistral.model"
      head -c 4096 tests/data/tokenizers/llama-2/tokenizer.model >"$dir/llama2-head.model" ;;
    fuzz_tokenizer)
      printf 'GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant:' >"$dir/card.txt"
      printf 'caf\xc3\xa9 \xf0\x9f\xa6\xa9 \xe2\x96\x81 \xff\xfe  \t\n' >"$dir/mixed.txt" ;;
    fuzz_gguf)
      head -c 65536 models/stories260K.gguf >"$dir/stories-head.gguf" ;;
    fuzz_safetensors)
      head -c 65536 tests/data/tiny-mistral/hf/model-00002-of-00002.safetensors >"$dir/shard-head.safetensors"
      python3 - "$dir/small.safetensors" <<'PY'
import json, struct, sys
header = {"__metadata__": {"format": "pt"},
          "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
          "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}
blob = json.dumps(header).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + bytes(range(22)))
PY
      ;;
    fuzz_hf_tokenizer_files)
      for f in models/openchat-3.5-tokenizer/*.json; do
        { printf '\x01'; cat "$f"; } >"$dir/$(basename "$f")"
      done ;;
  esac
  echo "$dir"
}
for target in "${targets[@]}"; do
  corpus=$(seed "$target")
  echo "== $target for ${seconds}s"
  # FUZZ_SEED fixes libFuzzer's random seed (CI sets it so its short runs are repeatable);
  # 0, the default, means a new seed every run.
  build-fuzz/fuzz/"$target" -max_total_time="$seconds" -seed="${FUZZ_SEED:-0}" \
    -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix=fuzz-corpus/crashes/"$target"- -print_final_stats=1 "$corpus" 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|INFO: Running with)|ERROR|BINGO|Done" || true
  if ls fuzz-corpus/crashes/"$target"-* >/dev/null 2>&1; then
    echo "fuzz: $target found a crash: $(ls fuzz-corpus/crashes/"$target"-*)"
    exit 1
  fi
done
echo "fuzz: all targets ran clean"
