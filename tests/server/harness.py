"""The pieces the server's end-to-end tests share: a `starling serve` process on a free port
and a check that records failures. Python standard library only."""
import http.client
import json
import os
import re
import subprocess
import threading
import time

STARLING = None  # the starling binary; set by the test script
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


# stories260K, a story model with no chat template, which writes as long as asked: what most
# tests want. The default model of `serve` (the embedded tiny-chat) answers in a few tokens.
STORIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models",
                       "stories260K.gguf")


class Server:
    def __init__(self, *args, port="0", default_model=False):
        if not default_model and "-m" not in args:
            args = ("-m", STORIES) + args
        self.proc = subprocess.Popen([STARLING, "serve", "--port", port, *args],
                                     stderr=subprocess.PIPE, text=True)
        self.port = None
        self.lines = []  # every line of its stderr (the log), kept by a reader thread
        self.lines_lock = threading.Lock()
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"on http://(?:\[[^\]]*\]|[^:/\s]+):(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit("server did not start: %s\n%s" % (" ".join(args), "".join(self.lines)))
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.proc.stderr:
            with self.lines_lock:
                self.lines.append(line)

    def log(self, wait_for=None, timeout=5):
        """The log so far; with `wait_for`, first waits up to `timeout` for a line containing it
        (a request's line is written after its response)."""
        deadline = time.time() + timeout
        while True:
            with self.lines_lock:
                lines = list(self.lines)
            if wait_for is None or any(wait_for in l for l in lines) or time.time() > deadline:
                return lines
            time.sleep(0.02)

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        res = conn.getresponse()
        raw = res.read()
        conn.close()
        return res.status, raw

    def json(self, method, path, body=None, headers=None):
        status, raw = self.request(method, path, body, headers)
        return status, json.loads(raw)

    def stream(self, body, headers=None, raw=False):
        """Streams a chat completion; returns (status, content type, list of parsed events,
        saw [DONE]). `raw`: a completion (/v1/completions) from the message's content."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        path = "/v1/chat/completions"
        if raw:
            path = "/v1/completions"
            body = dict(body, prompt=body["messages"][0]["content"])
            del body["messages"]
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers or {})
        res = conn.getresponse()
        events, done, _ = read_stream(res)
        conn.close()
        return res.status, res.getheader("Content-Type"), events, done

    def stop(self):
        self.proc.send_signal(15)
        return self.proc.wait(timeout=30)


def read_stream(res):
    """The rest of a stream: (parsed events, saw [DONE], ended with the chunked terminator)."""
    events, done = [], False
    try:
        for line in res:
            line = line.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
        complete = True
    except (http.client.IncompleteRead, ConnectionError):  # cut short, e.g. the server died
        complete = False
    return events, done, complete
