#!/usr/bin/env bash
# The CLI's option handling under valgrind's memcheck: -t once wrote through a pointer into a
# freed shared_ptr in `perplexity` and `serve` (an invalid write of size 4).
#     bash tests/cli_memcheck.sh BUILD/starling
# Exit 77 (skipped) without valgrind; non-zero naming the command when memcheck finds an error.
set -uo pipefail
starling="$1"
command -v valgrind >/dev/null 2>&1 || { echo "valgrind not installed: skipped"; exit 77; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
memcheck=(valgrind -q --error-exitcode=99)
printf 'Once upon a time, there was a little girl named Lily.\n' > "$tmp/text.txt"

"${memcheck[@]}" "$starling" perplexity -f "$tmp/text.txt" -c 16 -t 1 >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -ne 0 ]; then cat "$tmp/err"; echo "FAIL: perplexity -t 1 under memcheck exited $rc"; exit 1; fi

"${memcheck[@]}" "$starling" serve --port 0 -t 1 2>"$tmp/serve.err" &
pid=$!
for _ in $(seq 600); do
  grep -q "on http://" "$tmp/serve.err" && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$pid"
rc=$?
if [ $rc -ne 0 ]; then cat "$tmp/serve.err"; echo "FAIL: serve -t 1 under memcheck exited $rc"; exit 1; fi
echo "no memcheck errors"
