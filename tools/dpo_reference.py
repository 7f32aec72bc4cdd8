#!/usr/bin/env python3
"""PyTorch float64 reference fixture for DPO training (tests/data/train/dpo/).

Run from anywhere (paths are relative to the repository):
    /usr/bin/python3 tools/dpo_reference.py              # (re)writes the fixture
    /usr/bin/python3 tools/dpo_reference.py --check      # also: finite differences, and the ids
                                                         # against `build/starling tokenize`
    /usr/bin/python3 tools/dpo_reference.py --tolerance  # also: torch float32 vs this float64,
                                                         # and deliberate mistakes

Input: tests/data/train/rm/rankings.jsonl (the 6 ranked records of the rm fixtures) and the model
tests/data/tiny-mistral/hf (policy and reference). Output:
tests/data/train/dpo/tiny-mistral-dpo.fixture.safetensors, what `starling train dpo --template
openchat --pairs best --beta 0.1 --no-shuffle --batch 2` must compute (the exact command line is
below, in the fixture's metadata and in tests/data/train/README.md):

  records  as for `train rm` (rm_reference.parse_record): a Nectar record's answers ordered by
           rank (1 = best), its prompt split into user / assistant turns; a {"prompt", "chosen",
           "rejected"} line is one user turn and the ranking [chosen, rejected].
  pairs    --pairs best: per record, in file order, (rank 1, rank j) for j = 2..K in order
           (2 + 3 + 6 + 1 + 4 + 1 = 17 pairs).
  ids      per (prompt, answer): the openchat rendering of prompt + [assistant: answer] exactly
           as SFT renders it (sft_reference.render_openchat: [BOS] first).
  response the final answer's tokens only: sp.encode(answer) + [<|end_of_turn|>], the last
           len(sp.encode(answer)) + 1 ids (assistant turns of a multi-turn prompt are context).
  log pi   log pi(y) = sum over the response's target positions of log softmax(logits)[target],
           each sequence run alone (inputs ids[:-1], targets ids[1:], positions from 0).
  loss     per pair: z = beta ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))),
           loss = -log sigmoid(z), beta = 0.1; pi_ref is the initial model, its log-probs
           computed once. The step's loss is the mean over its pairs; step 1's is exactly ln 2.
  batches  --no-shuffle: step k uses pairs (2k + j) mod 17, j = 0, 1.
  metrics  per step, means over its pairs of the implicit rewards beta (log pi - log pi_ref):
           chosen_reward, rejected_reward, reward_margin (their difference) and reward_accuracy
           (the fraction of pairs with chosen reward > rejected reward, strictly).
  AdamW    train_reference.run_adamw (torch.optim.AdamW foreach=False, weight decay 0.1 on 2-D
           tensors only, clip_grad_norm_ 1.0, constant lr) with lr 1e-3 and 5 steps; every
           parameter trained.

Deterministic (one thread, float64, no randomness in the data path): a rerun writes the same
bytes. Needs Debian's python3-sentencepiece besides python3-torch and NumPy.
"""

import os

# One BLAS/OpenMP thread (see train_reference.py): reruns give identical bytes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_llama as tl  # noqa: E402
from rm_reference import parse_record  # noqa: E402
from sft_reference import EOT, render_openchat  # noqa: E402
from train_reference import (BETA1, BETA2, EPS, GRAD_CLIP, WEIGHT_DECAY,  # noqa: E402
                             central_differences, rel_l2, run_adamw, to_torch)

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = "tests/data/tiny-mistral/hf"
DATA = "tests/data/train/rm/rankings.jsonl"
FIXTURE = "tests/data/train/dpo/tiny-mistral-dpo.fixture.safetensors"
STARLING = os.path.join(REPO, "build", "starling")

BATCH = 2      # pairs per step (no accumulation)
STEPS = 5
LR = 1e-3
DPO_BETA = 0.1
PAIRS = "best"

