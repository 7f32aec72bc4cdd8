#!/usr/bin/env python3
"""Limits and hostile clients against `starling serve` (issue 20, sections 2, 3 and 7), bounded in
time: every case finishes in seconds.

    python3 tests/server/limits_test.py BUILD/starling TEST_DATA_DIR

Body bombs (chunked, no length, gzip) are refused before they are buffered: the server's peak
resident memory (VmHWM) stays far below what it was sent. Slow-header connections are dropped
after --read-timeout while /health keeps answering; connections past --max-connections get 503
at once. Host and Origin checks, the chat page's security headers, the bearer scheme in any
case, Retry-After, /health's load, pipelining, and a second server on a busy port.
Exits non-zero with a message naming the failed check.
"""
import gzip
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import harness
from harness import Server, check, failures

STARLING = sys.argv[1]
DATA = sys.argv[2]
harness.STARLING = STARLING
MiB = 1 << 20


def peak_rss_mib(server):
    with open("/proc/%d/status" % server.proc.pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def raw(server, data, timeout=10):
    """Sends `data` on a fresh connection and returns all the server sends back until it closes
    (or `timeout`)."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    s.sendall(data)
    out = b""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionError):
        pass
    s.close()
    return out


def status_of(response):
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def flood(server, head, body_chunks, total, seconds=10):
    """Sends `head`, then chunks from `body_chunks()` until the server answers (its headers and
    then its whole Content-Length body: they may come in separate segments), `total` bytes
    were sent or `seconds` passed. Returns (the response so far, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.setblocking(False)
    pending, sent, response = head, 0, b""
    deadline = time.time() + seconds
    chunks = body_chunks()
    answered = False  # headers complete: stop sending, read the body
    try:
        while time.time() < deadline:
            want_write = [s] if (sent < total or pending) and not answered else []
            readable, writable, _ = select.select([s], want_write, [], 0.5)
            if readable:
                data = s.recv(65536)
                if not data:
                    break
                response += data
                if b"\r\n\r\n" in response:
                    answered = True
                    head_end = response.index(b"\r\n\r\n") + 4
                    length = 0
                    for line in response[:head_end].split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    if len(response) >= head_end + length:
                        break
            if writable:
                if not pending:
                    pending = next(chunks)
                n = s.send(pending)
                sent += n
                pending = pending[n:]
    except (BlockingIOError, ConnectionError):
        pass
    s.close()
    return response, sent


def body_limits():
    """Bodies are limited as they arrive and after inflation, before they are buffered."""
    s = Server("--max-body", "100000", "--api-key", "k", "--ctx", "512")
    auth = b"Authorization: Bearer k\r\n"
    base = peak_rss_mib(s)

    def chunked():
        piece = b"a" * 65536
        while True:
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    def plain():
        while True:
            yield b"a" * 65536

    cases = [
        ("chunked 256 MiB", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
         + b"Transfer-Encoding: chunked\r\n\r\n", chunked, 413),
        ("no length 256 MiB", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
         + b"\r\n", plain, 411),
        ("chunked to POST / (no key)", b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", chunked, 405),
        ("chunked to POST /health", b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", chunked, 405),
        ("chunked to an unknown path", b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", chunked, 404),
        ("10 GB Content-Length", b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
         + b"Content-Length: 10000000000\r\n\r\n", plain, 413),
    ]
    for name, head, chunks, want in cases:
        t0 = time.time()
        response, sent = flood(s, head, chunks, 256 * MiB)
        check(status_of(response) == want and b'"error"' in response,
              "%s -> %d: got %r" % (name, want, response[:120]))
        check(time.time() - t0 < 5, "%s answered at once (%.1f s)" % (name, time.time() - t0))
    # 64 MiB of JSON whitespace as 64 KiB of gzip.
    bomb = gzip.compress(b"{" + b" " * (64 * MiB) + b"}", 9)
    response = raw(s, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
                   + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)
    check(status_of(response) == 413 and b"after inflation" in response,
          "a gzip body inflating past --max-body -> 413: %r" % response[:200])
    grown = peak_rss_mib(s) - base
    check(grown < 40, "peak RSS grew by %.0f MiB under body bombs (want < 40)" % grown)
    print("body bombs: peak RSS %.0f MiB -> %.0f MiB" % (base, base + grown), flush=True)

    # Within the limits, every framing works: chunked, gzip, and both together.
    body = json.dumps({"content": "Once upon a time"}).encode()
    z = gzip.compress(body)
    for name, head, payload in [
            ("chunked", b"Transfer-Encoding: chunked\r\n",
             b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5])
                      for i in range(0, len(body), 5)) + b"0\r\n\r\n"),
            ("gzip", b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(z), z),
            ("plain", b"Content-Length: %d\r\n" % len(body), body)]:
        response = raw(s, b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + auth
                       + head + b"\r\n" + payload)
        check(status_of(response) == 200 and b'"tokens"' in response,
              "a %s body within the limit works: %r" % (name, response[:200]))

    # Expect: 100-continue with a body over the limit: the refusal instead of 100 Continue.
    response = raw(s, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
                   + b"Content-Length: 200000\r\nExpect: 100-continue\r\n\r\n", timeout=3)
    check(status_of(response) == 413, "100-continue over the limit -> 413: %r" % response[:80])

    # 100,001 tiny messages: refused before tokenizing, fast.
    many = {"messages": [{"role": "user", "content": "x"}] * 100001}
    s2 = Server("--max-body", str(8 * MiB), "--ctx", "512")
    t0 = time.time()
    status, r = s2.json("POST", "/v1/chat/completions", many)
    check(status == 400 and r["error"]["code"] == "context_length_exceeded"
          and time.time() - t0 < 6,  # ~1 s idle; tokenizing them all would take far longer
          "100,001 messages -> 400 in %.2f s: %r" % (time.time() - t0, r))
    status, r = s2.json("POST", "/v1/completions", {"prompt": "a " * (2 * MiB)})
    check(status == 400 and r["error"]["code"] == "context_length_exceeded",
          "a 4 MiB prompt -> 400 before tokenizing: %r" % r)
    check(s2.stop() == 0, "SIGTERM exits 0 (8 MiB server)")

    bad = subprocess.run([STARLING, "serve", "--max-body", "-1", "--port", "0"],
                         capture_output=True, text=True, timeout=30)
    check(bad.returncode != 0 and "--max-body" in bad.stderr,
          "--max-body -1 is an error: %d %r" % (bad.returncode, bad.stderr))
    check(s.json("GET", "/health")[0] == 200, "still serving after the body bombs")
    check(s.stop() == 0, "SIGTERM exits 0 (body limits)")


def slow_clients():
    """100 slow-header connections are dropped after --read-timeout; /health keeps answering."""
    s = Server("--read-timeout", "2")
    conns = []
    for _ in range(100):
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        conns.append(c)
    stop = threading.Event()

    def trickle():  # one more header line every 0.5 s, never the blank line
        while not stop.wait(0.5):
            for c in conns:
                try:
                    c.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    latencies = []
    for _ in range(5):
        t0 = time.time()
        status, health = s.json("GET", "/health")
        latencies.append(time.time() - t0)
        check(status == 200, "/health answers beside 100 slow connections")
        time.sleep(0.1)
    print("/health with 100 slow-header connections: max %.1f ms"
          % (1000 * max(latencies)), flush=True)
    # Milliseconds idle; a server blocked by the slow connections would wait out their read
    # timeout (seconds). 1.5 s leaves room for a loaded CI machine.
    check(max(latencies) < 1.5, "/health latency %r s" % latencies)
    time.sleep(3)  # past the read timeout
    dropped = 0
    for c in conns:
        c.settimeout(2)
        try:
            data = c.recv(4096)
            dropped += data == b"" or status_of(data) == 408
        except OSError:
            dropped += 1
    stop.set()
    check(dropped == 100, "slow-header connections dropped after --read-timeout: %d of 100"
          % dropped)
    for c in conns:
        c.close()
    # A connection that sends nothing is closed too.
    idle = socket.create_connection(("127.0.0.1", s.port))
    idle.settimeout(5)
    t0 = time.time()
    check(idle.recv(1) == b"" and time.time() - t0 < 4, "an idle connection is closed")
    idle.close()
    check(s.stop() == 0, "SIGTERM exits 0 (slow clients)")

    # Past --max-connections: 503 with Retry-After at once, without waiting for the request.
    s = Server("--max-connections", "4")
    held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
    time.sleep(0.2)
    response = raw(s, b"", timeout=3)
    check(status_of(response) == 503 and b"Retry-After: 1" in response,
          "a connection past --max-connections -> 503 with Retry-After: %r" % response[:200])
    for c in held:
        c.close()
    time.sleep(0.2)
    check(s.json("GET", "/health")[0] == 200, "answers again once connections close")
    check(s.stop() == 0, "SIGTERM exits 0 (connection cap)")


def write_nan_reward_model(directory):
    """tiny-rm's rm-a with every weight NaN (entries kept 64-byte aligned, as torch.save does)."""
    src = DATA + "/tiny-rm/rm-a"
    os.makedirs(directory)
    for name in os.listdir(src):
        if name != "pytorch_model.bin":
            with open(os.path.join(src, name), "rb") as f, \
                    open(os.path.join(directory, name), "wb") as g:
                g.write(f.read())
    with zipfile.ZipFile(src + "/pytorch_model.bin") as zin, \
            zipfile.ZipFile(directory + "/pytorch_model.bin", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/data/" in info.filename:
                data = b"\xff" * len(data)  # NaN in F32, F16 and BF16
            out = zipfile.ZipInfo(info.filename, info.date_time)
            offset = zout.fp.tell() + 30 + len(info.filename.encode())
            pad = -(offset + 4) % 64
            out.extra = struct.pack("<HH", 0x4746, pad) + b"Z" * pad
            zout.writestr(out, data)


def web_hardening():
    s = Server("--api-key", "k", "--rm", DATA + "/tiny-rm/rm-a", "--parallel", "1",
               "--queue", "0")
    # Host: the loopback names pass; another name (DNS rebinding) does not.
    for host, want in [("127.0.0.1:%d" % s.port, 200), ("localhost", 200), ("[::1]:1", 200),
                       ("evil.example", 403), ("evil.example:%d" % s.port, 403)]:
        status, raw_body = s.request("GET", "/health", headers={"Host": host})
        check(status == want, "Host %s -> %d, got %d %r" % (host, want, status, raw_body[:100]))
    # CORS stays closed: a request from another origin is refused; the page's own passes.
    own = "http://127.0.0.1:%d" % s.port
    status, _ = s.request("POST", "/tokenize", {"content": "x"},
                          {"Origin": "http://evil.example", "Authorization": "Bearer k"})
    check(status == 403, "cross-origin POST -> 403, got %d" % status)
    status, raw_body = s.request("POST", "/tokenize", {"content": "x"},
                                 {"Origin": own, "Authorization": "Bearer k"})
    check(status == 200, "same-origin POST -> 200, got %d %r" % (status, raw_body[:100]))
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("OPTIONS", "/v1/chat/completions",
                 headers={"Origin": "http://evil.example",
                          "Access-Control-Request-Method": "POST"})
    res = conn.getresponse()
    res.read()
    check(res.status >= 400 and res.getheader("Access-Control-Allow-Origin") is None,
          "a CORS preflight gets no allowance: %d" % res.status)
    # The chat page: its inline script runs by nonce; nothing else, no framing.
    conn.request("GET", "/")
    res = conn.getresponse()
    page = res.read().decode()
    csp = res.getheader("Content-Security-Policy") or ""
    nonce = csp.split("'nonce-")[1].split("'")[0] if "'nonce-" in csp else "?"
    check("frame-ancestors 'none'" in csp and "default-src 'none'" in csp
          and ('<script nonce="%s">' % nonce) in page and "<script>" not in page,
          "chat page CSP with a nonce on its script: %r" % csp)
    check(res.getheader("X-Content-Type-Options") == "nosniff", "X-Content-Type-Options")
    conn.close()
    # The bearer scheme in any case.
    for scheme in ["bearer", "BEARER", "Bearer"]:
        status, _ = s.request("GET", "/v1/models", headers={"Authorization": scheme + " k"})
        check(status == 200, "Authorization: %s KEY -> 200, got %d" % (scheme, status))
    # /health reports the load; a 503 carries Retry-After.
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Authorization": "Bearer k"},
                 body=json.dumps({"prompt": "Once", "max_tokens": 400, "stream": True}).encode())
    res = conn.getresponse()
    res.readline()
    status, health = s.json("GET", "/health")
    check(status == 200 and health.get("busy_slots") == 1 and health.get("queued") == 0,
          "/health reports busy slots and the queue: %r" % health)
    c2 = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    c2.request("POST", "/v1/completions", headers={"Authorization": "Bearer k"},
               body=json.dumps({"prompt": "x", "max_tokens": 2}).encode())
    r2 = c2.getresponse()
    r2.read()
    check(r2.status == 503 and r2.getheader("Retry-After") == "1",
          "503 (busy) carries Retry-After: %d %r" % (r2.status, r2.getheader("Retry-After")))
    conn.close()
    c2.close()
    # /v1/rewards: a conversation with no user or assistant turn is refused.
    auth = {"Authorization": "Bearer k"}
    status, r = s.json("POST", "/v1/rewards",
                       {"messages": [{"role": "system", "content": "Be nice."}]}, auth)
    check(status == 400 and r["error"]["param"] == "messages",
          "a conversation of a system message alone -> 400: %r" % r)
    # Pipelining: two requests in one write, two answers in order.
    both = raw(s, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
               b"Connection: close\r\n\r\n", timeout=5)
    check(both.count(b"HTTP/1.1 200") == 2 and both.index(b'"status"') < both.index(b'"data"'),
          "pipelined requests both answered, in order: %r" % both[:300])
    # A second server on the busy port fails with a clear error.
    second = subprocess.run([STARLING, "serve", "--port", str(s.port)], capture_output=True,
                            text=True, timeout=60)
    check(second.returncode == 1 and ("cannot listen on 127.0.0.1:%d" % s.port) in second.stderr,
          "a second server on a busy port: %d %r" % (second.returncode, second.stderr[-200:]))
    check(s.stop() == 0, "SIGTERM exits 0 (web hardening)")

    # --allowed-host adds a name.
    s = Server("--allowed-host", "chat.example")
    check(s.request("GET", "/health", headers={"Host": "chat.example:8080"})[0] == 200,
          "--allowed-host admits its name")
    check(s.request("GET", "/health", headers={"Host": "other.example"})[0] == 403,
          "--allowed-host admits only its name")
    check(s.stop() == 0, "SIGTERM exits 0 (allowed host)")

    # A reward model that fails (NaN weights): 500, not 400, and the server goes on.
    with tempfile.TemporaryDirectory() as tmp:
        write_nan_reward_model(tmp + "/nan-rm")
        s = Server("--rm", tmp + "/nan-rm")
        conversation = [{"role": "user", "content": "Hello?"},
                        {"role": "assistant", "content": "Hi"}]
        status, r = s.json("POST", "/v1/rewards", {"messages": conversation})
        check(status == 500 and r["error"]["code"] == "reward_failed",
              "a failing reward model -> 500: %d %r" % (status, r))
        check(s.json("GET", "/health")[0] == 200, "still serving after a failed reward")
        check(s.stop() == 0, "SIGTERM exits 0 (NaN reward model)")


def main():
    t0 = time.time()
    body_limits()
    slow_clients()
    web_hardening()
    if failures:
        print("%d checks failed" % len(failures))
        sys.exit(1)
    print("all limit checks passed in %.1f s" % (time.time() - t0))


main()
