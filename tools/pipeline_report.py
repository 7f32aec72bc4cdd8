#!/usr/bin/env python3
"""The report of a scripts/pipeline.sh run: OUT/results.json, OUT/results.md, OUT/figures/*.svg.

    python3 tools/pipeline_report.py --run OUT [--starling build/starling] [--check]

Reads what the stages wrote (eval/*.json and *.responses.jsonl, rm/heldout.json, the training
logs, each stage's seconds) and writes one table per question of docs/PIPELINE.md. Intervals:
accuracy, the Wilson interval `starling eval` computes; differences of mean true reward between
two models, a paired 95% normal interval over the same held-out records.

--check exits 1 unless every stage improved its own metric (the miniature end-to-end test):
SFT's held-out accuracy above the base model's, the reward model's held-out pair accuracy above
1/2, APA's mean reward-model score above SFT's (win-rate eval), and each trained model loads
(its eval ran). Standard library only.
"""

import argparse
import json
import math
import os
import subprocess
import sys

MODELS = ["base", "sft", "apa", "ppo", "dpo", "hack"]
LABELS = {"base": "base (stories260K + end-of-turn token)", "sft": "SFT", "apa": "APA (paper)",
          "ppo": "PPO", "dpo": "DPO", "hack": "APA on a gameable reward (length)"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def jsonl(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def paired_diff(a, b):
    """Mean of a - b over paired values with a 95% normal interval."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return mean, mean - half, mean + half


def fmt(x, digits=3):
    return f"{x:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--starling", default="build/starling")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    run = a.run
    res = {"stages": {}, "exact": {}, "winrate": {}, "policy": {}}
    for stage in ["data", "base", "sft", "judge", "rm", "apa", "ppo", "dpo", "hack", "eval"]:
        p = os.path.join(run, stage, "seconds")
        if os.path.exists(p):
            res["stages"][stage] = int(open(p).read().strip() or 0)

    # Exact accuracy and true reward, per model and split.
    true_rewards = {}
    for m in MODELS:
        for split in ["eval", "eval-hard"]:
            p = os.path.join(run, "eval", f"{m}-{split}.json")
            if not os.path.exists(p):
                continue
            j = load(p)
            res["exact"].setdefault(m, {})[split] = {
                "overall": j["overall"],
                "groups": {f'{g["task"]}/{g["difficulty"]}': {k: g[k] for k in
                                                             ("n", "accuracy", "accuracy_ci95")}
                           for g in j["groups"]}}
            r = jsonl(os.path.join(run, "eval", f"{m}-{split}.responses.jsonl"))
            true_rewards[(m, split)] = [x["true_reward"] for x in r if x["correct"] is not None]
    for m in MODELS:
        for split in ["eval", "eval-hard"]:
            if m == "sft" or (m, split) not in true_rewards or ("sft", split) not in true_rewards:
                continue
            mean, lo, hi = paired_diff(true_rewards[(m, split)], true_rewards[("sft", split)])
            res["exact"][m][split]["true_reward_vs_sft"] = {"mean": mean, "ci95": [lo, hi]}
            acc = [float(x > 0.999) for x in true_rewards[(m, split)]]
            acc_sft = [float(x > 0.999) for x in true_rewards[("sft", split)]]
            mean, lo, hi = paired_diff(acc, acc_sft)
            res["exact"][m][split]["accuracy_vs_sft"] = {"mean": mean, "ci95": [lo, hi]}
    for m in MODELS:
        p = os.path.join(run, "eval", f"{m}-winrate.json")
        if os.path.exists(p):
            res["winrate"][m] = load(p)

    # The reward model against the judge, on held-out rankings.
    rm = {}
    p = os.path.join(run, "rm", "heldout.json")
    if os.path.exists(p):
        rm["rank"] = load(p)["summary"]
    p = os.path.join(run, "rm", "log.jsonl")
    if os.path.exists(p):
        evals = [x for x in jsonl(p) if "eval_pair_accuracy" in x]
        if evals:
            rm["eval"] = {k: v for k, v in evals[-1].items() if k.startswith("eval_") or k == "step"}
            rm["eval_first"] = {k: v for k, v in evals[0].items()
                                if k.startswith("eval_") or k == "step"}
    res["rm"] = rm

    # Policy training curves: reward, KL to SFT, response length per iteration.
    fig_dir = os.path.join(run, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    merged = {}
    for m in ["apa", "ppo", "hack"]:
        p = os.path.join(run, m, "log.jsonl")
        if not os.path.exists(p):
            continue
        its = [x for x in jsonl(p) if "iteration" in x and "reward_mean" in x]
        res["policy"][m] = {"iterations": len(its),
                            "first": {k: its[0][k] for k in ("reward_mean", "kl", "response_length")},
                            "last": {k: its[-1][k] for k in ("reward_mean", "kl", "response_length")}}
        for x in its:
            row = merged.setdefault(x["iteration"], {"iteration": x["iteration"]})
            for k in ("reward_mean", "kl", "response_length"):
                row[f"{m}_{k}"] = x[k]
    figures = []
    if merged:
        curves = os.path.join(run, "figures", "policy_curves.jsonl")
        with open(curves, "w", encoding="utf-8") as f:
            for it in sorted(merged):
                f.write(json.dumps(merged[it]) + "\n")
        for key, title in [("kl", "KL to the SFT model per token (nats)"),
                           ("response_length", "response length (tokens)"),
                           ("reward_mean", "mean reward of the rollouts (each run's own reward)")]:
            series = [f"{m}_{key}" for m in ["apa", "ppo", "hack"] if m in res["policy"]]
            out = os.path.join(fig_dir, f"pipeline_{key}.svg")
            subprocess.run([a.starling, "plot", curves, "-o", out, "--x", "iteration",
                            "--series", ",".join(series), "--title", title], check=True,
                           stdout=subprocess.DEVNULL)
            figures.append(out)
    for name, log, series, title in [
            ("sft", "sft/log.jsonl", "loss", "SFT: training loss"),
            ("rm", "rm/log.jsonl", "eval_pair_accuracy,eval_kendall_tau",
             "reward model: held-out pair accuracy and Kendall tau"),
            ("dpo", "dpo/log.jsonl", "loss,eval_loss", "DPO: loss")]:
        p = os.path.join(run, log)
        if os.path.exists(p):
            out = os.path.join(fig_dir, f"pipeline_{name}.svg")
            r = subprocess.run([a.starling, "plot", p, "-o", out, "--series", series,
                                "--title", title], stdout=subprocess.DEVNULL)
            if r.returncode == 0:
                figures.append(out)
    res["figures"] = [os.path.relpath(f, run) for f in figures]

    with open(os.path.join(run, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(run, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)

    if a.check:
        failures = check(res)
        for x in failures:
            print("pipeline check failed: " + x, file=sys.stderr)
        return 1 if failures else 0
    return 0


def markdown(res):
    out = ["## Held-out exact accuracy and true reward", "",
           "| model | eval accuracy (95% CI) | eval mean true reward | eval-hard accuracy (95% CI) "
           "| eval-hard mean true reward |", "|---|---|---|---|---|"]
    for m in MODELS:
        if m not in res["exact"]:
            continue
        cells = []
        for split in ["eval", "eval-hard"]:
            o = res["exact"][m].get(split, {}).get("overall")
            if o is None:
                cells += ["", ""]
                continue
            cells += [f'{fmt(o["accuracy"])} ({fmt(o["accuracy_ci95"][0])}-'
                      f'{fmt(o["accuracy_ci95"][1])}), n={o["n"]}', fmt(o["true_reward_mean"])]
        out.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    out += ["", "## Against SFT on the same records (paired differences, 95% CI)", "",
            "| model | split | accuracy - SFT's | true reward - SFT's |", "|---|---|---|---|"]
    for m in MODELS:
        for split in ["eval", "eval-hard"]:
            e = res["exact"].get(m, {}).get(split, {})
            if "accuracy_vs_sft" not in e:
                continue
            acc, tr = e["accuracy_vs_sft"], e["true_reward_vs_sft"]
            out.append(f'| {LABELS[m]} | {split} | {acc["mean"]:+.3f} ({acc["ci95"][0]:+.3f} to '
                       f'{acc["ci95"][1]:+.3f}) | {tr["mean"]:+.3f} ({tr["ci95"][0]:+.3f} to '
                       f'{tr["ci95"][1]:+.3f}) |')
    if res["winrate"]:
        out += ["", "## Judged by the pipeline's reward model, against SFT", "",
                "| model | win rate (95% CI) | mean reward | SFT's | difference (95% CI) "
                "| mean length (tokens) | SFT's |", "|---|---|---|---|---|---|---|"]
        for m, w in res["winrate"].items():
            d = w.get("reward_diff_ci95", [float("nan")] * 2)
            out.append(f'| {LABELS[m]} | {fmt(w["win_rate"])} ({fmt(w["win_rate_ci95"][0])}-'
                       f'{fmt(w["win_rate_ci95"][1])}) | {fmt(w["reward_mean"])} | '
                       f'{fmt(w["reward_mean_b"])} | {w.get("reward_diff_mean", float("nan")):+.3f}'
                       f' ({d[0]:+.3f} to {d[1]:+.3f}) | {w["length_mean"]:.1f} | '
                       f'{w["length_mean_b"]:.1f} |')
    rm = res.get("rm", {})
    if rm:
        out += ["", "## Reward model against the judge (held-out rankings)", ""]
        if "eval" in rm:
            e, f = rm["eval"], rm["eval_first"]
            out += ["| step | pair accuracy | adjacent-pair accuracy | Kendall tau | top-1 |",
                    "|---|---|---|---|---|"]
            for x in ([f] if f["step"] != e["step"] else []) + [e]:
                out.append(f'| {x["step"]} | {fmt(x["eval_pair_accuracy"])} | '
                           f'{fmt(x["eval_adjacent_accuracy"])} | {fmt(x["eval_kendall_tau"])} | '
                           f'{fmt(x["eval_top1_accuracy"])} |')
        if "rank" in rm:
            r = rm["rank"]
            out += ["", f'`starling rank` on the same {r["records"]} records: mean Kendall tau '
                    f'{fmt(r["mean_kendall_tau"])}, adjacent-pair accuracy '
                    f'{fmt(r["adjacent_pair_accuracy"])}, top-1 {fmt(r["top1_accuracy"])}.']
    if res["policy"]:
        out += ["", "## Policy training (first and last iteration)", "",
                "| run | iterations | reward | KL to SFT per token | response length |",
                "|---|---|---|---|---|"]
        for m, p in res["policy"].items():
            f, l = p["first"], p["last"]
            out.append(f'| {LABELS[m]} | {p["iterations"]} | {fmt(f["reward_mean"])} -> '
                       f'{fmt(l["reward_mean"])} | {fmt(f["kl"], 4)} -> {fmt(l["kl"], 4)} | '
                       f'{f["response_length"]:.1f} -> {l["response_length"]:.1f} |')
    if res["stages"]:
        out += ["", "## Time per stage (seconds)", "",
                "| " + " | ".join(res["stages"]) + " | total |",
                "|" + "---|" * (len(res["stages"]) + 1),
                "| " + " | ".join(str(v) for v in res["stages"].values()) +
                f' | {sum(res["stages"].values())} |']
    return "\n".join(out) + "\n"


def check(res):
    failures = []
    ex = res["exact"]
    for m in MODELS:
        if m not in ex or "eval" not in ex[m]:
            failures.append(f"{m}: no held-out evaluation (did its model load?)")
    if not failures:
        if ex["sft"]["eval"]["overall"]["accuracy"] <= ex["base"]["eval"]["overall"]["accuracy"]:
            failures.append("SFT's held-out accuracy is not above the base model's")
    rm = res.get("rm", {}).get("eval")
    if rm is None or rm["eval_pair_accuracy"] <= 0.5:
        failures.append("the reward model's held-out pair accuracy is not above 1/2")
    w = res["winrate"].get("apa")
    if w is None or w["reward_mean"] <= w["reward_mean_b"]:
        failures.append("APA's mean reward (by the pipeline's reward model) is not above SFT's")
    return failures


if __name__ == "__main__":
    sys.exit(main())
