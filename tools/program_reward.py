#!/usr/bin/env python3
"""A reward that a program computes, served with the /v1/rewards API of `starling serve --rm`.

For policy-tuning runs whose true reward is known (docs/TRAINING.md, issue 15): `starling train
apa|ppo --rm-url http://127.0.0.1:PORT` scores its rollouts here, so "the reward went up" can be
checked against the definition below, and reward hacking shows in the samples.

    python3 tools/program_reward.py --port 8099 [--reward happy]

Rewards (of the last assistant message's text; the prompt is not scored):
  happy   the number of words (lower-cased, letters only) from HAPPY_WORDS, each counted at most
          twice, minus 0.5 for each word repeated three or more times in a row (a stutter
          such as "happy happy happy" is not a happier story). Range: [-inf, 2 * len(HAPPY)].
  length  -|number of words - 20| / 10: answers of about twenty words.

Request: {"conversations": [[{"role", "content"}, ...], ...]} or {"messages": [...]}.
Answer:  {"object": "list", "model": "program:<reward>", "data": [{"index": i, "object":
"reward", "reward": r, "tokens": 0}, ...]}. Standard library only.
"""

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HAPPY_WORDS = {"happy", "fun", "smile", "smiled", "laugh", "laughed", "love", "loved", "friend",
               "friends", "play", "played", "nice", "kind", "good", "glad", "joy", "hug"}


def words(text):
    return re.findall(r"[a-z]+", text.lower())


def happy_reward(text):
    ws = words(text)
    counts = {}
    for w in ws:
        if w in HAPPY_WORDS:
            counts[w] = counts.get(w, 0) + 1
    score = float(sum(min(c, 2) for c in counts.values()))
    run = 1
    for i in range(1, len(ws)):
        run = run + 1 if ws[i] == ws[i - 1] else 1
        if run == 3:
            score -= 0.5
    return score


def length_reward(text):
    return -abs(len(words(text)) - 20) / 10.0


REWARDS = {"happy": happy_reward, "length": length_reward}


def score_conversation(conversation, reward):
    answer = ""
    for m in conversation:
        if m.get("role") == "assistant":
            answer = m.get("content", "")
    return reward(answer)


def make_handler(reward_name):
    reward = REWARDS[reward_name]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/rewards":
                return self.send(404, {"error": {"message": "not found"}})
            try:
                n = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(n))
                conversations = request.get("conversations") or [request["messages"]]
                data = [{"index": i, "object": "reward",
                         "reward": score_conversation(c, reward), "tokens": 0}
                        for i, c in enumerate(conversations)]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return self.send(400, {"error": {"message": str(e)}})
            self.send(200, {"object": "list", "model": "program:" + reward_name, "data": data})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--reward", choices=sorted(REWARDS), default="happy")
    a = parser.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), make_handler(a.reward))
    print(f"program reward '{a.reward}' on http://{a.host}:{server.server_port}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