# The run whose log reproduces the fixture (from the repository root; DIR and LOG are any new
# paths; the log's step k carries loss, grad_norm, chosen_reward, rejected_reward, reward_margin
# and reward_accuracy = entry k-1 of the adamw.* tensors of the same name).
COMMAND = (f"starling train dpo -m {MODEL_DIR} --template openchat --data {DATA} --pairs {PAIRS} "
           f"--beta {DPO_BETA!r} --no-shuffle --batch {BATCH} --steps {STEPS} --lr {LR!r} "
           f"--weight-decay {WEIGHT_DECAY!r} --grad-clip {GRAD_CLIP!r} --out DIR --log LOG")

# The two [V, 64] tensors are stored only at the rows the first micro-batch uses.
ROW_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")

METRICS = ("chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy")


# --------------------------------------------------------------------------------------------
# Data: records -> pairs, the openchat rendering, the scored tokens, the --no-shuffle order
# --------------------------------------------------------------------------------------------

def sequence(sp, prompt, answer):
    """One (prompt, answer) conversation: {"messages", "ids" (np int32), "masks": {rule: bool
    [n-1] over target positions}}. Rules: "final" (the fixture's: the final answer's content and
    its <|end_of_turn|>), and, for --tolerance, "assistant" (every assistant turn, as SFT trains)
    and "no_eot" (the final answer's content without its <|end_of_turn|>)."""
    messages = prompt + [{"role": "assistant", "content": answer}]
    ids, trained = render_openchat(sp, messages)
    n_response = len(sp.encode(answer)) + 1
    final = np.zeros(len(ids) - 1, dtype=bool)
    final[-n_response:] = True
    assert ids[-1] == EOT and all(trained[-n_response:]) and not trained[-n_response - 1]
    no_eot = final.copy()
    no_eot[-1] = False
    return {"messages": messages, "ids": np.array(ids, dtype=np.int32),
            "masks": {"final": final, "assistant": np.array(trained[1:], dtype=bool),
                      "no_eot": no_eot}}


def load_pairs(sp, rule=PAIRS, file_order=False):
    """[{"record", "better", "worse", "chosen", "rejected"}] in the order the trainer indexes
    them. rule "all" and file_order (answers in file order, not by rank) are mistakes here."""
    pairs = []
    with open(os.path.join(REPO, DATA), encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for r, line in enumerate(lines):
        prompt, answers = parse_record(line)
        if file_order:
            rec = json.loads(line)
            if "answers" in rec:
                answers = [a["answer"] for a in rec["answers"]]
        seqs = [sequence(sp, prompt, a) for a in answers]
        K = len(answers)
        index = ([(0, j) for j in range(1, K)] if rule == "best"
                 else [(i, j) for i in range(K) for j in range(i + 1, K)])
        for i, j in index:
            pairs.append({"record": r, "better": i, "worse": j, "chosen": seqs[i],
                          "rejected": seqs[j]})
    return pairs


def micro_batch(step, n):
    """--no-shuffle: the pair indices of step `step`."""
    return [(step * BATCH + j) % n for j in range(BATCH)]


# --------------------------------------------------------------------------------------------
# Log-probs, the DPO loss and training
# --------------------------------------------------------------------------------------------

def logp(cfg, params, seq, rule="final", mean=False):
    """Summed (mean: averaged, a mistake) log-probs of the scored targets, the sequence alone."""
    ids = torch.tensor(seq["ids"], dtype=torch.long)
    logits = tl.forward(cfg, params, ids[None, :-1])[0]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[1:, None]).squeeze(-1)
    scored = lp[torch.tensor(seq["masks"][rule])]
    return scored.mean() if mean else scored.sum()


def reference_logps(cfg, params, pairs, rule="final", mean=False):
    """log pi_ref of every pair's (chosen, rejected) at the given (initial) weights: [N, 2]."""
    with torch.no_grad():
        return [(logp(cfg, params, p["chosen"], rule, mean).item(),
                 logp(cfg, params, p["rejected"], rule, mean).item()) for p in pairs]


