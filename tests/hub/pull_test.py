"""`starling pull` and `-m ORG/NAME` against a stand-in for the Hugging Face Hub on 127.0.0.1:
the same API shape (GET /api/models/{repo}/revision/{rev}?blobs=true, HEAD and GET
/{repo}/resolve/{commit}/{file}, LFS files redirected to a second host, the "CDN", with
X-Linked-Etag = sha256), plus faults: a connection cut mid-file, corrupt bytes, a gated repo,
a server error, a missing repo, an unsafe file name. Python standard library only.

usage: pull_test.py STARLING TESTDATA"""
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse

STARLING, DATA = sys.argv[1], sys.argv[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret"
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name):
    return name.endswith((".safetensors", ".model", ".bin", ".gguf"))


# The repositories: name -> {file: bytes}.
tiny_dir = os.path.join(DATA, "tiny-mistral", "hf")
TINY = {}
for name in sorted(os.listdir(tiny_dir)):
    with open(os.path.join(tiny_dir, name), "rb") as f:
        TINY[name] = f.read()
TINY["sub/dir/notes.txt"] = b"a file in a subdirectory\n"
TINY["pytorch_model.bin"] = b"duplicate weights the default selection skips"
REPOS = {
    "org/tiny": TINY,
    "org/flaky": {"config.json": TINY["config.json"], "big.safetensors": bytes(range(256)) * 4096},
    "org/corrupt": {"config.json": TINY["config.json"], "w.safetensors": b"x" * 100000},
    "org/gated": {"config.json": TINY["config.json"], "w.safetensors": b"g" * 5000},
    "org/evil": {"../escape.txt": b"no"},
}
state = {"cdn_requests": [], "cdn_auth": [], "hub_auth": [], "cut_once": {"org/flaky"}}
lock = threading.Lock()


class Hub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def authorized(self, repo):
        auth = self.headers.get("Authorization")
        with lock:
            state["hub_auth"].append(auth)
        return repo != "org/gated" or auth == "Bearer " + TOKEN

    def do_GET(self, head=False):
        path = urllib.parse.urlsplit(self.path).path
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        if path.startswith("/api/models/"):
            # /api/models/ORG/NAME/revision/REV
            repo, rev = "/".join(parts[3:5]), parts[6] if len(parts) > 6 else ""
            if repo == "org/broken":
                return self.send(500, b'{"error":"boom"}')
            if repo not in REPOS or rev not in ("main", "v1", COMMIT):
                return self.send(404, b'{"error":"Repository not found"}')
            if not self.authorized(repo):
                return self.send(401, b'{"error":"Access to this model is restricted"}')
            siblings = []
            for name, data in REPOS[repo].items():
                s = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
                if is_lfs(name):
                    s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                siblings.append(s)
            body = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
            return self.send(200, body, {"Content-Type": "application/json"})
        # /ORG/NAME/resolve/COMMIT/FILE...
        if len(parts) < 6 or parts[3] != "resolve":
            return self.send(404)
        repo, file = "/".join(parts[1:3]), "/".join(parts[5:])
        if repo not in REPOS or file not in REPOS[repo] or parts[4] != COMMIT:
            return self.send(404, b"Entry not found")
        if not self.authorized(repo):
            return self.send(401, b"restricted")
        data = REPOS[repo][file]
        headers = {"X-Repo-Commit": COMMIT}
        if is_lfs(file):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": '"%s"' % sha, "X-Linked-Size": str(len(data)),
                            "ETag": '"%s"' % git_blob_sha1(b"pointer"),
                            "Location": "http://127.0.0.1:%d/cdn/%s/%s" % (cdn.server_port,
                                                                          repo, sha)})
            return self.send(302, b"", headers, head)
        headers["ETag"] = '"%s"' % git_blob_sha1(data)
        self.send(200, data, headers, head)

    def do_HEAD(self):
        self.do_GET(head=True)


