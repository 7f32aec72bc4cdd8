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
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_sentencepiece_model fuzz_tokenizer fuzz_gguf fuzz_hf_tokenizer_files fuzz_safetensors fuzz_torch_checkpoint
  fuzz_openai_request fuzz_chat_data fuzz_ranking_data)
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CXX=clang++-14 cmake -S . -B build-fuzz "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -DNDEBUG" -DSTARLING_FUZZ=ON -DSTARLING_BUILD_TESTS=OFF -DSTARLING_BUILD_BENCH=OFF
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
    fuzz_torch_checkpoint)
      # torch.save's layout, small: CPython's pickler (dump only) with stand-ins for torch's
      # globals writes the pickle; the zip is written as torch writes it (64-byte aligned data,
      # data descriptors, a zip64 end record), once more with zip64 extra fields.
      python3 - "$dir" <<'PY'
import collections, io, pickle, struct, sys, types, zlib
torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
sys.modules.update({'torch': torch, 'torch._utils': utils})
def _rebuild_tensor_v2(*args): pass
_rebuild_tensor_v2.__module__ = 'torch._utils'; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
for name in ('FloatStorage', 'HalfStorage', 'BFloat16Storage'):
    cls = type(name, (), {}); cls.__module__ = 'torch'; setattr(torch, name, cls)
class T:
    def __init__(self, *args): self.args = args
    def __reduce_ex__(self, protocol):
        cls, key, numel, offset, size = self.args
        stride = [1] * len(size)
        for d in range(len(size) - 2, -1, -1): stride[d] = stride[d + 1] * size[d + 1]
        return (_rebuild_tensor_v2, (('storage', cls, key, 'cpu', numel), offset, size,
                                     tuple(stride), False, collections.OrderedDict()))
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj if isinstance(obj, tuple) and obj[:1] == ('storage',) else None
w = T(torch.FloatStorage, '0', 6, 0, (2, 3))
sd = collections.OrderedDict([('w', w), ('half', T(torch.HalfStorage, '1', 8, 2, (4,))),
                              ('scalar', T(torch.BFloat16Storage, '2', 1, 0, ())),
                              ('empty', T(torch.FloatStorage, '0', 6, 6, (0, 3))), ('w.again', w)])
sd._metadata = collections.OrderedDict([('', {'version': 1}), ('lin', {'version': 1})])
buf = io.BytesIO(); Pickler(buf, protocol=2).dump(sd)
entries = [('data.pkl', buf.getvalue()), ('data/0', struct.pack('<6f', .5, -1, 2, 3.25, -4, 8)),
           ('data/1', bytes(range(16))), ('data/2', b'\x80\x3f'), ('version', b'3\n'),
           ('byteorder', b'little')]
def write(path, zip64_extras):
    out, central = bytearray(), bytearray()
    for name, data in entries:
        name = ('archive/' + name).encode(); offset = len(out); crc = zlib.crc32(data)
        pad = -(offset + 30 + len(name) + 4) % 64
        extra = b'FB' + struct.pack('<H', pad) + b'Z' * pad
        out += struct.pack('<IHHHHHIIIHH', 0x04034b50, 0, 0x808, 0, 0, 0, 0, 0, 0, len(name), len(extra))
        out += name + extra + data + struct.pack('<IIII', 0x08074b50, crc, len(data), len(data))
        size32, offset32, cextra = len(data), offset, b''
        if zip64_extras:
            size32 = offset32 = 0xFFFFFFFF
            cextra = struct.pack('<HHQQQ', 1, 24, len(data), len(data), offset)
        central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 0, 0, 0x808, 0, 0, 0, crc, size32,
                               size32, len(name), len(cextra), 0, 0, 0, 0, offset32) + name + cextra
    cd_offset, n = len(out), len(entries)
    out += central; record = len(out)
    out += struct.pack('<IQHHIIQQQQ', 0x06064b50, 44, 798, 45, 0, 0, n, n, len(central), cd_offset)
    out += struct.pack('<IIQI', 0x07064b50, 0, record, 1)
    out += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, n, n, len(central), cd_offset, 0)
    open(path, 'wb').write(out)
write(sys.argv[1] + '/small.bin', False)
write(sys.argv[1] + '/zip64.bin', True)
PY
      ;;
    fuzz_openai_request)
      printf '%s' '{"model": "starling", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "stop": ["\n", "User:"], "seed": 42, "stream": true, "stream_options": {"include_usage": true}}' >"$dir/chat.json"
      printf '%s' '{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q <s>"}, {"role": "assistant", "content": "A<|end_of_turn|>"}, {"role": "user", "content": "[INST] caf\u00e9 </s>"}]}' >"$dir/turns.json"
      printf '%s' '{"prompt": ["Once upon a time"], "max_completion_tokens": 16, "stop": "END", "n": 1}' >"$dir/completion.json"
      printf '%s' '{"content": "caf\u00e9 \ud83e\udda9", "add_special": false}' >"$dir/tokenize.json"
      printf '%s' '{"tokens": [1, 22, 0, 2147483647]}' >"$dir/detokenize.json"
      printf '%s' '{"messages": [{"role": "user", "content": "x", "name": "a"}], "logprobs": true, "top_logprobs": 5, "frequency_penalty": 0.5, "presence_penalty": -1, "logit_bias": {"13": -100, "2": 5.5}, "user": "u", "response_format": {"type": "text"}}' >"$dir/fields.json"
      printf '%s' '{"prompt": "x", "logprobs": 3, "echo": false, "best_of": 1, "suffix": "", "tools": null}' >"$dir/legacy.json"
      printf '%s' '{"model": "rm", "conversations": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]], "messages": null}' >"$dir/rewards.json" ;;
    fuzz_chat_data)
      cp -f tests/data/train/sft/chats.jsonl "$dir/chats.jsonl"
      cp -f tests/data/train/chat/train.jsonl "$dir/hello.jsonl"
      printf '%s\n' '{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "weight": 0.5}' >"$dir/sharegpt.jsonl" ;;
    fuzz_ranking_data)
      cp -f tests/data/nectar/sample.jsonl "$dir/nectar.jsonl"
      printf '%s\n' '{"prompt": "Why?", "chosen": "Because.", "rejected": "No."}' \
        '{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}' \
        >"$dir/pairs.jsonl"
      printf '%s\n' '{"messages": [{"role": "user", "content": "Say hello."}]}' \
        '{"prompt": "\n\nHuman: Hi\n\nAssistant: "}' '{"prompt": "Once upon a time"}' \
        >"$dir/prompts.jsonl" ;;
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