def step_loss_of(cfg, params, pairs, refs, mistake=None, keep=None):
    """Mean over the pairs of -log sigmoid(z). `refs`: their (ref chosen, ref rejected).
    `keep` (a dict) receives the policy log-probs and the step's metrics."""
    rule = {"assistant": "assistant", "no_eot": "no_eot"}.get(mistake, "final")
    mean = mistake == "mean_logp"
    losses, chosen, rejected, logps = [], [], [], []
    for p, (ref_w, ref_l) in zip(pairs, refs):
        pw = logp(cfg, params, p["chosen"], rule, mean)
        pl = logp(cfg, params, p["rejected"], rule, mean)
        if mistake == "no_reference":  # the reference is the current policy (detached)
            ref_w, ref_l = pw.item(), pl.item()
        if mistake == "beta_policy_only":  # beta on the policy's log-ratio only
            z = DPO_BETA * (pw - pl) - (ref_w - ref_l)
        elif mistake == "over_beta":  # divided by beta instead of multiplied
            z = ((pw - ref_w) - (pl - ref_l)) / DPO_BETA
        else:
            z = DPO_BETA * ((pw - ref_w) - (pl - ref_l))
        losses.append(-torch.nn.functional.logsigmoid(z))
        chosen.append(DPO_BETA * (pw.item() - ref_w))
        rejected.append(DPO_BETA * (pl.item() - ref_l))
        logps.append((pw.item(), pl.item()))
    total = torch.stack(losses).sum()
    if keep is not None:
        n = len(pairs)
        keep.update(logps=logps, chosen_reward=sum(chosen) / n, rejected_reward=sum(rejected) / n,
                    reward_margin=(sum(chosen) - sum(rejected)) / n,
                    reward_accuracy=sum(c > r for c, r in zip(chosen, rejected)) / n)
    return total if mistake == "sum_over_pairs" else total / len(pairs)


def train(cfg, weights_np, pairs, dtype, reverse_within_batch=False, mistake=None):
    """STEPS AdamW steps over the --no-shuffle micro-batches, the reference log-probs computed
    once at the initial weights (in `dtype`). Also each step's metrics and the first step's
    policy log-probs."""
    params = to_torch(weights_np, dtype)
    rule = {"assistant": "assistant", "no_eot": "no_eot"}.get(mistake, "final")
    refs = reference_logps(cfg, params, pairs, rule, mistake == "mean_logp")
    metrics = []

    def step_loss(step):
        batch = micro_batch(step, len(pairs))
        if reverse_within_batch:
            batch = batch[::-1]
        keep = {}
        loss = step_loss_of(cfg, params, [pairs[i] for i in batch], [refs[i] for i in batch],
                            mistake, keep)
        if reverse_within_batch:
            keep["logps"] = keep["logps"][::-1]
        metrics.append(keep)
        return loss

    result = run_adamw(params, step_loss, lr=LR, steps=STEPS)
    result["refs"] = refs
    result["metrics"] = metrics
    result["logps"] = metrics[0]["logps"]
    return result


def first_batch_rows(pairs):
    """The distinct ids (sorted) of the first micro-batch's sequences."""
    return sorted({int(t) for i in micro_batch(0, len(pairs))
                   for s in ("chosen", "rejected") for t in pairs[i][s]["ids"]})