class Cdn(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        repo, sha = "/".join(parts[2:4]), parts[4]
        with lock:
            state["cdn_requests"].append((repo, self.headers.get("Range")))
            state["cdn_auth"].append(self.headers.get("Authorization"))
        data = next(d for n, d in REPOS[repo].items() if hashlib.sha256(d).hexdigest() == sha)
        if repo == "org/corrupt":
            data = data[:-1] + b"y"
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start, status = int(rng[6:-1]), 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.end_headers()
        body = data[start:]
        with lock:
            cut = repo in state["cut_once"]
            state["cut_once"].discard(repo)
        if cut:  # the connection drops after a third of the file
            self.wfile.write(body[:len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
for s in (hub, cdn):
    threading.Thread(target=s.serve_forever, daemon=True).start()

tmp = tempfile.mkdtemp(prefix="starling_pull_")


def run(*args, home="hf", token=None, endpoint=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING"))}
    env["HF_HOME"] = os.path.join(tmp, home)
    env["HF_ENDPOINT"] = endpoint or "http://127.0.0.1:%d" % hub.server_port
    if token:
        env["HF_TOKEN"] = token
    p = subprocess.run([STARLING, *args], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def repo_dir(repo, home="hf"):
    return os.path.join(tmp, home, "hub", "models--" + repo.replace("/", "--"))


try:
    # A whole repository: the cache layout huggingface_hub writes.
    rc, out, err = run("pull", "org/tiny")
    check(rc == 0, "pull org/tiny: rc %d: %s" % (rc, err))
    snapshot = os.path.join(repo_dir("org/tiny"), "snapshots", COMMIT)
    check(out.strip() == snapshot, "pull prints the snapshot: %r" % out)
    with open(os.path.join(repo_dir("org/tiny"), "refs", "main")) as f:
        check(f.read() == COMMIT, "refs/main holds the commit")
    for name, data in TINY.items():
        link = os.path.join(snapshot, name)
        if name == "pytorch_model.bin":
            check(not os.path.lexists(link), "the duplicate .bin weights are skipped by default")
            continue
        check(os.path.islink(link), name + " is a symlink")
        etag = hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_sha1(data)
        expected = "../" * name.count("/") + "../../blobs/" + etag
        check(os.path.islink(link) and os.readlink(link) == expected,
              "%s -> %s" % (name, os.readlink(link) if os.path.islink(link) else None))
        with open(link, "rb") as f:
            check(f.read() == data, name + " has the hub's bytes")
    check("skipped 1 file" in err, "the skipped file is reported: " + err)
    check(all(a is None for a in state["cdn_auth"]), "no token goes to the CDN")
    check("[9/10] " in err or "[10/10] " in err, "per-file progress lines: " + err)

    # Again: nothing is downloaded.
    before = len(state["cdn_requests"])
    rc, out, err = run("pull", "org/tiny")
    check(rc == 0 and err.count("already in the cache") == 10, "a second pull reuses: " + err)
    check(len(state["cdn_requests"]) == before, "a second pull downloads nothing")

    # -m ORG/NAME runs what was pulled, as the directory itself does.
    rc, by_id, err = run("generate", "-m", "org/tiny", "-p", "Hello", "-n", "8", "--temp", "0")
    check(rc == 0, "generate -m org/tiny: " + err)
    rc, by_path, _ = run("generate", "-m", tiny_dir, "-p", "Hello", "-n", "8", "--temp", "0")
    check(by_id == by_path and by_id != "", "same text by id and by path: %r %r" % (by_id, by_path))
    rc, out, err = run("info", "-m", "org/tiny@main")
    check(rc == 0 and snapshot in out, "info -m org/tiny@main: " + out + err)
    rc, out, err = run("tokenize", "--tokenizer", "org/tiny", "Hello")
    check(rc == 0, "tokenize --tokenizer org/tiny: " + err)
    rc, out, err = run("info", "-m", "org/absent")
    check(rc == 1 and "looked at" in err and "starling pull org/absent" in err
          and "models--org--absent/refs/main" in err, "a missing model says where it looked: " + err)

    # A revision other than main gets its own ref.
    rc, out, err = run("pull", "org/tiny", "--revision", "v1", "--include", "*.json")
    check(rc == 0 and os.path.exists(os.path.join(repo_dir("org/tiny"), "refs", "v1")),
          "--revision v1 writes refs/v1: " + err)

    # --include takes only what matches, into a fresh cache.
    rc, out, err = run("pull", "org/tiny", "--include", "*.json", "--include", "sub/*", home="inc")
    names = sorted(os.path.relpath(os.path.join(d, f), out.strip())
                   for d, _, fs in os.walk(out.strip()) for f in fs)
    check(rc == 0 and names == sorted(n for n in TINY if n.endswith(".json") or
                                      n.startswith("sub/")), "--include: %s %s" % (names, err))
    rc, out, err = run("pull", "org/tiny", "--include", "*.nothing")
    check(rc == 1 and "no file matches --include" in err, "--include matching nothing: " + err)

    # A connection cut mid-file: a clear error, the part kept, the next pull resumes it.
    rc, out, err = run("pull", "org/flaky", home="flaky")
    big = REPOS["org/flaky"]["big.safetensors"]
    partial = os.path.join(repo_dir("org/flaky", "flaky"), "blobs",
                           hashlib.sha256(big).hexdigest() + ".incomplete")
    check(rc == 1 and "run the same `starling pull` again to resume" in err,
          "a cut download says how to resume: rc %d %s" % (rc, err))
    check(os.path.exists(partial) and 0 < os.path.getsize(partial) < len(big),
          "the part downloaded is kept")
    check(not os.path.exists(os.path.join(repo_dir("org/flaky", "flaky"), "refs", "main")),
          "no ref to an incomplete snapshot")
    kept = os.path.getsize(partial) if os.path.exists(partial) else -1
    rc, out, err = run("pull", "org/flaky", home="flaky")
    check(rc == 0, "the second pull completes: " + err)
    check(("org/flaky", "bytes=%d-" % kept) in state["cdn_requests"],
          "it asked for the rest only: %s" % state["cdn_requests"])
    with open(os.path.join(out.strip(), "big.safetensors"), "rb") as f:
        check(f.read() == big, "the resumed file is whole")

    # Corrupt bytes: refused, nothing left in the cache.
    rc, out, err = run("pull", "org/corrupt", home="corrupt")
    check(rc == 1 and "checksum mismatch" in err, "bad checksum: " + err)
    blobs = os.listdir(os.path.join(repo_dir("org/corrupt", "corrupt"), "blobs"))
    check(not any(b.startswith(hashlib.sha256(REPOS["org/corrupt"]["w.safetensors"]).hexdigest())
                  for b in blobs), "no corrupt blob or part kept: %s" % blobs)

    # A gated repository: the token is needed, sent to the hub, never to the CDN.
    state["cdn_auth"].clear()
    rc, out, err = run("pull", "org/gated", home="gated")
    check(rc == 1 and "HTTP 401" in err and "HF_TOKEN" in err, "gated without a token: " + err)
    rc, out, err = run("pull", "org/gated", home="gated", token=TOKEN)
    check(rc == 0, "gated with HF_TOKEN: " + err)
    check("Bearer " + TOKEN in state["hub_auth"], "the hub got the token")
    check(state["cdn_auth"] and all(a is None for a in state["cdn_auth"]),
          "the CDN never got the token: %s" % state["cdn_auth"])

    # Server errors, missing repositories, unsafe names, bad ids, no server.
    rc, out, err = run("pull", "org/broken")
    check(rc == 1 and "HTTP 500" in err, "server error: " + err)
    rc, out, err = run("pull", "org/missing")
    check(rc == 1 and "HTTP 404" in err and "no repository org/missing" in err, "404: " + err)
    rc, out, err = run("pull", "org/evil")
    check(rc == 1 and "unsafe name" in err, "unsafe name: " + err)
    check(not os.path.exists(os.path.join(tmp, "hf", "hub", "escape.txt")), "nothing escaped")
    rc, out, err = run("pull", "a/b/c")
    check(rc == 1 and "not a repository id" in err, "bad id: " + err)
    rc, out, err = run("pull", "org/tiny", endpoint="http://127.0.0.1:1")
    check(rc == 1 and "reachable" in err, "no server: " + err)
finally:
    hub.shutdown()
    cdn.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
