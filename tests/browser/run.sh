#!/usr/bin/env bash
# Headless-browser test of the chat page of `starling serve`.
#
#   bash tests/browser/run.sh build/starling     # the starling binary (or the directory holding it)
#   bash tests/browser/run.sh --mock             # against tests/browser/mock_server.mjs only
#
# Starts the server on a free port with its embedded model, waits for GET /health, runs
# chat_page.mjs against it and stops it; given a binary, then does the same against the mock (which
# bundles the page itself with src/server/web/build.mjs): it streams slowly, splits events inside
# UTF-8 characters and streams Markdown on request. Screenshots of each state (markdown, list,
# context-full, mobile, mobile-settings, mobile-chats) go to ${OUT_DIR:-/tmp}/starling-chat*.png,
# the mock's to starling-chat-mock*.png. Exits 1 at the first failure; 77 (ctest
# SKIP_RETURN_CODE) when node or Chromium is missing.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
arg="${1:?usage: run.sh STARLING_BINARY|BINARY_DIR|--mock}"
chromium_bin="${CHROMIUM:-/usr/bin/chromium}"
out_dir="${OUT_DIR:-/tmp}"

if ! command -v node >/dev/null 2>&1; then echo "SKIP: node is not installed" >&2; exit 77; fi
if [[ ! -x "$chromium_bin" ]]; then echo "SKIP: no Chromium at $chromium_bin (set CHROMIUM)" >&2; exit 77; fi

mock=(node "$here/mock_server.mjs")
if [[ "$arg" == "--mock" ]]; then
  real=()
else
  bin="$arg"
  [[ -d "$bin" ]] && bin="$bin/starling"
  if [[ ! -x "$bin" ]]; then echo "FAIL: no starling binary at $bin" >&2; exit 1; fi
  real=("$bin" serve --host 127.0.0.1)
fi

if [[ ! -d "$here/node_modules/playwright-core" ]]; then
  echo "installing playwright-core (npm ci) in $here" >&2
  if ! (cd "$here" && npm ci --no-audit --no-fund); then
    echo "FAIL: npm ci failed in $here" >&2; exit 1
  fi
fi
mkdir -p "$out_dir"

server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$server_pid" 2>/dev/null; then
      echo "server did not exit within 5 s of SIGTERM; killing it" >&2
      kill -KILL "$server_pid" 2>/dev/null
    fi
  fi
  [[ -n "$server_pid" ]] && wait "$server_pid" 2>/dev/null
  server_pid=""
}
trap stop_server EXIT

# run_suite SCREENSHOT SERVER_COMMAND...: starts the server on a free port, waits for GET /health,
# runs chat_page.mjs against it and stops it; returns the test's status.
run_suite() {
  local shot="$1"; shift
  local port url log code healthy=0 status
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  url="http://127.0.0.1:$port"
  log="$(mktemp "${TMPDIR:-/tmp}/starling-serve.XXXXXX.log")"
  "$@" --port "$port" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 300); do   # up to 30 s
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "FAIL: the server ($1) exited before it was healthy; its output:" >&2; cat "$log" >&2; return 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/health" 2>/dev/null || true)"
    if [[ "$code" == "200" ]]; then healthy=1; break; fi
    sleep 0.1
  done
  if [[ $healthy != 1 ]]; then
    echo "FAIL: GET $url/health did not return 200 within 30 s; server output:" >&2; cat "$log" >&2; return 1
  fi
  node "$here/chat_page.mjs" "$url" "$shot"
  status=$?
  stop_server
  if [[ $status != 0 ]]; then echo "--- server output ($log) ---" >&2; tail -n 50 "$log" >&2; else rm -f "$log"; fi
  return $status
}

# Against the real server first (its embedded page), then the mock, which streams slowly, splits
# events mid-character and streams Markdown on request: checks the real server cannot make exact.
if [[ ${#real[@]} -gt 0 ]]; then
  echo "== against ${real[0]}"
  run_suite "$out_dir/starling-chat.png" "${real[@]}" || exit 1
  echo "== against the mock server"
  run_suite "$out_dir/starling-chat-mock.png" "${mock[@]}" || exit 1
else
  run_suite "$out_dir/starling-chat.png" "${mock[@]}" || exit 1
fi
