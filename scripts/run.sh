#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and run starling on the
# embedded default. Until model loading lands, that is a tokenizer demo on the shipped
# OpenChat 3.5 / Starling-LM tokenizer: a conversation rendered with the "openchat"
# template, its ids, and the ids decoded back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
tokenizer=models/openchat-3.5-tokenizer
messages=$(mktemp)
trap 'rm -f "$messages"' EXIT
cat >"$messages" <<'JSON'
[{"role": "user", "content": "Hello"},
 {"role": "assistant", "content": "Hi"},
 {"role": "user", "content": "How are you today?"}]
JSON
echo "== starling tokenize --template openchat --generation-prompt --render"
build/starling tokenize --tokenizer "$tokenizer" --template openchat --messages "$messages" \
  --generation-prompt --render --ids
echo "== starling tokenize 'Tokenizers like emoji 🦩 too'"
build/starling tokenize --tokenizer "$tokenizer" "Tokenizers like emoji 🦩 too"
echo "== starling detokenize (the same ids back)"
ids=$(build/starling tokenize --tokenizer "$tokenizer" --ids "Tokenizers like emoji 🦩 too")
build/starling detokenize --tokenizer "$tokenizer" --skip-special "$ids"
echo
