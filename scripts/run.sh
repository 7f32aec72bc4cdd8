#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and run starling on the two
# models compiled into the executable: stories260K writes a story token by token, then
# tiny-chat (stories260K tuned by this project's RLAIF pipeline, scripts/pipeline.sh) answers a
# few chat messages, as `starling chat` and `starling serve` do with no -m. Extra arguments go
# to `starling generate` (e.g. -m MODEL -p "Once upon") and skip the chat.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
if [ $# -gt 0 ]; then
  build/starling generate -v "$@"
  echo
  exit 0
fi
echo "== stories260K: a story from BOS alone (starling generate)"
build/starling generate -v -p "" -n 256 --temp 0.8 --seed 42
echo
echo
echo "== tiny-chat: the default of starling chat and starling serve (greedy answers)"
for message in "What is 23 + 45?" "Reverse the list: cat, sun, box." "Sort these numbers: 42, 7, 19." \
    "How many a's are in banana?" "Hi there!" "Tell me about cats."; do
  echo "> $message"
  printf '%s\n' "$message" | build/starling chat --temp 0 -n 48
done
