#!/usr/bin/env python3
"""The server's manners (issue 19, section 4) over real HTTP on loopback, bounded in time:

    python3 tests/server/manners_test.py BUILD/starling TEST_DATA_DIR

The request log (a line per request; --log-level, --log-format json; client bytes escaped),
--alias and --strict-model, GET /v1/models/{id}, CORS with --cors-origin (preflights), the
port-in-use error (SO_REUSEPORT off), the warning for a non-loopback address without
--api-key, SIGINT draining a stream, and the OpenAI fields: logprobs (chat and legacy shapes,
streamed and not), frequency/presence penalties, logit_bias, seed, n, and a 400 naming any
field that is not implemented. Python standard library only; stories260K (and the embedded
tiny-chat for the default model's id).
Exits non-zero with a message naming the failed check.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import harness
from harness import Server, check, failures, read_stream

STARLING = sys.argv[1]
DATA = sys.argv[2]
harness.STARLING = STARLING


def chat(content="Once upon a time", **kw):
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 24}
    body.update(kw)
    return body


def request_lines(lines):
    return [l for l in lines if " request " in l]


def request_log():
    s = Server()
    status, r = s.json("POST", "/v1/chat/completions", chat(max_tokens=7))
    check(status == 200, "chat for the log: %d" % status)
    lines = s.log(wait_for="path=/v1/chat/completions")
    line = [l for l in request_lines(lines) if "path=/v1/chat/completions" in l]
    want = ["info request", "method=POST", "status=200",
            "prompt_tokens=%d" % r["usage"]["prompt_tokens"], "completion_tokens=7",
            "duration_ms=", "remote=127.0.0.1"]
    check(line and all(w in line[0] for w in want), "a text request line: %r" % line)
    # A streamed request is logged once it has been written, with its tokens.
    status, _, events, done = s.stream(chat(max_tokens=5, stream=True))
    lines = s.log(wait_for="completion_tokens=5")
    check(done and any("completion_tokens=5" in l and "status=200" in l
                       for l in request_lines(lines)), "a streamed request's line: %r" % lines[-2:])
    # An error: its status and message. A path with a newline and an escape sequence stays on
    # one line, escaped.
    s.request("GET", "/no/such%0a%1b[31mpath")
    lines = s.log(wait_for="status=404")
    bad = [l for l in request_lines(lines) if "status=404" in l]
    check(len(bad) == 1 and "\x1b" not in "".join(lines) and "error=" in bad[0]
          and '\\n' in bad[0], "a hostile path is logged escaped on one line: %r" % bad)
    check(all(l.endswith("\n") and l.count("\n") == 1 for l in lines), "one line per event")
    check(s.stop() == 0, "SIGTERM exits 0 (request log)")

    # JSON: every line one object; the request's fields typed.
    s = Server("--log-format", "json")
    s.json("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 3, "temperature": 0})
    s.request("GET", "/health")
    lines = s.log(wait_for='"/health"')
    try:
        records = [json.loads(l) for l in lines]
    except ValueError as e:
        records = []
        check(False, "JSON log lines parse: %s %r" % (e, lines))
    reqs = [r for r in records if r.get("message") == "request"]
    comp = [r for r in reqs if r.get("path") == "/v1/completions"]
    check(comp and comp[0]["status"] == 200 and comp[0]["completion_tokens"] == 3
          and comp[0]["prompt_tokens"] > 0 and comp[0]["level"] == "info"
          and isinstance(comp[0]["duration_ms"], (int, float)) and comp[0]["method"] == "POST"
          and "time" in comp[0], "a JSON request record: %r" % comp)
    check(any(r.get("path") == "/health" and "prompt_tokens" not in r for r in reqs),
          "no token counts for a request that generates nothing: %r" % reqs)
    check(any("port" in r for r in records), "the JSON start line has the port")
    check(s.stop() == 0, "SIGTERM exits 0 (JSON log)")

    # --log-level error: only the start line, whatever happens; debug adds each generation.
    s = Server("--log-level", "error")
    s.json("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 2})
    s.request("GET", "/missing")
    time.sleep(0.3)
    check(len(s.log()) == 1 and "on http://" in s.log()[0],
          "--log-level error writes no request lines: %r" % s.log())
    check(s.stop() == 0, "SIGTERM exits 0 (log level error)")
    s = Server("--log-level", "debug")
    s.json("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 2, "seed": 77})
    lines = s.log(wait_for="path=/v1/completions")
    check(any("debug generation" in l and "seed=77" in l for l in lines),
          "--log-level debug logs the generation's parameters: %r" % lines)
    check(s.stop() == 0, "SIGTERM exits 0 (log level debug)")
    bad = subprocess.run([STARLING, "serve", "--log-level", "loud"], capture_output=True,
                         text=True, timeout=60)
    check(bad.returncode != 0 and "--log-level" in bad.stderr, "--log-level loud is refused")


def models_and_alias():
    s = Server(default_model=True)
    _, models = s.json("GET", "/v1/models")
    # The default model is the embedded tiny-chat.
    check(models["data"][0]["id"] == "tiny-chat", "the default id has no spaces: %r" % models)
    status, m = s.json("GET", "/v1/models/tiny-chat")
    check(status == 200 and m == {"id": "tiny-chat", "object": "model",
                                  "created": m.get("created"), "owned_by": "starling"},
          "GET /v1/models/{id}: %r" % m)
    status, m = s.json("GET", "/v1/models/gpt-4o")
    check(status == 404 and m["error"]["code"] == "model_not_found"
          and "gpt-4o" in m["error"]["message"], "GET /v1/models/unknown -> 404: %r" % m)
    # Not strict: any model value is answered by the one model, which the response names.
    status, r = s.json("POST", "/v1/chat/completions", chat(model="gpt-4o", max_tokens=2))
    check(status == 200 and r["model"] == "tiny-chat", "any model accepted: %d %r" % (status, r))
    check(s.stop() == 0, "SIGTERM exits 0 (models)")

    s = Server("--alias", "story-teller", "--strict-model")
    _, models = s.json("GET", "/v1/models")
    check([d["id"] for d in models["data"]] == ["story-teller"], "--alias names the model")
    check(s.json("GET", "/v1/models/story-teller")[0] == 200, "GET /v1/models/ALIAS")
    status, r = s.json("POST", "/v1/chat/completions", chat(model="gpt-4o", max_tokens=2))
    check(status == 404 and r["error"]["code"] == "model_not_found"
          and r["error"]["param"] == "model" and "'gpt-4o'" in r["error"]["message"],
          "--strict-model refuses another model, naming it: %d %r" % (status, r))
    for body in [chat(model="story-teller", max_tokens=2), chat(max_tokens=2)]:
        status, r = s.json("POST", "/v1/chat/completions", body)
        check(status == 200 and r["model"] == "story-teller", "--strict-model: %r" % body)
    status, r = s.json("POST", "/v1/completions",
                       {"model": "other", "prompt": "Once", "max_tokens": 2})
    check(status == 404, "--strict-model on /v1/completions: %d" % status)
    check(s.stop() == 0, "SIGTERM exits 0 (alias)")
    bad = subprocess.run([STARLING, "serve", "--alias", "two words"], capture_output=True,
                         text=True, timeout=60)
    check(bad.returncode != 0 and "--alias" in bad.stderr, "an alias with a space is refused")
    # A model file whose name has spaces: the default id replaces them.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "my  tiny model.gguf")
        shutil.copy(DATA + "/tiny-mistral/model-f32.gguf", path)
        s = Server("-m", path)
        _, models = s.json("GET", "/v1/models")
        check(models["data"][0]["id"] == "my-tiny-model.gguf", "spaces -> '-': %r" % models)
        check(s.stop() == 0, "SIGTERM exits 0 (model name with spaces)")


def preflight(s, origin, headers="authorization, content-type, x-stainless-os"):
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("OPTIONS", "/v1/chat/completions",
                 headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                          "Access-Control-Request-Headers": headers})
    res = conn.getresponse()
    res.read()
    conn.close()
    return res


def cors():
    app = "http://App.example:3000"
    s = Server("--cors-origin", app + "/", "--cors-origin", "https://other.example",
               "--api-key", "k")
    res = preflight(s, app)
    allow_headers = (res.getheader("Access-Control-Allow-Headers") or "").lower()
    check(res.status == 204 and res.getheader("Access-Control-Allow-Origin") == app
          and "POST" in (res.getheader("Access-Control-Allow-Methods") or "")
          and "authorization" in allow_headers and "content-type" in allow_headers
          and "x-stainless-os" in allow_headers and res.getheader("Vary") == "Origin",
          "a preflight from a listed origin (no API key needed): %d %r"
          % (res.status, res.getheaders()))
    res = preflight(s, "http://evil.example")
    check(res.status == 403 and res.getheader("Access-Control-Allow-Origin") is None,
          "a preflight from another origin: %d" % res.status)
    # The request itself: allowed, with the header; its errors carry it too (the page reads them).
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    for key, want in [("k", 200), ("wrong", 401)]:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat(max_tokens=2)),
                     headers={"Origin": app, "Authorization": "Bearer " + key,
                              "Content-Type": "application/json"})
        res = conn.getresponse()
        res.read()
        check(res.status == want and res.getheader("Access-Control-Allow-Origin") == app,
              "a cross-origin request from a listed origin: %d (want %d)" % (res.status, want))
    conn.close()
    status, _ = s.request("POST", "/tokenize", {"content": "x"},
                          {"Origin": "http://evil.example", "Authorization": "Bearer k"})
    check(status == 403, "an unlisted origin is still refused: %d" % status)
    # Same-origin requests need no CORS header.
    status, raw_body = s.request("GET", "/health", headers={"Origin": "http://127.0.0.1:%d" % s.port})
    check(status == 200, "same origin still passes")
    check(s.stop() == 0, "SIGTERM exits 0 (CORS)")

    s = Server("--cors-origin", "*")
    res = preflight(s, "http://anything.example:8000", headers="content-type")
    check(res.status == 204
          and res.getheader("Access-Control-Allow-Origin") == "http://anything.example:8000",
          "--cors-origin '*' allows any origin: %d" % res.status)
    check(s.stop() == 0, "SIGTERM exits 0 (CORS *)")
    for bad_origin in ["ftp://x", "http://x/path", "example.com", "http://"]:
        bad = subprocess.run([STARLING, "serve", "--cors-origin", bad_origin],
                             capture_output=True, text=True, timeout=60)
        check(bad.returncode != 0 and "--cors-origin" in bad.stderr,
              "--cors-origin %r is refused: %r" % (bad_origin, bad.stderr[-200:]))


def port_and_host():
    s = Server()
    # SO_REUSEPORT is off on the server's socket: a socket that asks for it cannot share the port.
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        probe.bind(("127.0.0.1", s.port))
        shared = True
    except OSError:
        shared = False
    probe.close()
    check(not shared, "no other socket can share the server's port (SO_REUSEPORT off)")
    second = subprocess.run([STARLING, "serve", "--port", str(s.port)], capture_output=True,
                            text=True, timeout=60)
    check(second.returncode == 1 and ("127.0.0.1:%d" % s.port) in second.stderr
          and "in use" in second.stderr,
          "a second server on the port exits 1 naming it: %d %r"
          % (second.returncode, second.stderr[-300:]))
    check(s.stop() == 0, "SIGTERM exits 0 (port in use)")
    # A port held by another program.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    other = subprocess.run([STARLING, "serve", "--port", str(busy)], capture_output=True,
                           text=True, timeout=60)
    holder.close()
    check(other.returncode == 1 and ("cannot listen on 127.0.0.1:%d" % busy) in other.stderr,
          "a port held by another program: %r" % other.stderr[-300:])

    # Every address without a key: a warning; with a key, or on loopback, none.
    warning = "without --api-key"
    for args, warned in [(["--host", "0.0.0.0"], True), (["--host", "0.0.0.0", "--api-key", "k"], False),
                         (["--host", "localhost"], False), ([], False)]:
        s = Server(*args)
        check(s.json("GET", "/health", headers={"Authorization": "Bearer k"})[0] == 200,
              "serving with %r" % args)
        log = "".join(s.log())
        check((warning in log) == warned, "warning %s with %r: %r" % (warned, args, log))
        check(s.stop() == 0, "SIGTERM exits 0 (%r)" % args)


def sigint_drains_a_stream():
    s = Server("--drain-timeout", "30")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"prompt": "Once", "max_tokens": 1500, "stream": True}).encode())
    res = conn.getresponse()
    check(res.status == 200 and res.readline().startswith(b"data: "), "stream started")
    s.proc.send_signal(2)  # SIGINT
    status, raw = 0, b""
    deadline = time.time() + 10
    while status != 503 and time.time() < deadline:
        try:
            status, raw = s.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
        except ConnectionError:
            break
    check(status == 503 and b"shutting down" in raw, "503 while draining: %d %r" % (status, raw))
    events, done, complete = read_stream(res)
    finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices")]
    check(complete and done and finish and finish[-1] in ("length", "stop"),
          "SIGINT: the stream gets its last chunk and [DONE]: %r" % finish[-2:])
    check(s.proc.wait(timeout=60) == 0, "SIGINT exits 0")


def tokens_of(r):
    return [t["token"] for t in r["choices"][0]["logprobs"]["content"]]


def openai_fields():
    s = Server("--parallel", "2", "--queue", "4")
    # Chat logprobs: one entry per generated token, OpenAI's shape; greedy picks the top one.
    status, r = s.json("POST", "/v1/chat/completions", chat(logprobs=True, top_logprobs=3))
    lp = r["choices"][0]["logprobs"] if status == 200 else None
    content = lp["content"] if lp else []
    check(status == 200 and lp.get("refusal", 0) is None
          and len(content) == r["usage"]["completion_tokens"],
          "chat logprobs: one entry per token: %d %r" % (status, r))
    for e in content:
        check(set(e) == {"token", "logprob", "bytes", "top_logprobs"} and e["logprob"] <= 0
              and bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
              and len(e["top_logprobs"]) == 3
              and e["top_logprobs"][0]["token"] == e["token"]
              and e["top_logprobs"][0]["logprob"] == e["logprob"]
              and all(a["logprob"] >= b["logprob"] for a, b in
                      zip(e["top_logprobs"], e["top_logprobs"][1:])),
              "a chat logprobs entry: %r" % e)
    text = r["choices"][0]["message"]["content"]
    check("".join(tokens_of(r)).strip() == text.strip(), "the tokens spell the text")
    # Streamed: the same entries, spread over the chunks.
    status, _, events, done = s.stream(chat(logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for ev in events if ev.get("choices") and ev["choices"][0]["logprobs"]
                for e in ev["choices"][0]["logprobs"]["content"]]
    check(done and streamed == content, "streamed chat logprobs equal the response's")
    # Without top_logprobs: empty lists; without logprobs: null.
    _, r2 = s.json("POST", "/v1/chat/completions", chat(logprobs=True, max_tokens=3))
    check(all(e["top_logprobs"] == [] for e in r2["choices"][0]["logprobs"]["content"]),
          "logprobs without top_logprobs")
    _, r2 = s.json("POST", "/v1/chat/completions", chat(max_tokens=3))
    check(r2["choices"][0]["logprobs"] is None, "no logprobs unless asked")

    # Completions: the legacy shape.
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 2}
    status, r = s.json("POST", "/v1/completions", body)
    lp = r["choices"][0]["logprobs"] if status == 200 else {}
    n = r.get("usage", {}).get("completion_tokens", -1)
    check(status == 200 and set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
          and len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
          == len(lp["text_offset"]) == n,
          "legacy logprobs shape: %r" % lp)
    if lp:
        offsets = [sum(len(t.encode()) for t in lp["tokens"][:i]) for i in range(n)]
        check(lp["text_offset"] == offsets, "text_offset: %r" % lp["text_offset"])
        check(all(len(top) == 2 and max(top.values()) == lp["token_logprobs"][i]
                  for i, top in enumerate(lp["top_logprobs"])),
              "legacy top_logprobs: %r" % lp["top_logprobs"])
        status, _, events, done = s.stream({"messages": [{"content": body["prompt"]}],
                                            **{k: v for k, v in body.items() if k != "prompt"},
                                            "stream": True}, raw=True)
        parts = [ev["choices"][0]["logprobs"] for ev in events
                 if ev.get("choices") and ev["choices"][0]["logprobs"]]
        check(done and sum((p["tokens"] for p in parts), []) == lp["tokens"]
              and sum((p["text_offset"] for p in parts), []) == lp["text_offset"],
              "streamed legacy logprobs continue the offsets")

    # Penalties (OpenAI's definitions, over generated tokens): greedy text repeats less.
    def most_repeated(**kw):
        _, r = s.json("POST", "/v1/chat/completions", chat(max_tokens=60, logprobs=True, **kw))
        return max(Counter(tokens_of(r)).values()), r["choices"][0]["message"]["content"]
    plain, plain_text = most_repeated()
    freq, freq_text = most_repeated(frequency_penalty=2.0)
    pres, pres_text = most_repeated(presence_penalty=2.0)
    check(freq < plain and freq_text != plain_text,
          "frequency_penalty: %d < %d repeats" % (freq, plain))
    check(pres < plain and pres_text != plain_text,
          "presence_penalty: %d < %d repeats" % (pres, plain))
    check(most_repeated(frequency_penalty=0, presence_penalty=0)[1] == plain_text,
          "zero penalties change nothing")

    # logit_bias: +100 on one token makes greedy decoding choose it every time.
    _, tok = s.json("POST", "/tokenize", {"content": " cat", "add_special": False})
    cat = tok["tokens"][-1]
    _, r = s.json("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 5, "temperature": 0,
                                               "logit_bias": {str(cat): 100}, "logprobs": 0})
    _, detok = s.json("POST", "/detokenize", {"tokens": [cat]})
    check(r["choices"][0]["logprobs"]["tokens"] == [r["choices"][0]["logprobs"]["tokens"][0]] * 5
          and r["choices"][0]["logprobs"]["tokens"][0].strip() == detok["content"].strip(),
          "logit_bias +100 forces the token: %r" % r["choices"][0])
    status, r = s.json("POST", "/v1/completions", {"prompt": "Once", "logit_bias": {"99999999": 1}})
    check(status == 400 and r["error"]["param"] == "logit_bias", "a bias outside the vocabulary")

    # seed: the same seed gives the same sample; different seeds differ.
    def sampled(seed):
        _, r = s.json("POST", "/v1/chat/completions",
                      chat(temperature=1.0, max_tokens=30, seed=seed))
        return r["choices"][0]["message"]["content"]
    check(sampled(42) == sampled(42), "seed 42 twice: the same text")
    check(len({sampled(seed) for seed in range(1, 6)}) > 1, "different seeds, different texts")

    # n choices: choice i samples with seed + i, as a request with that seed would.
    body = chat(temperature=1.0, max_tokens=30, seed=7, n=3, logprobs=True)
    status, r = s.json("POST", "/v1/chat/completions", body)
    texts = [c["message"]["content"] for c in r.get("choices", [])]
    check(status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2]
          and texts == [sampled(7), sampled(8), sampled(9)]
          and r["usage"]["completion_tokens"] == sum(len(c["logprobs"]["content"])
                                                     for c in r["choices"]),
          "n=3: three choices, seeds 7, 8, 9: %d %r" % (status, r))
    status, _, events, done = s.stream(dict(body, stream=True, stream_options={"include_usage": True}))
    by_index = {}
    finishes = Counter()
    for ev in events:
        for c in ev.get("choices", []):
            by_index[c["index"]] = by_index.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["finish_reason"]:
                finishes[c["index"]] += 1
    usage = [ev["usage"] for ev in events if ev.get("usage")]
    check(done and [by_index.get(i) for i in range(3)] == texts and finishes == {0: 1, 1: 1, 2: 1}
          and usage and usage[0]["completion_tokens"] == r["usage"]["completion_tokens"],
          "n=3 streamed: each choice's text and one finish each: %r %r" % (by_index, finishes))
    status, r = s.json("POST", "/v1/completions",
                       {"prompt": "Once", "max_tokens": 4, "n": 2, "temperature": 0})
    check(status == 200 and len(r["choices"]) == 2
          and r["choices"][0]["text"] == r["choices"][1]["text"], "n=2 greedy completions agree")
    status, r = s.json("POST", "/v1/chat/completions", chat(max_tokens=2, n=40))
    check(status == 400 and r["error"]["param"] == "n" and "--parallel" in r["error"]["message"],
          "n beyond --parallel + --queue -> 400: %r" % r)

    # Fields that are not implemented: 400 naming them; the ignored ones pass.
    for extra, param in [({"n": 129}, "n"), ({"tools": [{"type": "function"}]}, "tools"),
                         ({"top_k": 5}, "top_k"), ({"response_format": {"type": "json_object"}},
                                                   "response_format")]:
        status, r = s.json("POST", "/v1/chat/completions", chat(max_tokens=2, **extra))
        check(status == 400 and r["error"]["param"] == param and param in r["error"]["message"],
              "%r -> 400 naming %s: %d %r" % (extra, param, status, r))
    status, r = s.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2, "echo": True})
    check(status == 400 and r["error"]["param"] == "echo", "echo: true -> 400")
    status, _ = s.json("POST", "/v1/chat/completions",
                       chat(max_tokens=2, user="u1", store=False, metadata={"a": "b"},
                            messages=[{"role": "user", "content": "Hi", "name": "ann"}]))
    check(status == 200, "the documented ignored fields pass: %d" % status)
    check(s.stop() == 0, "SIGTERM exits 0 (OpenAI fields)")


def main():
    t0 = time.time()
    request_log()
    models_and_alias()
    cors()
    port_and_host()
    sigint_drains_a_stream()
    openai_fields()
    if failures:
        print("%d checks failed" % len(failures))
        sys.exit(1)
    print("all manners checks passed in %.1f s" % (time.time() - t0))


main()
