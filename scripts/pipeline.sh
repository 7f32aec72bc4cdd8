#!/usr/bin/env bash
# The RLAIF pipeline of Starling, in miniature, on this machine (issue 16; docs/PIPELINE.md):
#
#   data  -> base -> sft -> judge -> rm -> apa, ppo, dpo, hack -> eval -> report
#
#   data   task records from tools/chat_tasks.py (seeded; no downloads)
#   base   stories260K with OpenChat's <|end_of_turn|> and chat template (starling add-tokens)
#   sft    supervised fine-tuning on the tasks (starling train sft)
#   judge  answers sampled from the SFT model, mixed with the reference, a reformat and
#          corruptions, ranked 1..7 by the programmatic judge into Nectar records
#   rm     a K-wise reward model initialized from the SFT model (starling train rm --loss kwise)
#   apa    APA against that reward model (starling train apa); ppo and dpo from the same SFT
#          model as comparisons; hack: APA against a reward that likes long answers
#   eval   every stage's held-out exact accuracy (eval, eval-hard) and true reward, win rate
#          against SFT judged by the reward model, the reward model's held-out agreement
#   report OUT/results.json, OUT/results.md and the curves OUT/figures/*.svg
#
# Usage: scripts/pipeline.sh [--mini] [OUT]
#   OUT defaults to runs/pipeline (runs/pipeline-mini with --mini). --mini: a few minutes, for
#   the end-to-end test. Every stage writes OUT/<stage>/ and then OUT/<stage>.done; a rerun
#   skips the stages that are done (resume stage by stage: an interrupted stage starts over,
#   its training from its newest checkpoint). Delete OUT/<stage>.done to redo a stage (and the
#   ones that read it). Environment: STARLING (the binary, default build/starling), THREADS.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MINI=0
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --mini) MINI=1; shift ;;
esac
if [ $MINI = 1 ]; then OUT="${1:-$ROOT/runs/pipeline-mini}"; else OUT="${1:-$ROOT/runs/pipeline}"; fi
STARLING="${STARLING:-$ROOT/build/starling}"
PY="python3 $ROOT/tools/chat_tasks.py"
THREADS="${THREADS:-0}"
[ -x "$STARLING" ] || { echo "pipeline: $STARLING is missing (build first: bash scripts/build.sh)" >&2; exit 1; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Sizes. The full run takes about an hour on 2 cores (docs/PIPELINE.md has the measured times).
if [ $MINI = 1 ]; then
  N_SFT=6000 SFT_STEPS=300 N_RL=400 N_JUDGE=160 SAMPLES=4 N_EVAL=150 N_HARD=60 N_WIN=60
  RM_STEPS=60 RM_EVAL=30 RM_BATCH=8 ITERS=6 ROLLOUTS=32 DPO_STEPS=60 QUIET=-q
else
  N_SFT=60000 SFT_STEPS=2500 N_RL=16000 N_JUDGE=12000 SAMPLES=4 N_EVAL=600 N_HARD=300 N_WIN=300
  RM_STEPS=3000 RM_EVAL=250 RM_BATCH=8 ITERS=60 ROLLOUTS=128 DPO_STEPS=1000 QUIET=
fi
POLICY_LR="${POLICY_LR:-5e-5}"
T="-t $THREADS"
START=$(date +%s)
STAGES=(data base sft judge rm apa ppo dpo hack eval report)

stage() {  # stage NAME: true when NAME must run (not done); prints the progress line
  local i
  for i in "${!STAGES[@]}"; do [ "${STAGES[$i]}" = "$1" ] && break; done
  local when="$(( $(date +%s) - START ))s"
  if [ -e "$OUT/$1.done" ]; then
    echo "== [$((i + 1))/${#STAGES[@]}] $1: done before, skipped" >&2
    return 1
  fi
  echo "== [$((i + 1))/${#STAGES[@]}] $1 (at $when)" >&2
  STAGE_START=$(date +%s)
  mkdir -p "$OUT/$1"
  return 0
}
done_stage() {
  echo "$(( $(date +%s) - STAGE_START ))" > "$OUT/$1/seconds"
  touch "$OUT/$1.done"
}
resume_flag() {  # --resume DIR when a training run left a checkpoint there
  if compgen -G "$1/checkpoint-*" > /dev/null; then echo "--resume $1"; fi
}

D="$OUT/data"
if stage data; then
  $PY generate --split sft --n $N_SFT --seed 1 --out "$D/sft.jsonl"
  $PY generate --split rl --n $N_RL --seed 2 --out "$D/rl.jsonl"
  head -n $N_JUDGE "$D/rl.jsonl" > "$D/judge.jsonl"
  $PY generate --split eval --n $N_EVAL --seed 3 --out "$D/eval.jsonl"
  $PY generate --split eval-hard --n $N_HARD --seed 4 --out "$D/eval-hard.jsonl"
  # Win-rate prompts: held-out checkable and chit-chat prompts alike.
  head -n $N_WIN "$D/eval.jsonl" > "$D/win.jsonl"
  done_stage data
fi

if stage base; then
  "$STARLING" add-tokens "$ROOT/models/stories260K.gguf" "$OUT/base/model.gguf" \
    --token '<|end_of_turn|>' --eos '<|end_of_turn|>' --chat-template openchat
  done_stage base
fi
BASE="$OUT/base/model.gguf"

if stage sft; then
  # shellcheck disable=SC2046
  "$STARLING" train sft -m "$BASE" --template openchat --data "$D/sft.jsonl" --ctx 128 \
    --batch 32 --steps $SFT_STEPS --lr 3e-3 --schedule cosine --warmup 50 --save-every 500 \
    --out "$OUT/sft" --log "$OUT/sft/log.jsonl" $QUIET $T $(resume_flag "$OUT/sft")
  done_stage sft
fi

if stage judge; then
  # Samples at temperature 1 from the SFT model, SAMPLES per prompt (another seed each pass).
  for s in $(seq 1 $SAMPLES); do
    "$STARLING" eval --task exact -m "$OUT/sft" --data "$D/judge.jsonl" --temp 1 \
      --seed $((s * 100000)) -n 32 --batch 32 --responses "$OUT/judge/samples-$s.jsonl" $T \
      > "$OUT/judge/samples-$s.md"
  done
  samples=()
  for s in $(seq 1 $SAMPLES); do samples+=(--samples "$OUT/judge/samples-$s.jsonl"); done
  $PY candidates --data "$D/judge.jsonl" --k 7 --seed 5 "${samples[@]}" \
    --out "$OUT/judge/candidates.jsonl"
  $PY rank --data "$OUT/judge/candidates.jsonl" --unique --out "$OUT/judge/nectar.jsonl"
  # The last tenth is held out for the reward model's agreement with the judge.
  n=$(wc -l < "$OUT/judge/nectar.jsonl")
  held=$(( n / 10 ))
  head -n $(( n - held )) "$OUT/judge/nectar.jsonl" > "$OUT/judge/train.jsonl"
  tail -n $held "$OUT/judge/nectar.jsonl" > "$OUT/judge/heldout.jsonl"
  done_stage judge
fi

if stage rm; then
  # shellcheck disable=SC2046
  "$STARLING" train rm --loss kwise -m "$OUT/sft" --template openchat \
    --data "$OUT/judge/train.jsonl" --eval-data "$OUT/judge/heldout.jsonl" --eval-every $RM_EVAL \
    --ctx 128 --batch $RM_BATCH --steps $RM_STEPS --lr 1e-3 --schedule cosine --warmup 10 \
    --save-every 100 --out "$OUT/rm" --log "$OUT/rm/log.jsonl" $QUIET $T $(resume_flag "$OUT/rm")
  "$STARLING" rank -m "$OUT/rm" --template openchat "$OUT/judge/heldout.jsonl" $T \
    | tail -n 1 > "$OUT/rm/heldout.json"
  done_stage rm
fi

policy() {  # policy NAME ALGORITHM [FLAGS...]: train NAME from the SFT model
  local name=$1 algo=$2
  shift 2
  # shellcheck disable=SC2046
  "$STARLING" train "$algo" -m "$OUT/sft" --template openchat --prompts "$D/rl.jsonl" \
    --iterations $ITERS --rollouts $ROLLOUTS --ppo-epochs 2 --batch 16 --max-new-tokens 32 \
    --lr $POLICY_LR --reward-scale running --sample-every 10 --save-every 10 --out "$OUT/$name" --log "$OUT/$name/log.jsonl" \
    $QUIET $T "$@" $(resume_flag "$OUT/$name")
}
RM_FLAGS=(--rm "$OUT/rm" --rm-template openchat)

if stage apa; then
  policy apa apa --variant paper "${RM_FLAGS[@]}"
  done_stage apa
fi

if stage ppo; then
  policy ppo ppo "${RM_FLAGS[@]}"
  done_stage ppo
fi

if stage dpo; then
  # shellcheck disable=SC2046
  "$STARLING" train dpo -m "$OUT/sft" --template openchat --data "$OUT/judge/train.jsonl" \
    --eval-data "$OUT/judge/heldout.jsonl" --eval-every 50 --pairs best --beta 0.1 --ctx 128 \
    --batch 16 --steps $DPO_STEPS --lr 3e-4 --save-every 100 --out "$OUT/dpo" \
    --log "$OUT/dpo/log.jsonl" $QUIET $T $(resume_flag "$OUT/dpo")
  done_stage dpo
fi

if stage hack; then
  # A gameable reward: tools/program_reward.py's "length" (answers of about twenty words, where the right ones have one to five), served on a
  # free port for the run's length.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 "$ROOT/tools/program_reward.py" --port "$port" --reward length &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
  done
  policy hack apa --variant paper --rm-url "http://127.0.0.1:$port"
  kill $server 2>/dev/null || true
  trap - EXIT
  done_stage hack
fi

MODELS=(base sft apa ppo dpo hack)
model_path() { if [ "$1" = base ]; then echo "$BASE"; else echo "$OUT/$1"; fi; }

if stage eval; then
  for m in "${MODELS[@]}"; do
    for split in eval eval-hard; do
      "$STARLING" eval --task exact -m "$(model_path $m)" --template openchat \
        --data "$D/$split.jsonl" -n 32 --batch 32 --out "$OUT/eval/$m-$split.json" \
        --responses "$OUT/eval/$m-$split.responses.jsonl" $T > "$OUT/eval/$m-$split.md"
    done
    if [ "$m" != sft ]; then
      "$STARLING" eval --task winrate -m "$(model_path $m)" --model-b "$OUT/sft" \
        --template openchat --data "$D/win.jsonl" "${RM_FLAGS[@]}" -n 32 --batch 32 \
        --out "$OUT/eval/$m-winrate.json" $T > "$OUT/eval/$m-winrate.md"
    fi
  done
  done_stage eval
fi

if stage report; then
  python3 "$ROOT/tools/pipeline_report.py" --run "$OUT" --starling "$STARLING"
  done_stage report
fi
echo "pipeline: done in $(( $(date +%s) - START ))s; results in $OUT/results.md" >&2
cat "$OUT/results.md"
