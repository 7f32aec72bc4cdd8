#!/usr/bin/env bash
# starling against llama.cpp on the same GGUF files, side by side: pp512 and tg128 tokens/s
# (medians of -r runs after a warm-up), both engines on the CPU with the same thread count and
# an F16 K/V cache (llama-bench's default; starling bench --kv-type f16).
#   bash bench/llama_cpp/run.sh [options] FILE.gguf...
#     -t N        threads (default 2)
#     -r N        repetitions (default 5)
#     -p N, -n N  prompt and generated tokens (default 512 and 128)
#     -k TYPE     K/V cache type for both engines: f16 (default) or f32
#     -s PATH     the starling executable (default build/starling)
#     -d DIR      where llama.cpp's npm packages go (default /tmp/llamacpp-npm; never the repo)
#     -H NAME     llama.cpp's harness: llama-bench (default: the real tool, compiled from the
#                 release's tools/llama-bench against the prebuilt libraries) or lite
#                 (llama_bench_lite.c: the same measurement over the C API only)
# Example, on a quiet machine:
#   build/starling make-model /tmp/m7b-q4_0.gguf --preset 7b --type q4_0
#   bash bench/llama_cpp/run.sh -t 2 /tmp/m7b-q4_0.gguf
# llama.cpp's libraries come from npm (bench/llama_cpp/install.sh): a release build with one
# ggml CPU backend per x86 level, of which the loader picks the best for this CPU (the table
# names it).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
threads=2 reps=5 n_prompt=512 n_gen=128 kv=f16 harness=llama-bench
starling="$here/build/starling" npm_dir=/tmp/llamacpp-npm
while getopts "t:r:p:n:k:s:d:H:" opt; do
  case "$opt" in
    t) threads="$OPTARG" ;; r) reps="$OPTARG" ;; p) n_prompt="$OPTARG" ;; n) n_gen="$OPTARG" ;;
    k) kv="$OPTARG" ;; s) starling="$OPTARG" ;; d) npm_dir="$OPTARG" ;; H) harness="$OPTARG" ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
[[ "$kv" == f16 || "$kv" == f32 ]] || { echo "run.sh: -k f16 or f32" >&2; exit 2; }
[[ "$harness" == llama-bench || "$harness" == lite ]] || { echo "run.sh: -H llama-bench or lite" >&2; exit 2; }

npm_dir="$(bash "$here/bench/llama_cpp/install.sh" "$npm_dir")"
lib="$npm_dir/lib" src="$npm_dir/llama.cpp"
links=(-L"$lib" -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so -l:libggml-base.so)
# Both harnesses live in the library folder: ggml_backend_load_all() looks for the
# libggml-cpu-<variant>.so files beside the executable (and '$ORIGIN' is literal on purpose).
# shellcheck disable=SC2016
if [[ "$harness" == lite ]]; then
  cc -O2 -std=c11 -Wall -Wextra -I"$src/include" -I"$src/ggml/include" \
    "$here/bench/llama_cpp/llama_bench_lite.c" -o "$lib/llama_bench_lite" "${links[@]}" \
    -Wl,-rpath,'$ORIGIN' -lm
  llama_cmd=("$lib/llama_bench_lite" --json --kv-type "$kv")
elif [[ ! -x "$lib/llama-bench" ]]; then
  echo "run.sh: compiling llama-bench from the release's source (about 10 s)" >&2
  g++ -std=c++17 -O2 -DNDEBUG -I"$src/common" -I"$src/include" -I"$src/ggml/include" \
    -I"$src/vendor" -I"$src/tools/llama-bench" "$src/tools/llama-bench/llama-bench.cpp" \
    "$src/tools/llama-bench/main.cpp" -o "$lib/llama-bench" -l:libllama-common.so "${links[@]}" \
    -Wl,-rpath,'$ORIGIN' -pthread
