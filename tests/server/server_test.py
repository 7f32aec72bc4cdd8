#!/usr/bin/env python3
"""End-to-end test of `starling serve` over real HTTP on loopback (Python standard library only).

    python3 tests/server/server_test.py BUILD/starling TEST_DATA_DIR

Starts servers on free ports with the embedded stories260K model (and the tiny reward model),
checks the OpenAI endpoints (non-streaming, streaming, concurrent batched requests, cancellation,
queue limits, errors, API keys, rewards), that a request whose generation fails (a model with NaN
logits) gets an error while the server keeps serving, and that SIGTERM ends the server with exit
code 0.
Exits non-zero with a message naming the failed check.
"""
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import Server, check, failures, read_stream

STARLING = sys.argv[1]
DATA = sys.argv[2]
harness.STARLING = STARLING


def chat(content, **kw):
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0}
    body.update(kw)
    return body


def stream_text(events):
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if e.get("choices"))


def write_nan_model(directory, tensor_name, keep_rows=()):
    """Copies tiny-mistral to `directory` with the tensor `tensor_name` all NaN but for the rows
    `keep_rows`. Logits that become NaN make the sampler throw (inside the server's engine thread)."""
    shutil.copytree(DATA + "/tiny-mistral/hf", directory)
    nan = {"F32": b"\x00\x00\xc0\x7f", "BF16": b"\xc0\x7f", "F16": b"\x00\x7e"}
    written = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(directory, name), "r+b") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            tensor = json.loads(f.read(header_len)).get(tensor_name)
            if not tensor:
                continue
            begin, end = tensor["data_offsets"]
            value = nan[tensor["dtype"]]
            row = len(value) * (tensor["shape"][1] if len(tensor["shape"]) == 2 else 1)
            for offset in range(begin, end, row):
                if (offset - begin) // row not in keep_rows:
                    f.seek(8 + header_len + offset)
                    f.write(value * (row // len(value)))
            written += 1
    assert written == 1, tensor_name + " not found in " + directory


def check_failed_generation():
    """A generation that fails inside the engine ends only its request, with OpenAI's error."""
    with tempfile.TemporaryDirectory() as tmp:
        # Final norm NaN: every logit is NaN, from the prompt's on (fails as the slot starts).
        write_nan_model(tmp + "/nan-model", "model.norm.weight")
        s = Server("-m", tmp + "/nan-model", "--parallel", "2", "--ctx", "256")
        for endpoint, body in [("/v1/chat/completions", chat("Hello", max_tokens=8)),
                               ("/v1/completions", {"prompt": "Hello", "max_tokens": 8})]:
            status, raw = s.request("POST", endpoint, body)
            err = json.loads(raw).get("error", {})
            check(status == 500 and err.get("type") == "server_error"
                  and err.get("code") == "generation_failed" and "NaN" in err.get("message", ""),
                  "NaN logits -> 500 in OpenAI's shape on %s: %d %r" % (endpoint, status, raw))
        status, _, events, done = s.stream(chat("Hello", max_tokens=8, stream=True))
        check(status == 200 and done and events and "error" in events[-1]
              and "NaN" in events[-1]["error"]["message"],
              "NaN logits in a stream -> a final error event, then [DONE]: %r" % events)
        # Two at once (batched in one decode step), then the server still answers.
        results = [None] * 2

        def worker(i):
            results[i] = s.request("POST", "/v1/chat/completions", chat("Hi", max_tokens=4))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(all(r is not None and r[0] == 500 for r in results),
              "concurrent failing requests each get 500: %r" % results)
        check(s.proc.poll() is None and s.json("GET", "/health")[0] == 200,
              "still serving after failed generations")
        status, tok = s.json("POST", "/tokenize", {"content": "Hello"})
        check(status == 200 and tok["tokens"], "other endpoints still work: %r" % tok)
        check(s.stop() == 0, "SIGTERM exits 0 (NaN model)")

        # Embeddings NaN but for the prompt's tokens: the prompt runs, and the first generated
        # token outside it makes a batched decode step give NaN logits to that request alone.
        prompt = "Once upon a time"
        ids = subprocess.run([STARLING, "tokenize", "--tokenizer", DATA + "/tiny-mistral/hf",
                              "--ids-only", prompt], capture_output=True, text=True, check=True).stdout
        write_nan_model(tmp + "/nan-embed", "model.embed_tokens.weight",
                        {int(i) for i in ids.split()})
        s = Server("-m", tmp + "/nan-embed", "--parallel", "2", "--ctx", "256")
        failing = {}

        def stream_worker():
            failing["result"] = s.stream(chat(prompt, max_tokens=100, stream=True), raw=True)

        t = threading.Thread(target=stream_worker)
        t.start()
        status, r = s.json("POST", "/v1/completions",
                           {"prompt": prompt, "max_tokens": 1, "temperature": 0})
        t.join()
        check(status == 200 and r["choices"][0]["finish_reason"] == "length",
              "a request beside a failing one completes: %r" % r)
        status, _, events, done = failing["result"]
        check(status == 200 and done and events and "error" in events[-1]
              and events[-1]["error"]["code"] == "generation_failed",
              "a stream whose decode step gives NaN ends with an error event, then [DONE]: %r"
              % events[-3:])
        status, raw = s.request("POST", "/v1/completions",
                                {"prompt": prompt, "max_tokens": 100, "temperature": 0})
        check(status == 500 and json.loads(raw)["error"]["code"] == "generation_failed",
              "NaN in a decode step -> 500: %d %r" % (status, raw))
        check(s.json("GET", "/health")[0] == 200, "still serving after a failed decode step")
        check(s.stop() == 0, "SIGTERM exits 0 (NaN embeddings)")


def open_stream(s, body):
    """Starts a streaming completion and reads its first event; returns the response."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
    res = conn.getresponse()
    check(res.status == 200 and res.readline().startswith(b"data: "), "stream started")
    return res


def check_shutdown():
    """SIGTERM with a quantized model (its compute threads start while it loads) drains streams."""
    with tempfile.TemporaryDirectory() as tmp:
        q8 = tmp + "/q8.gguf"
        subprocess.run([STARLING, "quantize", DATA + "/tiny-mistral/model-f32.gguf", q8,
                        "--type", "q8_0"], check=True, capture_output=True)
        long = {"prompt": "Once upon a time", "max_tokens": 2000, "seed": 1, "stream": True}

        # A stream in flight at SIGTERM finishes; meanwhile new requests get 503.
        s = Server("-m", q8, "--ctx", "4096", "--drain-timeout", "60")
        res = open_stream(s, long)
        s.proc.send_signal(15)
        status, raw = 0, b""
        deadline = time.time() + 10
        while status != 503 and time.time() < deadline:
            try:
                status, raw = s.request("GET", "/health")
            except ConnectionError:  # the server died of the signal
                break
        check(status == 503 and json.loads(raw).get("error", {}).get("code") == "shutting_down",
              "a request during shutdown gets 503 shutting down: %d %r" % (status, raw))
        events, done, complete = read_stream(res)
        finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices")]
        check(complete and done and finish and finish[-1] in ("length", "stop"),
              "a stream in flight at SIGTERM finishes (finish_reason, [DONE]): %r" % finish[-3:])
        check(s.proc.wait(timeout=60) == 0, "SIGTERM exits 0 with a quantized model")

        # Past the drain timeout, a stream ends with finish_reason "cancelled" and [DONE].
        s = Server("-m", q8, "--ctx", "4096", "--drain-timeout", "0")
        res = open_stream(s, dict(long, max_tokens=4000))
        s.proc.send_signal(15)
        events, done, complete = read_stream(res)
        finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices")]
        check(complete and done and finish and finish[-1] == "cancelled",
              "a stream cut by shutdown says so: %r, [DONE] %s" % (finish[-3:], done))
        check(s.proc.wait(timeout=60) == 0, "SIGTERM exits 0 after cancelling a stream")

        # SIGTERM right after the start line, before the accept loop may run: still exit 0.
        for _ in range(5):
            check(Server("-m", q8).stop() == 0, "SIGTERM at once after starting exits 0")

        # Other subcommands still end by the signal, as without the signal thread.
        chat_proc = subprocess.Popen([STARLING, "chat", "-m", q8, "--template", "openchat"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        chat_proc.send_signal(15)
        check(chat_proc.wait(timeout=30) == -15, "SIGTERM still ends `starling chat`")
        chat_proc.stdin.close()

        # An address that is not this machine's (TEST-NET-1): a clear error, not a signal.
        bad = subprocess.run([STARLING, "serve", "-m", q8, "--host", "192.0.2.1", "--port", "0"],
                             capture_output=True, text=True, timeout=60)
        check(bad.returncode == 1 and "cannot listen on 192.0.2.1:0" in bad.stderr
              and "signal" not in bad.stderr, "a failed bind: %r" % bad.stderr)


def main():
    # stories260K (harness.Server's default), a text model with no chat template.
    s = Server("--parallel", "4", "--ctx", "512")
    # Health and models.
    status, health = s.json("GET", "/health")
    check(status == 200 and health["status"] == "ok", "GET /health")
    status, models = s.json("GET", "/v1/models")
    check(status == 200 and models["data"][0]["id"].startswith("stories260K"), "GET /v1/models")

    # Non-streaming chat; usage.prompt_tokens is the rendered prompt's length (this model has no
    # template, so the prompt is BOS + the text: /tokenize gives the same ids).
    status, r = s.json("POST", "/v1/chat/completions", chat("Once upon a time", max_tokens=40))
    check(status == 200, "chat completion status %d" % status)
    text = r["choices"][0]["message"]["content"]
    check(len(text) > 20 and r["choices"][0]["finish_reason"] == "length",
          "chat completion text and finish_reason: %r" % r)
    _, tok = s.json("POST", "/tokenize", {"content": "Once upon a time"})
    check(r["usage"]["prompt_tokens"] == len(tok["tokens"]) and r["usage"]["completion_tokens"] == 40,
          "usage %r vs tokenize %r" % (r["usage"], tok))
    _, detok = s.json("POST", "/detokenize", {"tokens": tok["tokens"]})
    check(detok["content"] == "Once upon a time", "detokenize: %r" % detok)

    # The same greedy continuation as the CLI.
    cli = subprocess.run([STARLING, "generate", "-p", "Once upon a time", "-n", "40", "--temp", "0"],
                         capture_output=True, text=True, check=True).stdout
    check(cli.startswith("Once upon a time" + text) or cli.endswith(text) or text in cli,
          "server text %r not in CLI output %r" % (text, cli))

    # Streaming: SSE chunks, deltas concatenate to the same text, then [DONE].
    status, ctype, events, done = s.stream(chat("Once upon a time", max_tokens=40, stream=True))
    check(status == 200 and ctype.startswith("text/event-stream"), "stream status/content type")
    check(done and events[0]["choices"][0]["delta"].get("role") == "assistant", "stream framing")
    check(stream_text(events) == text, "streamed text %r != %r" % (stream_text(events), text))
    check(events[-1]["choices"][0]["finish_reason"] == "length", "stream finish_reason")
    check(len([e for e in events if e["choices"][0]["delta"].get("content")]) > 5,
          "stream arrives in many chunks")

    # Stop strings and /v1/completions.
    status, r = s.json("POST", "/v1/completions",
                       {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0,
                        "stop": ["Lily"]})
    check(status == 200 and "Lily" not in r["choices"][0]["text"]
          and r["choices"][0]["finish_reason"] == "stop", "completion with stop: %r" % r)

    # Concurrency: 8 streaming requests at once over 4 slots (batched decode); greedy results
    # equal the single-request result exactly.
    results = [None] * 8

    def worker(i):
        results[i] = s.stream(chat("Once upon a time", max_tokens=40, stream=True))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(all(r is not None and r[0] == 200 and stream_text(r[2]) == text for r in results),
          "concurrent batched streams equal the single stream")
    # Repeated prompts reuse a slot's cached prefix (with the same results, as checked above).
    _, health = s.json("GET", "/health")
    check(health["prompt_tokens_reused"] > 0 and health["decode_steps"] > 0,
          "prefix reuse and batching visible in /health: %r" % health)

    # Errors: OpenAI-style JSON, right status, and the server keeps serving.
    cases = [
        (b"{not json", 400, None),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        (chat("x", max_tokens=-5), 400, "max_tokens"),
        (chat("x", max_tokens=100000), 400, "max_tokens"),
        (chat("x", temperature="hot"), 400, "temperature"),
        (chat("x", top_k=5), 400, "top_k"),  # not implemented: refused by name
    ]
    for body, want, param in cases:
        status, raw = s.request("POST", "/v1/chat/completions", body)
        err = json.loads(raw).get("error", {})
        check(status == want and err.get("message") and (param is None or err.get("param") == param),
              "error case %r -> %d %r" % (body, status, err))
    status, _ = s.request("GET", "/no/such/path")
    check(status == 404, "unknown path 404")
    check(s.json("GET", "/health")[0] == 200, "still serving after errors")
    check(s.json("POST", "/v1/rewards", {"messages": [{"role": "user", "content": "x"}]})[0] == 404,
          "rewards without --rm is 404")
    check(s.stop() == 0, "SIGTERM exits 0")

    # One slot, no queue: a second request while the first streams gets 503; a client that
    # disconnects mid-stream frees the slot at once.
    s = Server("--parallel", "1", "--queue", "0", "--ctx", "2048", "--max-body", "2000")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/chat/completions",
                 body=json.dumps(chat("Once", max_tokens=1800, stream=True, temperature=1)).encode())
    res = conn.getresponse()
    res.readline()  # the first event: the request holds the slot
    status, raw = s.request("POST", "/v1/chat/completions", chat("x", max_tokens=5))
    check(status == 503 and "busy" in json.loads(raw)["error"]["message"], "503 when full: %r" % raw)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    ok = False
    deadline = time.time() + 10
    while time.time() < deadline and not ok:
        status, _ = s.request("POST", "/v1/chat/completions", chat("x", max_tokens=5))
        ok = status == 200
        if not ok:
            time.sleep(0.05)
    check(ok, "slot freed after the client disconnected")
    status, raw = s.request("POST", "/v1/chat/completions", b"{" + b" " * 5000 + b"}")
    check(status == 413 and "error" in json.loads(raw), "oversized body -> 413: %d %r" % (status, raw[:200]))
    check(s.stop() == 0, "SIGTERM exits 0 (second server)")

    # API key and rewards.
    s = Server("--api-key", "sekrit", "--rm", DATA + "/tiny-rm/rm-a")
    status, raw = s.request("GET", "/v1/models")
    check(status == 401 and json.loads(raw)["error"]["type"] == "authentication_error", "401 without key")
    check(s.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401,
          "401 with a wrong key")
    auth = {"Authorization": "Bearer sekrit"}
    check(s.request("GET", "/v1/models", headers=auth)[0] == 200, "200 with the key")
    check(s.request("GET", "/")[0] == 200, "the page needs no key")
    conversation = [{"role": "user", "content": "Hello?"},
                    {"role": "assistant", "content": "Hi, how can I help you?"}]
    status, r = s.json("POST", "/v1/rewards", {"conversations": [conversation, conversation]}, auth)
    cli = json.loads(subprocess.run(
        [STARLING, "score", "-m", DATA + "/tiny-rm/rm-a", "--json", "--prompt", "Hello?",
         "--response", "Hi, how can I help you?"], capture_output=True, text=True, check=True).stdout)
    check(status == 200 and len(r["data"]) == 2 and r["data"][0]["reward"] == cli["reward"]
          and r["data"][1]["reward"] == cli["reward"], "rewards over HTTP equal the CLI: %r %r" % (r, cli))
    check(s.stop() == 0, "SIGTERM exits 0 (third server)")

    check_failed_generation()
    check_shutdown()

    if failures:
        print("%d checks failed" % len(failures))
        sys.exit(1)
    print("all server checks passed")


main()
