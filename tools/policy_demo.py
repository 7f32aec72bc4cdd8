#!/usr/bin/env python3
"""Policy tuning on a task whose true reward is known (issue 15, section 4; docs/TRAINING.md).

The policy is the embedded stories260K model (a base model: the "raw" template, prompts are
story openings). The reward is a program, tools/program_reward.py's "happy" (happy words in the
continuation, each counted at most twice, minus 0.5 per stutter), served over /v1/rewards, so
every number below is the true reward, and reward hacking shows in the samples.

At equal sampling budget (the same number of sampled responses):
  ppo, apa (paper), apa (starling)  `starling train ppo|apa --rm-url ...`: ITERATIONS x ROLLOUTS
                                     responses, PPO_EPOCHS passes, the same lr and batch;
  dpo                               ITERATIONS x ROLLOUTS responses sampled once from the base
                                     model (SAMPLES_PER_PROMPT per training prompt), ranked by
                                     the same program, then `starling train dpo --pairs best`.
Then every model (and the base) answers EVAL_SAMPLES x the held-out prompts, scored by the
program: the table reports the mean true reward, its standard error, the mean response length,
and the last iteration's KL to the reference from the RL logs.

    python3 tools/policy_demo.py --out /tmp/policy-demo [--starling build/starling]

Writes OUT/results.json, OUT/<method>/ (models, logs) and, with --figures DIR, SVG curves of
reward and KL per iteration. Takes about ten minutes on two cores. Standard library only.
"""

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import program_reward  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "stories260K.gguf")

ITERATIONS = 16
ROLLOUTS = 32
PPO_EPOCHS = 2
BATCH = 8
MAX_NEW_TOKENS = 48
LR = 3e-4
SAMPLES_PER_PROMPT = 8  # DPO: 64 training prompts x 8 = ITERATIONS x ROLLOUTS
EVAL_SAMPLES = 4

NAMES = ["Lily", "Tom", "Sue", "Max", "Ben", "Anna", "Sam", "Mia"]
OPENINGS = [
    "Once upon a time, there was a little girl named {n}.",
    "One day, {n} went to the park.",
    "{n} had a big red ball.",
    "{n} lived in a small house near the woods.",
    "It was a rainy day and {n} was at home.",
    "{n} saw a cat on the street.",
    "{n} and mom went to the shop.",
    "One morning, {n} woke up early.",
    "{n} found a box under the bed.",
    "There was a little bird in {n}'s garden.",
    "{n} wanted to build a tower.",
    "{n} was sad because the toy broke.",
]


def prompts():
    all_prompts = [o.format(n=n) for o in OPENINGS for n in NAMES]  # 96
    random.Random(5).shuffle(all_prompts)
    return all_prompts[:64], all_prompts[64:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, log=None):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    if log:
        with open(log, "w") as f:
            f.write(r.stderr)
    return r.stdout, time.time() - t0


def generate(starling, model, prompt, seed):
    out, _ = run([starling, "generate", "-m", model, "--template", "raw", "-p", prompt,
                  "-n", str(MAX_NEW_TOKENS), "--temp", "1", "--top-k", "0", "--top-p", "1",
                  "--min-p", "0", "--seed", str(seed), "-t", "1"])
    return out


