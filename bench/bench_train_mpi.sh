#!/usr/bin/env bash
# Data-parallel training speed (issue 17): `starling train pretrain` on a fresh model of a
# llama2.c shape (stories15M by default: dim 288, 6 layers, vocab 32002 with the OpenChat
# tokenizer, tied head), the same global batch (--batch B --accum 2, B x ctx tokens per
# micro-batch) run three ways on this machine:
#   one process, 1 thread;  one process, 2 threads;  mpirun -np 2, 1 thread per rank.
# Prints per run the median step seconds and tokens/s over the steps after the first two, the
# median wait for the gradient all-reduce of the rank that waited least (about the sum's own
# exposed time) and of the one that waited most (plus the time it waited for the slower rank),
# and the bytes each rank sums per step.
#   bench/bench_train_mpi.sh [STARLING] [PRESET] [STEPS] [BATCH] [CTX]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
starling=$(realpath "${1:-$root/build/starling}")
preset=${2:-stories15M}
steps=${3:-12}
batch=${4:-4}
ctx=${5:-256}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$preset" in
  stories15M) dim=288 layers=6 heads=6 ffn=768 ;;
  stories42M) dim=512 layers=8 heads=8 ffn=1376 ;;
  *) echo "preset: stories15M or stories42M"; exit 2 ;;
esac
cat > "$work/config.json" <<EOF
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": $dim,
 "intermediate_size": $ffn, "num_hidden_layers": $layers, "num_attention_heads": $heads,
 "num_key_value_heads": $heads, "vocab_size": 32002, "max_position_embeddings": $ctx,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
 "bos_token_id": 1, "eos_token_id": 2}
EOF
cat "$root"/docs/*.md > "$work/text.txt"  # any text: the windows repeat over epochs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
args=(train pretrain --config "$work/config.json" --tokenizer "$root/models/openchat-3.5-tokenizer"
  --data "$work/text.txt" --ctx "$ctx" --batch "$batch" --accum 2 --steps "$steps" --lr 1e-4 -q)
run() {  # NAME THREADS LAUNCH...
  local name=$1 threads=$2; shift 2
  "$@" "${args[@]}" -t "$threads" --out "$work/$name" --log "$work/$name.jsonl" 2> "$work/$name.err" ||
    { cat "$work/$name.err"; exit 1; }
  python3 - "$name" "$work/$name.jsonl" <<'EOF'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(path)][2:]
sec = statistics.median(x["seconds"] for x in lines)
tps = statistics.median(x["tokens_per_s"] for x in lines)
lo = statistics.median(x.get("allreduce_seconds_min", 0.0) for x in lines)
hi = statistics.median(x.get("allreduce_seconds_max", 0.0) for x in lines)
mib = lines[0].get("allreduce_bytes", 0) / 2**20
print(f"| {name} | {sec:.3f} | {tps:.0f} | {lo * 1000:.1f} / {hi * 1000:.1f} | {mib:.1f} |")
EOF
}
echo "$preset, global batch 2 x $batch x $ctx tokens, $steps steps (medians of steps 3..$steps)"
echo "| run | step s | tokens/s | all-reduce wait ms, least / most waiting rank | MiB summed per rank |"
echo "|---|---|---|---|---|"
run "1 process, 1 thread" 1 "$starling"
run "1 process, 2 threads" 2 "$starling"
run "2 ranks x 1 thread" 1 "${MPIRUN:-mpirun}" -np 2 "$starling"
