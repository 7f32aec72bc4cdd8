#!/usr/bin/env python3
"""K-wise versus pairwise reward-model training on synthetic 7-way rankings whose true order is
known (docs/TRAINING.md, "Reward models: K-wise or pairs?").

    python3 tools/ranking_study.py generate --out study/data      # the data sets only
    python3 tools/ranking_study.py run --out study                 # generate, train, report

Standard library only (no PyTorch): the training is `starling train rm`.

The data. Each prompt asks about one of 10 topics ("Human: Tell me about the garden."). An
answer is 6 to 10 words drawn from a 40-word vocabulary. Every word has a hidden value
v_w ~ N(0, 1) and every topic 4 relevant words; an answer's true utility is

    u = sum_w v_w / sqrt(len) + 1.0 * (number of the topic's relevant words it uses)

so a good reward model has to read the prompt as well as the answer. The 7 answers of a
training prompt are ranked by a noisy judge: a Plackett-Luce draw with utilities u / TEMPERATURE
(the best-first order is sampled: the first from softmax(u / T), then the next among the rest,
...), the noise model the K-wise estimator assumes and that GPT-4's rankings only approximate.
The held-out prompts are ranked by u itself (the truth), so held-out Kendall tau and pair
accuracy measure agreement with the true order. Everything is seeded: a rerun writes the same
bytes.
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys

WORDS = ("apple bird boat book bread cake castle cat cloud dog dragon duck fish flower forest "
         "friend garden hat house king lake lamp moon mouse park queen rabbit rain river road "
         "school sea ship snow star stone sun tree wind window").split()
TOPICS = ("garden sea forest castle school park river king moon rain").split()
K = 7
TEMPERATURE = 0.5
RELEVANT_BONUS = 1.0


def world(seed):
    rng = random.Random(seed)
    values = {w: rng.gauss(0.0, 1.0) for w in WORDS}
    relevant = {t: set(rng.sample(WORDS, 4)) for t in TOPICS}
    return values, relevant


def utility(values, relevant, topic, answer_words):
    return (sum(values[w] for w in answer_words) / math.sqrt(len(answer_words)) +
            RELEVANT_BONUS * sum(1 for w in answer_words if w in relevant[topic]))


def plackett_luce_order(rng, utilities, temperature):
    """A best-first order drawn from Plackett-Luce with utilities / temperature."""
    left = list(range(len(utilities)))
    order = []
    while left:
        top = max(utilities[i] for i in left) / temperature
        weights = [math.exp(utilities[i] / temperature - top) for i in left]
        pick = rng.choices(left, weights=weights)[0]
        order.append(pick)
        left.remove(pick)
    return order


def records(seed, count, noisy):
    values, relevant = world(0)  # one world for every split
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        answers = [rng.sample(WORDS, rng.randint(6, 10)) for _ in range(K)]
        u = [utility(values, relevant, topic, a) for a in answers]
        if noisy:
            order = plackett_luce_order(rng, u, TEMPERATURE)
        else:
            order = sorted(range(K), key=lambda i: -u[i])
        rank = {i: r + 1 for r, i in enumerate(order)}
        out.append({
            "prompt": f"\n\nHuman: Tell me about the {topic}.\n\nAssistant: ",
            "answers": [{"answer": " ".join(a).capitalize() + ".", "model": "synthetic",
                         "rank": rank[i], "utility": round(u[i], 6)} for i, a in enumerate(answers)],
        })
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def generate(out, train_count, eval_count):
    os.makedirs(out, exist_ok=True)
    train = records(1, train_count, noisy=True)
    write_jsonl(os.path.join(out, "train.jsonl"), train)
    write_jsonl(os.path.join(out, "eval.jsonl"), records(2, eval_count, noisy=False))
    # How noisy the judge is: the fraction of adjacent pairs (in the true order) that the
    # training labels flip.
    flipped = total = 0
    for r in train:
        by_truth = sorted(r["answers"], key=lambda a: -a["utility"])
        for a, b in zip(by_truth, by_truth[1:]):
            total += 1
            flipped += a["rank"] > b["rank"]
    return flipped / total


def run(args):
    data = os.path.join(args.out, "data")
    flip = generate(data, args.train, args.eval)
    print(f"data: {args.train} training prompts (judge flips {flip:.1%} of adjacent true pairs), "
          f"{args.eval} held-out prompts ranked by the truth", flush=True)
    results = {}
    for seed in range(1, args.seeds + 1):
        for loss in ("kwise", "pairwise"):
            name = f"{loss}-seed{seed}"
            run_dir = os.path.join(args.out, name)
            cmd = [args.starling, "train", "rm", "-m", args.model, "--data",
                   os.path.join(data, "train.jsonl"), "--eval-data", os.path.join(data, "eval.jsonl"),
                   "--loss", loss, "--template", "llama-2", "--batch", str(args.batch), "--epochs",
                   str(args.epochs), "--lr", str(args.lr), "--schedule", "cosine", "--warmup", "10",
                   "--grad-clip", "1.0", "--seed", str(seed), "--eval-every", str(args.eval_every),
                   "--out", run_dir, "--log", run_dir + ".log.jsonl", "-q"]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            with open(run_dir + ".log.jsonl") as f:
                log = [json.loads(line) for line in f]
            results[name] = log
    # One log with both losses' eval curves (seed 1) for `starling plot`, and the summary.
    merged = os.path.join(args.out, "curves.jsonl")
    with open(merged, "w") as f:
        for a, b in zip(results["kwise-seed1"], results["pairwise-seed1"]):
            if "eval_kendall_tau" in a:
                f.write(json.dumps({"step": a["step"], "kwise_tau": a["eval_kendall_tau"],
                                    "pairwise_tau": b["eval_kendall_tau"],
                                    "kwise_pair_acc": a["eval_pair_accuracy"],
                                    "pairwise_pair_acc": b["eval_pair_accuracy"]}) + "\n")
    for series, picture in (("kwise_tau,pairwise_tau", "tau.svg"),
                            ("kwise_pair_acc,pairwise_pair_acc", "pair_accuracy.svg")):
        subprocess.run([args.starling, "plot", merged, "-o", os.path.join(args.out, picture),
                        "--series", series, "--title", "held-out agreement with the true order"],
                       check=True)
    summary = {}
    for loss in ("kwise", "pairwise"):
        finals = [results[f"{loss}-seed{s}"][-1] for s in range(1, args.seeds + 1)]
        summary[loss] = {key: [f[key] for f in finals] for key in
                         ("eval_kendall_tau", "eval_pair_accuracy", "eval_adjacent_accuracy",
                          "eval_top1_accuracy", "eval_loss")}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    for loss, s in summary.items():
        print(loss, {k: f"{sum(v) / len(v):.4f} ({', '.join(f'{x:.4f}' for x in v)})"
                     for k, v in s.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--train", type=int, default=600)
    g.add_argument("--eval", type=int, default=150)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--starling", default="build/starling")
    r.add_argument("--model", default="models/stories260K.gguf")
    r.add_argument("--train", type=int, default=600)
    r.add_argument("--eval", type=int, default=150)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--batch", type=int, default=8)
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--eval-every", type=int, default=15)
    args = p.parse_args()
    if args.command == "generate":
        flip = generate(args.out, args.train, args.eval)
        print(f"judge flips {flip:.1%} of adjacent true pairs")
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