def write_fixture(pairs, result):
    tensors = {
        "loss": np.array([result["loss"]], dtype=np.float64),
        "logps": np.array(result["logps"], dtype=np.float64),
        "reference_logps": np.array(result["refs"], dtype=np.float64),
        "pairs": np.array([[p["record"], p["better"], p["worse"]] for p in pairs], dtype=np.int32),
        "response_tokens": np.array([[int(p[s]["masks"]["final"].sum()) for s in
                                      ("chosen", "rejected")] for p in pairs], dtype=np.int32),
        "adamw.losses": np.array(result["losses"], dtype=np.float64),
        "adamw.grad_norms": np.array(result["grad_norms"], dtype=np.float64),
    }
    for m in METRICS:
        tensors["adamw." + m] = np.array([s[m] for s in result["metrics"]], dtype=np.float64)
    for i, p in enumerate(pairs):
        tensors[f"ids.{i}.chosen"] = p["chosen"]["ids"]
        tensors[f"ids.{i}.rejected"] = p["rejected"]["ids"]
    rows = first_batch_rows(pairs)
    for n, g in result["grads"].items():
        if n in ROW_TENSORS:
            tensors["grad_rows." + n] = np.array(rows, dtype=np.int32)
            tensors["grad." + n] = g[rows].numpy().astype(np.float32)
            tensors["grad_norm." + n] = np.array([float(g.norm())], dtype=np.float64)
        else:
            tensors["grad." + n] = g.numpy().astype(np.float32)
    metadata = {
        "model": MODEL_DIR, "data": DATA, "template": "openchat", "pairs": PAIRS,
        "pair_count": len(pairs), "beta": repr(DPO_BETA), "batch": BATCH, "steps": STEPS,
        "order": "no-shuffle: step k uses pairs (k*batch + j) mod pairs, j = 0..batch-1; pairs "
                 "in file order, per record (rank 1, rank j) for j = 2..K",
        "ids": "ids.<pair>.<chosen|rejected>: the openchat rendering (BOS first) of prompt + "
               "answer; the last response_tokens[pair] ids are scored (the final answer's "
               "content and its <|end_of_turn|>)",
        "logp": "sum over the scored targets of log softmax(logits)[target], each sequence alone",
        "loss_per_pair": "-log sigmoid(beta ((logp_w - ref_w) - (logp_l - ref_l))), the "
                         "reference = the initial model",
        "normalization": "mean over the step's pairs",
        "metrics": "adamw.<chosen_reward|rejected_reward|reward_margin|reward_accuracy>: means "
                   "over the step's pairs of beta (logp - ref), their difference, and the "
                   "fraction with chosen > rejected (strictly)",
        "lr": repr(LR), "schedule": "constant", "beta1": repr(BETA1), "beta2": repr(BETA2),
        "eps": repr(EPS), "weight_decay": repr(WEIGHT_DECAY),
        "decay_on": "2-D tensors: the matrices, the embedding and lm_head",
        "grad_clip": repr(GRAD_CLIP),
        "loss_grad_batch": "pairs 0, 1 (the first micro-batch); logps[pair][chosen, rejected]",
        "grad_rows": "grad.<embed_tokens|lm_head> hold only the rows grad_rows.<name> (the ids "
                     "of the first micro-batch); grad_norm.<name> is the full tensor's L2 norm",
        "command": COMMAND, "generator": "tools/dpo_reference.py", "torch": torch.__version__,
        "sentencepiece": spm.__version__,
    }
    path = os.path.join(REPO, FIXTURE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tl.write_safetensors(path, tensors, metadata)
    return path


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

def finite_difference_check(cfg, weights_np, pairs, refs, grads, seed=5001, per_tensor=3):
    """train_reference.central_differences of the first micro-batch's loss (the reference
    log-probs held fixed) at `per_tensor` random entries of every parameter tensor (embedding
    and lm_head entries from rows the batch uses)."""
    params = to_torch(weights_np, torch.float64, requires_grad=False)
    batch = micro_batch(0, len(pairs))
    ps, rs = [pairs[i] for i in batch], [refs[i] for i in batch]
    return central_differences(params, lambda: step_loss_of(cfg, params, ps, rs).item(), grads,
                               np.random.default_rng(seed), per_tensor, ROW_TENSORS,
                               first_batch_rows(pairs))


def check_ids_with_starling(pairs):
    """Every distinct sequence's ids against `build/starling tokenize --tokenizer MODEL
    --template openchat --messages FILE --json` (the C++ renderer). Returns report lines."""
    if not os.path.exists(STARLING):
        return [f"ids vs starling tokenize: skipped ({STARLING} not built)"]
    seqs = {}
    for p in pairs:
        for s in ("chosen", "rejected"):
            seqs[p[s]["ids"].tobytes()] = p[s]
    lines, all_ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for k, seq in enumerate(seqs.values()):
            path = os.path.join(tmp, f"seq{k}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(seq["messages"], f, ensure_ascii=False)
            out = subprocess.run([STARLING, "tokenize", "--tokenizer", MODEL_DIR, "--template",
                                  "openchat", "--messages", path, "--json"], cwd=REPO,
                                 check=True, capture_output=True, text=True).stdout
            theirs = json.loads(out)["ids"]
            if theirs != seq["ids"].tolist():
                all_ok = False
                lines.append(f"sequence {k} DIFFERS:\n    python   {seq['ids'].tolist()}\n"
                             f"    starling {theirs}")
    lines.append(f"ids vs starling tokenize, {len(seqs)} distinct sequences: "
                 + ("all identical" if all_ok else "MISMATCH"))
    return lines


# --------------------------------------------------------------------------------------------
# --tolerance
# --------------------------------------------------------------------------------------------

MISTAKES = {
    "assistant": "every assistant turn scored, not only the final answer",
    "no_eot": "the final answer's <|end_of_turn|> not scored",
    "mean_logp": "mean log-prob per response token instead of the sum",
    "sum_over_pairs": "step loss summed over the pairs, not divided by the batch",
    "beta_policy_only": "beta on the policy's log-ratio only: beta (pw - pl) - (rw - rl)",
    "over_beta": "log-ratio divided by beta instead of multiplied",
    "no_reference": "no fixed reference (the current policy, detached)",
    "pairs_all": "--pairs all semantics (every i < j) under --pairs best",
    "file_order": "answers in file order, not by rank",
}


def metric_diffs(a, b):
    """Per step |diff| of each logged metric."""
    return {m: [abs(x[m] - y[m]) for x, y in zip(a["metrics"], b["metrics"])] for m in METRICS}


def report_discrepancy(label, f32, ref):
    rels = {n: rel_l2(f32["grads"][n], ref["grads"][n]) for n in ref["grads"]}
    worst = max(rels, key=rels.get)
    rows = ref["rows"]
    row_rels = [rel_l2(f32["grads"][n][rows], ref["grads"][n][rows]) for n in ROW_TENSORS]
    gn = [abs(float(f32["grads"][n].norm()) - float(ref["grads"][n].norm()))
          / float(ref["grads"][n].norm()) for n in ROW_TENSORS]
    dlp = max(abs(a - b) for x, y in zip(f32["logps"], ref["logps"]) for a, b in zip(x, y))
    drf = max(abs(a - b) for x, y in zip(f32["refs"], ref["refs"]) for a, b in zip(x, y))
    dl = [abs(a - b) for a, b in zip(f32["losses"], ref["losses"])]
    dn = [abs(a - b) / b for a, b in zip(f32["grad_norms"], ref["grad_norms"])]
    dp = max(rel_l2(f32["final"][n], ref["final"][n]) for n in ref["final"])
    dm = metric_diffs(f32, ref)
    print(f"  {label} vs float64: step-1 loss |diff| {dl[0]:.1e}; first-batch log-probs max "
          f"|diff| {dlp:.1e}; all 34 reference log-probs max |diff| {drf:.1e}")
    print(f"    gradients: max rel L2 {rels[worst]:.1e} ({worst}), median "
          f"{np.median(list(rels.values())):.1e}; stored rows of embed/lm_head rel L2 "
          f"{row_rels[0]:.1e} / {row_rels[1]:.1e}; their full norms rel {gn[0]:.1e} / "
          f"{gn[1]:.1e}; parameters after {STEPS} steps: max rel L2 {dp:.1e}")
    print("    AdamW loss |diff| per step:   " + " ".join(f"{x:.1e}" for x in dl))
    print("    grad norm rel diff per step:  " + " ".join(f"{x:.1e}" for x in dn))
    for m in METRICS:
        print(f"    {m} |diff| per step: " + " ".join(f"{x:.1e}" for x in dm[m]))


def print_reference(pairs, ref):
    print(f"loss {ref['loss']:.17g} (ln 2 = {math.log(2):.17g}), grad norm "
          f"{ref['grad_norms'][0]:.6f}")
    print("  first micro-batch log-probs (chosen, rejected): "
          + "; ".join(f"{a:.6f} {b:.6f}" for a, b in ref["logps"]))
    print("  losses:          " + " ".join(f"{x:.6f}" for x in ref["losses"]))
    print("  grad norms:      " + " ".join(f"{x:.6f}" for x in ref["grad_norms"]))
    for m in METRICS:
        print(f"  {m + ':':16s} " + " ".join(f"{s[m]:.6f}" for s in ref["metrics"]))


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="verify: finite differences, ids vs `build/starling tokenize`")
    ap.add_argument("--tolerance", action="store_true",
                    help="measure torch float32 against the float64 reference, and how far "
                         "deliberate mistakes move the logged numbers")
    args = ap.parse_args()

    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, MODEL_DIR, "tokenizer.model"))
    pairs = load_pairs(sp)
    hf, cfg, weights = tl.load_hf_model(os.path.join(REPO, MODEL_DIR))
    assert list(weights) == list(cfg.parameter_shapes())
    print(f"{len(pairs)} pairs (record, better, worse): "
          + " ".join(f"{p['record']}:{p['better']}{p['worse']}" for p in pairs))
    print("  lengths (chosen/rejected, scored): " + " ".join(
        f"{len(p['chosen']['ids'])}/{len(p['rejected']['ids'])}"
        f"({int(p['chosen']['masks']['final'].sum())},{int(p['rejected']['masks']['final'].sum())})"
        for p in pairs))

    ref = train(cfg, weights, pairs, torch.float64)
    path = write_fixture(pairs, ref)
    print_reference(pairs, ref)
    print(f"  {os.path.relpath(path, REPO)} {os.path.getsize(path)} bytes")
    print("  command: " + COMMAND)
    # How close each step's pairs are to a tie (reward_accuracy is discrete).
    for k, s in enumerate(ref["metrics"]):
        batch = micro_batch(k, len(pairs))
        margins = [DPO_BETA * ((w - ref["refs"][i][0]) - (l - ref["refs"][i][1]))
                   for i, (w, l) in zip(batch, s["logps"])]
        print(f"  step {k + 1}: pairs {batch}, per-pair reward margins "
              + " ".join(f"{x:.3e}" for x in margins))

    if args.check:
        n, rel, absolute, at = finite_difference_check(cfg, weights, pairs, ref["refs"],
                                                        ref["grads"])
        print(f"  check: finite differences vs autograd at {n} entries: max rel error {rel:.2e} "
              f"where |grad| >= 1e-5 (at {at[0]}{list(at[1])}: autograd {at[2]:.6e}, fd "
              f"{at[3]:.6e}); max abs error {absolute:.2e}")
        for line in check_ids_with_starling(pairs):
            print("  check: " + line)

    if args.tolerance:
        ref["rows"] = first_batch_rows(pairs)
        for label, rev in (("float32", False), ("float32 batch reversed", True)):
            report_discrepancy(label, train(cfg, weights, pairs, torch.float32, rev), ref)
        for key, what in MISTAKES.items():
            if key in ("pairs_all", "file_order"):
                data = load_pairs(sp, rule="all" if key == "pairs_all" else PAIRS,
                                  file_order=key == "file_order")
                wrong = train(cfg, weights, data, torch.float64)
            else:
                wrong = train(cfg, weights, pairs, torch.float64, mistake=key)
            dl = [abs(a - b) for a, b in zip(wrong["losses"], ref["losses"])]
            dn = [abs(a - b) / b for a, b in zip(wrong["grad_norms"], ref["grad_norms"])]
            dm = {m: max(v[1:]) for m, v in metric_diffs(wrong, ref).items()}
            print(f"  mistake '{what}': step-1 loss |diff| {dl[0]:.1e}, losses max |diff| "
                  f"{max(dl):.1e}, grad norms max rel diff {max(dn):.1e}; steps 2-5 max |diff| "
                  + ", ".join(f"{m} {v:.1e}" for m, v in dm.items()))


if __name__ == "__main__":
    main()