fi
[[ "$harness" == llama-bench ]] && llama_cmd=("$lib/llama-bench" -o jsonl -ctk "$kv" -ctv "$kv")

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for f in "$@"; do
  echo "run.sh: $f: starling" >&2
  "$starling" bench -m "$f" -p "$n_prompt" -n "$n_gen" -t "$threads" -r "$reps" \
    --kv-type "$kv" --json | sed "s|^|starling\t$f\t|" >> "$results"
  echo "run.sh: $f: llama.cpp ($harness)" >&2
  err="$(mktemp)"
  "${llama_cmd[@]}" -m "$f" -p "$n_prompt" -n "$n_gen" -t "$threads" -r "$reps" 2> "$err" |
    sed "s|^|llama.cpp\t$f\t|" >> "$results"
  # which libggml-cpu-<variant>.so the loader chose (llama-bench logs it; the lite harness
  # puts it in its JSON)
  variant="$(sed -n 's|.*loaded CPU backend from .*libggml-cpu-\(.*\)\.so.*|\1|p' "$err" | head -1)"
  [[ -n "$variant" ]] && printf 'variant\t%s\t%s\n' "$f" "$variant" >> "$results"
  rm -f "$err"
done

flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
  grep -xE 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx512_fp16|avx_vnni|amx_int8|amx_bf16' |
  tr '\n' ' ')"
cpu="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')"
tag="$(sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' "$npm_dir/llama.cpp.info.json")"
python3 - "$results" "$threads" "$reps" "$kv" "$harness" "$cpu" "$flags" "$tag" <<'EOF'
import json, statistics, sys
path, threads, reps, kv, harness, cpu, flags, tag = sys.argv[1:]
rows, variants, order = {}, {}, []
for line in open(path):
    engine, f, payload = line.rstrip("\n").split("\t", 2)
    if engine == "variant":
        variants[f] = payload
        continue
    if not payload.startswith("{"):
        continue
    j = json.loads(payload)
    if f not in order:
        order.append(f)
    r = rows.setdefault(f, {})
    if engine == "starling":
        r["s_" + j["test"][:2]] = j["tokens_per_s_median"]
        if j.get("bandwidth_gb_per_s"):  # generation: weights read per second / the probe's
            r["s_bw"] = f"{j['gb_per_s']:.1f} of {j['bandwidth_gb_per_s']:.1f}"
    else:
        test = "pp" if j.get("n_prompt", 0) > 0 or j.get("test", "").startswith("pp") else "tg"
        if "samples_ts" in j:
            r["l_" + test] = statistics.median(j["samples_ts"])
        # "llama 7B Q4_K - Medium": the words after the architecture and size
        r["type"] = " ".join(j["model_type"].split()[2:]) or j["model_type"]
        if "cpu_variant" in j:
            variants[f] = j["cpu_variant"]
def fmt(x):
    return f"{x:.2f}" if x is not None else "-"
def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"
print(f"| file | type | starling pp t/s | starling tg t/s | llama.cpp pp t/s | llama.cpp tg t/s "
      f"| pp ratio | tg ratio | starling tg GB/s of probe |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for f in order:
    r = rows[f]
    sp, st, lp, lt = (r.get(k) for k in ("s_pp", "s_tg", "l_pp", "l_tg"))
    name = f.rsplit("/", 1)[-1]
    print(f"| {name} | {r.get('type', '?')} | {fmt(sp)} | {fmt(st)} | {fmt(lp)} | {fmt(lt)} "
          f"| {ratio(sp, lp)} | {ratio(st, lt)} | {r.get('s_bw', '-')} |")
print()
print(f"Medians of {reps} runs after a warm-up, {threads} threads, K/V cache {kv} in both; "
      f"ratio = starling / llama.cpp.")
print(f"llama.cpp {tag} (npm node-llama-cpp prebuilt CPU libraries), harness {harness}, "
      f"ggml CPU variant: {', '.join(sorted(set(variants.values()))) or '?'}.")
print(f"CPU: {cpu}; flags: {flags.strip()}")
EOF
