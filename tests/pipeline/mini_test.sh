#!/usr/bin/env bash
# The RLAIF pipeline end to end in miniature (issue 16): scripts/pipeline.sh --mini from an
# empty directory, then
#   - every stage improved its own metric (tools/pipeline_report.py --check: SFT's held-out
#     accuracy above the base model's, the reward model's held-out pair accuracy above 1/2,
#     APA's reward-model score above SFT's) and every trained model loaded for its evaluation;
#   - each stage's output is a normal model that other commands load: `chat` on the APA
#     directory with no --template (the template travels in the model's tokenizer: a model
#     without one stops with "ships no chat template"), `score`
#     with the reward model, `quantize` of the APA model to GGUF;
#   - a rerun resumes stage by stage: with report.done removed, only the report runs again.
# Two threads always, so that the numbers do not depend on the machine's core count.
# Usage: mini_test.sh STARLING WORKDIR
set -euo pipefail
STARLING="$(realpath "$1")"
WORK="$2"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$WORK"
mkdir -p "$WORK"
STARLING="$STARLING" THREADS=2 bash "$ROOT/scripts/pipeline.sh" --mini "$WORK/run" > "$WORK/log" 2>&1 ||
  { tail -n 40 "$WORK/log"; echo "FAIL: the pipeline stopped"; exit 1; }
python3 "$ROOT/tools/pipeline_report.py" --run "$WORK/run" --starling "$STARLING" --check
fail() { echo "FAIL: $*"; exit 1; }

reply="$(printf 'What is 2 + 3?\n' | "$STARLING" chat -m "$WORK/run/apa" -n 16 --temp 0 2>"$WORK/chat.err")" ||
  { cat "$WORK/chat.err"; fail "chat -m apa"; }
"$STARLING" info -m "$WORK/run/apa" | grep -q "chat template: openchat" || fail "the APA model's template is not openchat"
"$STARLING" score -m "$WORK/run/rm" --template openchat \
  --messages '[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]' \
  > "$WORK/score.out" || fail "score -m rm"
"$STARLING" quantize "$WORK/run/apa" "$WORK/apa.gguf" --type f32 2>/dev/null || fail "quantize apa"
"$STARLING" info -m "$WORK/apa.gguf" | grep -q "chat template: openchat" || fail "the GGUF lost the template"

rm "$WORK/run/report.done"
STARLING="$STARLING" bash "$ROOT/scripts/pipeline.sh" --mini "$WORK/run" > "$WORK/rerun" 2>&1 || fail "rerun"
skipped=$(grep -c "done before, skipped" "$WORK/rerun" || true)
[ "$skipped" = 10 ] || { cat "$WORK/rerun"; fail "a rerun skipped $skipped stages, not the 10 done"; }
grep -q "== \[11/11\] report (at" "$WORK/rerun" || fail "the rerun did not redo the report"
echo "pipeline_mini: pass (reply to 'What is 2 + 3?': $reply)"
