#!/usr/bin/env python3
"""Load test of `starling serve` on loopback: N concurrent streaming clients against one.

    python3 scripts/load_test.py [--clients 32] [--tokens 64] [--model FILE] [--parallel 32]

Starts the server (build/starling serve) on a free port, runs one streaming client alone, then
N at once, each asking for --tokens tokens (greedy, so every stream has a fixed length). Prints
the single-stream and aggregate generated tokens/s and the error count, as JSON. Bounded: every
request has a 300 s timeout.
"""
import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--clients", type=int, default=32)
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--model", default="")
p.add_argument("--parallel", type=int, default=32)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--binary", default="build/starling")
a = p.parse_args()

args = [a.binary, "serve", "--port", "0", "--parallel", str(a.parallel), "--queue", "64",
        "--ctx", "256"]
if a.model:
    args += ["-m", a.model]
if a.threads:
    args += ["-t", str(a.threads)]
proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
port = None
for line in proc.stderr:
    m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
    if m:
        port = int(m.group(1))
        break
if port is None:
    sys.exit("the server did not start")
threading.Thread(target=proc.stderr.read, daemon=True).start()


def stream(results, i):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        body = {"messages": [{"role": "user", "content": "Once upon a time"}], "stream": True,
                "max_tokens": a.tokens, "temperature": 0,
                "stream_options": {"include_usage": True}}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
        res = conn.getresponse()
        tokens, done = 0, False
        for line in res:
            line = line.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        results[i] = tokens if res.status == 200 and done else -1
    except Exception:  # counted as an error
        results[i] = -1


def run(n):
    results = [None] * n
    threads = [threading.Thread(target=stream, args=(results, i)) for i in range(n)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start
    errors = sum(1 for r in results if r is None or r < 0)
    tokens = sum(r for r in results if r and r > 0)
    return {"clients": n, "seconds": round(seconds, 3), "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 2), "errors": errors}


try:
    run(1)  # warm up
    single = run(1)
    many = run(a.clients)
    print(json.dumps({"model": a.model or "stories260K (embedded)", "parallel": a.parallel,
                      "single": single, "concurrent": many,
                      "speedup": round(many["tokens_per_s"] / single["tokens_per_s"], 2)}))
    sys.exit(1 if single["errors"] or many["errors"] else 0)
finally:
    proc.send_signal(15)
    proc.wait(timeout=30)
