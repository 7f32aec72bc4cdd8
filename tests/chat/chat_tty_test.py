"""`starling chat` in a real terminal (tmux): line editing (Ctrl-A, history with the Up arrow,
kept in a file across sessions), Ctrl-C while a reply streams (the reply stops, the chat goes
on), Ctrl-C on a line with text (the line is dropped), /help, an unknown command, Ctrl-C and
Ctrl-D on an empty prompt (a clean exit, status 0). Exit 77 (skipped) without tmux.

usage: chat_tty_test.py STARLING TESTDATA"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

STARLING, DATA = sys.argv[1], sys.argv[2]
if shutil.which("tmux") is None:
    print("tmux not found: skipped")
    sys.exit(77)

failures = []
tmp = tempfile.mkdtemp(prefix="starling_tty_")
SOCKET = [os.path.join(tmp, "tmux1.sock")]  # a server per session
HISTORY = os.path.join(tmp, "history")
MODEL = os.path.join(DATA, "tiny-mistral", "model-f32.gguf")


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


def tmux(*args):
    return subprocess.run(["tmux", "-S", SOCKET[0], *args], capture_output=True, text=True,
                          timeout=10).stdout


def screen():
    return tmux("capture-pane", "-p", "-S", "-200", "-t", "chat")


def wait_for(predicate, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = screen()
        if predicate(text):
            return text
        time.sleep(0.05)
    check(False, "timed out waiting for %s; screen:\n%s" % (what, screen()))
    return screen()


def last_line(text):
    lines = [l for l in text.rstrip("\n").split("\n")]
    return lines[-1] if lines else ""


def start(args, status_file):
    # The pane stays after the chat leaves, showing where its last output ended. The shell
    # survives the terminal's SIGINT (a trap, reset to the default action in the chat).
    command = ("trap : INT; %s chat -m %s --template openchat --temp 0 --history %s %s; s=$?; "
               "echo exit=$s; echo exit=$s > %s; sleep 60") % (
        shlex.quote(STARLING), shlex.quote(MODEL), shlex.quote(HISTORY), args,
        shlex.quote(status_file))
    tmux("new-session", "-d", "-s", "chat", "-x", "150", "-y", "50",
         "env TERM=xterm HOME=%s sh -c %s" % (shlex.quote(tmp), shlex.quote(command)))
    wait_for(lambda t: last_line(t).startswith(">"), "the first prompt")


def status(path, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                content = f.read().strip()
            if content:
                return content
        time.sleep(0.05)
    return None


try:
    # Session 1. A long reply (-n 8000 in a context of 8192) streams for seconds.
    status1 = os.path.join(tmp, "status1")
    start("-c 8192 -n 8000", status1)
    # Editing: "world", Ctrl-A to the start, "hello " before it.
    tmux("send-keys", "-t", "chat", "-l", "world")
    tmux("send-keys", "-t", "chat", "C-a")
    tmux("send-keys", "-t", "chat", "-l", "hello ")
    tmux("send-keys", "-t", "chat", "Enter")
    # Ctrl-C as soon as the reply streams: it stops, and the prompt comes back.
    wait_for(lambda t: "> hello world\n" in t and len(t.split("> hello world\n", 1)[1].strip()) > 0,
             "the reply to start")
    tmux("send-keys", "-t", "chat", "C-c")
    text = wait_for(lambda t: "[stopped]" in t and last_line(t) == ">",
                    "[stopped] and a new prompt")
    check("[the reply was cut" not in text, "the reply was stopped, not finished: " + text)
    with open(HISTORY) as f:
        saved = f.read()  # libedit writes a space as \040
    check("hello world" in saved.replace("\\040", " "), "the edited line is in the history file: "
          + saved)
    # Up recalls it; Ctrl-C drops the recalled line and stays.
    tmux("send-keys", "-t", "chat", "Up")
    wait_for(lambda t: last_line(t) == "> hello world", "Up to recall 'hello world'")
    tmux("send-keys", "-t", "chat", "C-c")
    wait_for(lambda t: last_line(t) == ">", "a fresh prompt after Ctrl-C on a line with text")
    check(status(status1, 0.3) is None, "Ctrl-C on a line with text does not leave")
    # /help and an unknown command: answered, nothing sent to the model.
    tmux("send-keys", "-t", "chat", "-l", "/help")
    tmux("send-keys", "-t", "chat", "Enter")
    wait_for(lambda t: "/system TEXT" in t and last_line(t) == ">", "the help text")
    tmux("send-keys", "-t", "chat", "-l", "/nope")
    tmux("send-keys", "-t", "chat", "Enter")
    wait_for(lambda t: "error: unknown command /nope" in t and last_line(t) == ">",
             "the unknown-command error")
    # Ctrl-C on the empty prompt: a newline, then a clean exit.
    tmux("send-keys", "-t", "chat", "C-c")
    check(status(status1) == "exit=0", "Ctrl-C on an empty prompt exits with 0: %s\n%s" %
          (status(status1, 0), screen()))
    check(last_line(screen()) == "exit=0", "a newline before leaving: " + screen())
    tmux("kill-server")

    # Session 2: the history survived; Ctrl-D leaves with status 0.
    SOCKET[0] = os.path.join(tmp, "tmux2.sock")
    status2 = os.path.join(tmp, "status2")
    start("-n 4", status2)
    tmux("send-keys", "-t", "chat", "Up")
    wait_for(lambda t: last_line(t) == "> /nope", "the previous session's history")
    tmux("send-keys", "-t", "chat", "C-c")
    wait_for(lambda t: last_line(t) == ">", "a fresh prompt")
    tmux("send-keys", "-t", "chat", "C-d")
    check(status(status2) == "exit=0", "Ctrl-D exits with 0: %s\n%s" % (status(status2, 0),
                                                                        screen()))
    check(last_line(screen()) == "exit=0", "a newline before leaving: " + screen())
finally:
    for socket in ("tmux1.sock", "tmux2.sock"):
        subprocess.run(["tmux", "-S", os.path.join(tmp, socket), "kill-server"],
                       capture_output=True, timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)

print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