def evaluate(starling, model, eval_prompts):
    rewards, lengths = [], []
    for i, p in enumerate(eval_prompts):
        for k in range(EVAL_SAMPLES):
            text = generate(starling, model, p, 1000 * i + k + 7)
            rewards.append(program_reward.happy_reward(text))
            lengths.append(len(program_reward.words(text)))
    return {"reward_mean": statistics.mean(rewards),
            "reward_stderr": statistics.stdev(rewards) / len(rewards) ** 0.5,
            "words_mean": statistics.mean(lengths),
            "sample": text}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--starling", default=os.path.join(ROOT, "build", "starling"))
    ap.add_argument("--figures", default="")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train_prompts, eval_prompts = prompts()
    prompt_file = os.path.join(a.out, "prompts.jsonl")
    with open(prompt_file, "w") as f:
        for p in train_prompts:
            f.write(json.dumps({"prompt": p}) + "\n")

    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "program_reward.py"),
                               "--port", str(port), "--reward", "happy"],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    results = {"settings": {"iterations": ITERATIONS, "rollouts": ROLLOUTS,
                            "ppo_epochs": PPO_EPOCHS, "batch": BATCH, "lr": LR,
                            "max_new_tokens": MAX_NEW_TOKENS,
                            "samples_per_prompt_dpo": SAMPLES_PER_PROMPT,
                            "eval_prompts": len(eval_prompts), "eval_samples": EVAL_SAMPLES}}
    try:
        common = ["-m", MODEL, "--template", "raw", "--rm-url", f"http://127.0.0.1:{port}",
                  "--prompts", prompt_file, "--iterations", str(ITERATIONS), "--rollouts",
                  str(ROLLOUTS), "--ppo-epochs", str(PPO_EPOCHS), "--batch", str(BATCH),
                  "--max-new-tokens", str(MAX_NEW_TOKENS), "--lr", str(LR), "-q", "-t", "2"]
        runs = [("ppo", ["ppo"]), ("apa-paper", ["apa", "--variant", "paper"]),
                ("apa-starling", ["apa", "--variant", "starling"])]
        for name, algo in runs:
            out = os.path.join(a.out, name)
            _, seconds = run([a.starling, "train"] + algo + common +
                             ["--out", out, "--log", out + ".jsonl"], log=out + ".stderr")
            its = [json.loads(l) for l in open(out + ".jsonl")]
            its = [j for j in its if "iteration" in j and "step" not in j]
            results[name] = {"train_seconds": seconds,
                             "reward_first": its[0]["reward_mean"],
                             "reward_last": its[-1]["reward_mean"],
                             "kl_last": its[-1]["kl"],
                             "kl_max": max(j["kl"] for j in its)}
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
            if a.figures:
                run([a.starling, "plot", out + ".jsonl", "--x", "iteration", "--series",
                     "reward_mean,kl", "--title",
                     f"{name}: true reward and KL per token, per iteration",
                     "-o", os.path.join(a.figures, f"policy_{name}.svg")])

        # DPO on program-ranked samples of the base model, the same number of responses.
        t0 = time.time()
        rankings = os.path.join(a.out, "rankings.jsonl")
        with open(rankings, "w") as f:
            for i, p in enumerate(train_prompts):
                answers = [generate(a.starling, MODEL, p, 50000 + SAMPLES_PER_PROMPT * i + k)
                           for k in range(SAMPLES_PER_PROMPT)]
                answers = [x if x.strip() else "." for x in answers]
                order = sorted(range(len(answers)),
                               key=lambda k: -program_reward.happy_reward(answers[k]))
                f.write(json.dumps({"prompt": "\n\nHuman: " + p + "\n\nAssistant: ", "answers": [
                    {"answer": answers[k], "rank": r + 1} for r, k in enumerate(order)]}) + "\n")
        sample_seconds = time.time() - t0
        out = os.path.join(a.out, "dpo")
        pairs = len(train_prompts) * (SAMPLES_PER_PROMPT - 1)
        steps = pairs // BATCH
        _, seconds = run([a.starling, "train", "dpo", "-m", MODEL, "--template", "raw", "--data",
                          rankings, "--pairs", "best", "--beta", "0.1", "--batch", str(BATCH),
                          "--steps", str(steps), "--lr", str(LR), "--out", out, "--log",
                          out + ".jsonl", "-q", "-t", "2"], log=out + ".stderr")
        results["dpo"] = {"train_seconds": seconds, "sample_seconds": sample_seconds,
                          "pairs": pairs, "steps": steps}
        print("dpo", json.dumps(results["dpo"]), file=sys.stderr, flush=True)
    finally:
        server.terminate()

    for name, model in [("base", MODEL), ("ppo", os.path.join(a.out, "ppo")),
                        ("apa-paper", os.path.join(a.out, "apa-paper")),
                        ("apa-starling", os.path.join(a.out, "apa-starling")),
                        ("dpo", os.path.join(a.out, "dpo"))]:
        results.setdefault(name, {})["eval"] = evaluate(a.starling, model, eval_prompts)
        print(name, json.dumps(results[name]["eval"]), file=sys.stderr, flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("| method | true reward, held-out prompts (mean +- s.e.) | words | last KL/token |")
    print("|---|---|---|---|")
    for name in ["base", "ppo", "apa-paper", "apa-starling", "dpo"]:
        e = results[name]["eval"]
        kl = results[name].get("kl_last")
        print(f"| {name} | {e['reward_mean']:.3f} +- {e['reward_stderr']:.3f} | "
              f"{e['words_mean']:.1f} | {'' if kl is None else f'{kl:.3f}'} |")


if __name__ == "__main__":
    main()
