#!/usr/bin/env python3
"""PyTorch float64 reference fixtures for reward-model training (tests/data/train/rm/).

Run from anywhere (paths are relative to the repository):
    /usr/bin/python3 tools/rm_reference.py              # (re)writes the two fixtures
    /usr/bin/python3 tools/rm_reference.py --check      # also: finite differences, the ids
                                                        # against `build/starling tokenize` and
                                                        # the rewards against `starling score`
    /usr/bin/python3 tools/rm_reference.py --tolerance  # also: torch float32 vs this float64,
                                                        # and deliberate mistakes

Input: tests/data/train/rm/rankings.jsonl (6 records, written by hand) and the reward model
tests/data/tiny-rm/rm-a (Starling-RM's layout: pytorch_model.bin with `transformer.*`, the Llama
decoder, and `v_head.weight` [1, hidden], no bias). Output, one fixture per loss:
tests/data/train/rm/tiny-rm-{kwise,pairwise}.fixture.safetensors, what
`starling train rm --loss kwise|pairwise --template llama-2 --no-shuffle --batch 2` must compute
(the exact command lines are below, in the fixtures' metadata and in tests/data/train/README.md):

  records  a Nectar line {"prompt": "\\n\\nHuman: ...\\n\\nAssistant: ", "answers": [{"answer",
           "rank"}, ...]} has its answers ordered by "rank" (1 = best), never by position; the
           prompt is trimmed and split at "Human:" / "Assistant:" markers (at its start or after
           "\\n\\n") into user / assistant messages, each trimmed; the trailing empty
           "Assistant:" is dropped. A pair line {"prompt", "chosen", "rejected"} with a plain
           prompt is one user turn and the ranking [chosen, rejected].
  ids      per (prompt, answer): [BOS] (the tokenizer's add_bos_token) + the llama-2 template's
           ids of prompt + [assistant: answer], as src/chat/chat_template.cpp renders it with
           this legacy tokenizer (no tokenizer_config.json): per exchange
           [<s>] + sp.encode("[INST] " + user + " ") + [</s>] + sp.encode(" [/INST] " + answer)
           + [</s>], sp.encode being plain SentencePiece with its dummy-prefix space. The ids
           start with two BOS (Starling-RM's card quirk, as `starling score` does).
  reward   v_head . (final RMSNorm'd hidden state) at the sequence's last token; each sequence
           runs alone (positions from 0).
  batches  --no-shuffle: step k uses records (2k + j) mod 6, j = 0, 1.
  losses   per record, rewards r_1..r_K best first:
             kwise     -sum_j [r_j - log sum_{k>=j} exp(r_k)] / (K - 1)
             pairwise  mean over the K(K-1)/2 pairs i better than j of -log sigmoid(r_i - r_j)
                       + C * (sum_k r_k)^2, C = --zero-sum-penalty 0.01
           the step's loss is the mean over its records.
  AdamW    train_reference.run_adamw (torch.optim.AdamW foreach=False, weight decay 0.1 on 2-D
           tensors only: matrices, the embedding and v_head; clip_grad_norm_ 1.0; constant lr)
           with lr 1e-3 and 5 steps. Every parameter is trained, the embedding included; the
           published checkpoint's extra `model.*` names (the same storages) are not parameters.

Deterministic (one thread, float64, no randomness in the data path): a rerun writes the same
bytes. Needs Debian's python3-sentencepiece besides python3-torch and NumPy.
"""

import os

# One BLAS/OpenMP thread (see train_reference.py): reruns give identical bytes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_llama as tl  # noqa: E402
import train_reference  # noqa: E402
from train_reference import (BETA1, BETA2, EPS, GRAD_CLIP, WEIGHT_DECAY,  # noqa: E402
                             central_differences, rel_l2, run_adamw, to_torch)

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = "tests/data/tiny-rm/rm-a"
DATA = "tests/data/train/rm/rankings.jsonl"
FIXTURE = "tests/data/train/rm/tiny-rm-{}.fixture.safetensors"
STARLING = os.path.join(REPO, "build", "starling")

BATCH = 2             # records (prompts) per step
STEPS = 5
LR = 1e-3
ZERO_SUM_PENALTY = 0.01  # pairwise only

BOS, EOS = 1, 2  # <s>, </s> of Llama-2's tokenizer
INST, END_INST = "[INST]", "[/INST]"

# loss name -> zero-sum penalty C (0: the option is not given)
LOSSES = {"kwise": 0.0, "pairwise": ZERO_SUM_PENALTY}


def command(loss):
    """The run whose log reproduces the fixture (from the repository root; DIR and LOG are any
    new paths; the log's "loss" and "grad_norm" of step k are adamw.losses[k-1] and
    adamw.grad_norms[k-1])."""
    penalty = f" --zero-sum-penalty {LOSSES[loss]!r}" if LOSSES[loss] else ""
    return (f"starling train rm -m {MODEL_DIR} --data {DATA} --loss {loss}{penalty} --template "
            f"llama-2 --no-shuffle --batch {BATCH} --steps {STEPS} --lr {LR!r} --weight-decay "
            f"{WEIGHT_DECAY!r} --grad-clip {GRAD_CLIP!r} --out DIR --log LOG")


# Our parameter names (torch_llama's "model.*", with v_head in the place of lm_head, so that
# torch_llama.forward's "logits" are the reward at every position) <-> the published names.
def published_name(name):
    if name == "lm_head.weight":
        return "v_head.weight"
    assert name.startswith("model."), name
    return "transformer." + name[len("model."):]


EMBED = "model.embed_tokens.weight"  # stored only at the rows of the first micro-batch


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def load_reward_model():
    """(cfg, {our name: float32 numpy}) from rm-a's pytorch_model.bin: transformer.* and
    v_head.weight (model.model.* and model.lm_head.weight are the card's module listed under a
    second name, and an unused LM head: not reward-model parameters)."""
    with open(os.path.join(REPO, MODEL_DIR, "config.json")) as f:
        cfg = tl.LlamaConfig.from_hf(json.load(f))
    state = torch.load(os.path.join(REPO, MODEL_DIR, "pytorch_model.bin"), map_location="cpu")
    weights = {}
    for key, t in state.items():
        if key.startswith("transformer."):
            weights["model." + key[len("transformer."):]] = t.float().numpy().copy()
        elif key == "v_head.weight":
            weights["lm_head.weight"] = t.float().numpy().copy()
    expected = dict(cfg.parameter_shapes(), **{"lm_head.weight": (1, cfg.hidden_size)})
    assert {n: a.shape for n, a in weights.items()} == expected
    return cfg, dict(sorted(weights.items()))


def rewards_of(cfg, params, sequences):
    """The reward of each sequence (a list of id lists), each run alone: a 1-D tensor."""
    out = []
    for ids in sequences:
        per_position = tl.forward(cfg, params, torch.tensor([ids], dtype=torch.long))[0, :, 0]
        out.append(per_position[-1])
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# Data: records, the llama-2 rendering, the --no-shuffle order
# --------------------------------------------------------------------------------------------

_WS = " \n\t\r"


def split_human_assistant(prompt):
    """Nectar's prompt as messages (an independent reading of ParseHumanAssistantPrompt)."""
    parts = re.split(r"(?:^|\n\n)(Human:|Assistant:)", prompt.strip(_WS))
    assert parts[0] == "" and parts[1] == "Human:", prompt
    messages = []
    for i in range(1, len(parts), 2):
        role = "user" if parts[i] == "Human:" else "assistant"
        assert role == ("user" if len(messages) % 2 == 0 else "assistant"), prompt
        messages.append({"role": role, "content": parts[i + 1].strip(_WS)})
    if messages[-1]["role"] == "assistant":
        assert messages[-1]["content"] == "", prompt
        messages.pop()
    return messages


def parse_record(line):
    """(prompt messages, answers best first)."""
    rec = json.loads(line)
    if "answers" in rec:
        ranks = [a["rank"] for a in rec["answers"]]
        assert all(float(r) == int(r) for r in ranks) and len(set(ranks)) == len(ranks), line
        answers = [a["answer"] for a in sorted(rec["answers"], key=lambda a: a["rank"])]
        return split_human_assistant(rec["prompt"]), answers
    assert "Human:" not in rec["prompt"], line  # a plain prompt: one user turn
    return [{"role": "user", "content": rec["prompt"]}], [rec["chosen"], rec["rejected"]]


def render_llama2(sp, messages, add_bos=True):
    """[BOS] + the llama-2 template's ids of a conversation that ends with the assistant."""
    ids = [BOS] if add_bos else []
    for i in range(0, len(messages), 2):
        assert messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"
        ids += [BOS] + sp.encode(f"{INST} {messages[i]['content']} ") + [EOS]
        ids += sp.encode(f" {END_INST} {messages[i + 1]['content']}") + [EOS]
    return ids


def load_records(sp, file_order=False, add_bos=True):
    """[{"messages": prompt, "answers": [...best first], "ids": [[...] per answer]}].
    file_order / add_bos=False are deliberate mistakes (answers in file order; one BOS)."""
    out = []
    with open(os.path.join(REPO, DATA), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            prompt, answers = parse_record(line)
            if file_order:
                rec = json.loads(line)
                answers = ([a["answer"] for a in rec["answers"]] if "answers" in rec
                           else answers)
            ids = [render_llama2(sp, prompt + [{"role": "assistant", "content": a}], add_bos)
                   for a in answers]
            assert all(len(s) < 100 for s in ids), line
            out.append({"messages": prompt, "answers": answers, "ids": ids})
    return out


def micro_batch(step, n):
    """--no-shuffle: the record indices of step `step`."""
    return [(step * BATCH + j) % n for j in range(BATCH)]


# --------------------------------------------------------------------------------------------
# Losses and training
# --------------------------------------------------------------------------------------------

def record_loss(r, loss, penalty, mistake=None):
    """One record's loss from its rewards r (best first)."""
    K = r.shape[0]
    if loss == "kwise":
        # -sum_j [r_j - logsumexp(r_j..r_K)]; the j = K term is 0.
        terms = torch.stack([r[j] - torch.logsumexp(r[j:], 0) for j in range(K)])
        total = -terms.sum()
        if mistake == "kwise_unnormalized":
            return total
        if mistake == "kwise_over_k":
            return total / K
        out = total / (K - 1)
    else:
        pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
        if mistake == "pairwise_adjacent":
            pairs = [(i, i + 1) for i in range(K - 1)]
        out = torch.stack([-torch.nn.functional.logsigmoid(r[i] - r[j])
                           for i, j in pairs]).mean()
    if penalty and mistake != "no_penalty":
        out = out + penalty * r.sum() ** 2
    return out


def step_loss_of(cfg, params, records, loss, penalty, mistake=None, keep_rewards=None):
    per_record = []
    for rec in records:
        r = rewards_of(cfg, params, rec["ids"])
        if keep_rewards is not None:
            keep_rewards.append(r.detach().clone())
        per_record.append(record_loss(r, loss, penalty, mistake))
    total = torch.stack(per_record).sum()
    return total if mistake == "sum_over_records" else total / len(per_record)


@contextlib.contextmanager
def rm_schedule():
    """run_adamw with this fixture's lr and step count (train_reference's module constants)."""
    saved = train_reference.LR, train_reference.STEPS
    train_reference.LR, train_reference.STEPS = LR, STEPS
    try:
        yield
    finally:
        train_reference.LR, train_reference.STEPS = saved


def train(cfg, weights_np, records, loss, dtype, reverse_within_batch=False, mistake=None):
    """STEPS AdamW steps over the --no-shuffle micro-batches; also the first step's rewards."""
    params = to_torch(weights_np, dtype)
    first_rewards = []
    frozen = {}
    if mistake == "frozen_embedding":
        frozen = {EMBED: params.pop(EMBED).detach()}
    if mistake == "no_decay_v_head":  # v_head as a 1-D tensor: no weight decay
        params["lm_head.weight"] = params["lm_head.weight"].detach().view(-1).requires_grad_()

    def model_params():
        p = dict(params, **frozen)
        if p["lm_head.weight"].dim() == 1:
            p["lm_head.weight"] = p["lm_head.weight"].view(1, -1)
        return p

    def step_loss(step):
        batch = micro_batch(step, len(records))
        if reverse_within_batch:
            batch = batch[::-1]
        keep = first_rewards if step == 0 else None
        return step_loss_of(cfg, model_params(), [records[i] for i in batch], loss,
                            LOSSES[loss], mistake, keep)

    with rm_schedule():
        result = run_adamw(params, step_loss)
    if reverse_within_batch:
        first_rewards.reverse()
    result["rewards"] = first_rewards
    return result


def first_batch_rows(records):
    """The distinct ids (sorted) of the first micro-batch's sequences."""
    return sorted({t for i in micro_batch(0, len(records)) for s in records[i]["ids"] for t in s})


def write_fixture(loss, records, result):
    tensors = {
        "loss": np.array([result["loss"]], dtype=np.float64),
        "adamw.losses": np.array(result["losses"], dtype=np.float64),
        "adamw.grad_norms": np.array(result["grad_norms"], dtype=np.float64),
    }
    for i, rec in enumerate(records):
        for a, ids in enumerate(rec["ids"]):
            tensors[f"ids.{i}.{a}"] = np.array(ids, dtype=np.int32)
    for j, r in zip(micro_batch(0, len(records)), result["rewards"]):
        tensors[f"rewards.{j}"] = r.numpy().astype(np.float64)
    rows = first_batch_rows(records)
    for n, g in result["grads"].items():
        name = published_name(n)
        if n == EMBED:
            tensors["grad_rows." + name] = np.array(rows, dtype=np.int32)
            tensors["grad." + name] = g[rows].numpy().astype(np.float32)
            tensors["grad_norm." + name] = np.array([float(g.norm())], dtype=np.float64)
        else:
            tensors["grad." + name] = g.numpy().astype(np.float32)
    metadata = {
        "model": MODEL_DIR, "data": DATA, "template": "llama-2", "records": len(records),
        "answers": " ".join(str(len(r["ids"])) for r in records),
        "loss": loss, "zero_sum_penalty": repr(LOSSES[loss]), "batch": BATCH, "steps": STEPS,
        "order": "no-shuffle: step k uses records (k*batch + j) mod records, j = 0..batch-1; "
                 "answers best first by rank",
        "ids": "ids.<record>.<answer>: [BOS] + the llama-2 rendering of prompt + answer (two BOS)",
        "reward": "v_head . final-normed hidden state at the last token, each sequence alone",
        "lr": repr(LR), "schedule": "constant", "beta1": repr(BETA1), "beta2": repr(BETA2),
        "eps": repr(EPS), "weight_decay": repr(WEIGHT_DECAY),
        "decay_on": "2-D tensors: the matrices, the embedding and v_head [1, hidden]",
        "grad_clip": repr(GRAD_CLIP),
        "normalization": "mean over the step's records of the record's loss",
        "loss_grad_batch": "records 0, 1 (the first micro-batch); rewards.<record> best first",
        "grad_rows": "grad.transformer.embed_tokens.weight holds only the rows grad_rows.<name> "
                     "(the ids of the first micro-batch); grad_norm.<name> is the full tensor's "
                     "L2 norm",
        "command": command(loss), "generator": "tools/rm_reference.py",
        "torch": torch.__version__, "sentencepiece": spm.__version__,
    }
    path = os.path.join(REPO, FIXTURE.format(loss))
    tl.write_safetensors(path, tensors, metadata)
    return path


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

def finite_difference_check(cfg, weights_np, records, loss, grads, seed=4001, per_tensor=3):
    """train_reference.central_differences of the first micro-batch's loss at `per_tensor`
    random entries of every parameter tensor (embedding entries from rows the batch uses)."""
    params = to_torch(weights_np, torch.float64, requires_grad=False)
    batch = [records[i] for i in micro_batch(0, len(records))]
    return central_differences(
        params, lambda: step_loss_of(cfg, params, batch, loss, LOSSES[loss]).item(), grads,
        np.random.default_rng(seed), per_tensor, (EMBED,), first_batch_rows(records),
        published_name)


def check_with_starling(cfg, weights_np, records):
    """Every sequence's ids against `starling tokenize --template llama-2 --messages F --json`
    with [BOS] prepended, and its reward at the initial weights against `starling score -f`
    (float32 engine; tests/data/tiny-rm's tolerance 1e-4 + 1e-4 |r|)."""
    if not os.path.exists(STARLING):
        return [f"ids and rewards vs starling: skipped ({STARLING} not built)"]
    lines, all_ok, worst, worst_abs = [], True, 0.0, 0.0
    params = to_torch(weights_np, torch.float64, requires_grad=False)
    with tempfile.TemporaryDirectory() as tmp:
        score_in = os.path.join(tmp, "score.jsonl")
        with open(score_in, "w", encoding="utf-8") as sf:
            for i, rec in enumerate(records):
                for a, (answer, ids) in enumerate(zip(rec["answers"], rec["ids"])):
                    messages = rec["messages"] + [{"role": "assistant", "content": answer}]
                    sf.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                    path = os.path.join(tmp, f"r{i}a{a}.json")
                    with open(path, "w", encoding="utf-8") as f:
                        json.dump(messages, f, ensure_ascii=False)
                    out = subprocess.run(
                        [STARLING, "tokenize", "--tokenizer", MODEL_DIR, "--template", "llama-2",
                         "--messages", path, "--json"],
                        cwd=REPO, check=True, capture_output=True, text=True).stdout
                    theirs = [BOS] + json.loads(out)["ids"]
                    if theirs != ids:
                        all_ok = False
                        lines.append(f"ids of record {i} answer {a} DIFFER:\n    python   {ids}\n"
                                     f"    starling {theirs}")
        out = subprocess.run([STARLING, "score", "-m", MODEL_DIR, "--template", "llama-2", "-t",
                              "1", "-f", score_in], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout
        scored = [json.loads(x) for x in out.splitlines() if x.strip()]
    seqs = [ids for rec in records for ids in rec["ids"]]
    with torch.no_grad():
        ours = rewards_of(cfg, params, seqs)
    tokens_ok = [s["tokens"] for s in scored] == [len(s) for s in seqs]
    for s, r in zip(scored, ours.tolist()):
        worst = max(worst, abs(s["reward"] - r) / (1e-4 + 1e-4 * abs(r)))
        worst_abs = max(worst_abs, abs(s["reward"] - r))
    lines.append(f"ids vs starling tokenize (+ BOS), {len(seqs)} sequences: "
                 + ("all identical" if all_ok else "MISMATCH"))
    lines.append(f"starling score -f: token counts {'identical' if tokens_ok else 'DIFFER'}; "
                 f"rewards max |diff| {worst_abs:.1e}, max |diff| / (1e-4 + 1e-4 |r|) = {worst:.3f} "
                 "(<= 1 passes)")
    return lines


# --------------------------------------------------------------------------------------------
# --tolerance
# --------------------------------------------------------------------------------------------

MISTAKES = {  # key -> (what, losses it applies to)
    "file_order": ("answers in file order, not by rank", ("kwise", "pairwise")),
    "one_bos": ("one BOS (the template's) instead of two", ("kwise", "pairwise")),
    "kwise_unnormalized": ("kwise not divided by K - 1", ("kwise",)),
    "kwise_over_k": ("kwise divided by K instead of K - 1", ("kwise",)),
    "pairwise_adjacent": ("pairwise over adjacent pairs only", ("pairwise",)),
    "no_penalty": ("zero-sum penalty left out", ("pairwise",)),
    "sum_over_records": ("step loss summed over records, not averaged", ("kwise", "pairwise")),
    "frozen_embedding": ("embedding not trained", ("kwise", "pairwise")),
    "no_decay_v_head": ("no weight decay on v_head", ("kwise", "pairwise")),
}


def report_discrepancy(label, f32, ref):
    rels = {n: rel_l2(f32["grads"][n], ref["grads"][n]) for n in ref["grads"] if n != EMBED}
    worst = max(rels, key=rels.get)
    rows = ref["rows"]
    embed_rel = rel_l2(f32["grads"][EMBED][rows], ref["grads"][EMBED][rows])
    dr = max(float((a - b).abs().max()) for a, b in zip(f32["rewards"], ref["rewards"]))
    dl = [abs(a - b) for a, b in zip(f32["losses"], ref["losses"])]
    dn = [abs(a - b) / b for a, b in zip(f32["grad_norms"], ref["grad_norms"])]
    dp = max(rel_l2(f32["final"][n], ref["final"][n]) for n in ref["final"])
    print(f"  {label} vs float64: loss |diff| {dl[0]:.1e}; rewards max |diff| {dr:.1e}; "
          f"gradients: max rel L2 {rels[worst]:.1e} ({published_name(worst)}), median "
          f"{np.median(list(rels.values())):.1e}, embedding rows {embed_rel:.1e}; parameters "
          f"after {STEPS} steps: max rel L2 {dp:.1e}")
    print("    AdamW loss |diff| per step:   " + " ".join(f"{x:.1e}" for x in dl))
    print("    grad norm rel diff per step:  " + " ".join(f"{x:.1e}" for x in dn))


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="verify: finite differences, ids and rewards vs `build/starling`")
    ap.add_argument("--tolerance", action="store_true",
                    help="measure torch float32 against the float64 reference, and how far "
                         "deliberate mistakes move the losses")
    args = ap.parse_args()

    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, MODEL_DIR, "tokenizer.model"))
    records = load_records(sp)
    cfg, weights = load_reward_model()
    print(f"{len(records)} records, answers {[len(r['ids']) for r in records]}, lengths "
          f"{[[len(s) for s in r['ids']] for r in records]}")

    if args.check:
        for line in check_with_starling(cfg, weights, records):
            print("  check: " + line)

    for loss in LOSSES:
        ref = train(cfg, weights, records, loss, torch.float64)
        path = write_fixture(loss, records, ref)
        print(f"{loss}: loss {ref['loss']:.6f}, grad norm {ref['grad_norms'][0]:.6f}; "
              f"{os.path.relpath(path, REPO)} {os.path.getsize(path)} bytes")
        for j, r in zip(micro_batch(0, len(records)), ref["rewards"]):
            print(f"  rewards of record {j}: " + " ".join(f"{x:.6f}" for x in r.tolist()))
        print("  losses:     " + " ".join(f"{x:.6f}" for x in ref["losses"]))
        print("  grad norms: " + " ".join(f"{x:.6f}" for x in ref["grad_norms"]))
        print("  command: " + command(loss))

        if args.check:
            n, rel, absolute, at = finite_difference_check(cfg, weights, records, loss,
                                                            ref["grads"])
            print(f"  check: finite differences vs autograd at {n} entries: max rel error "
                  f"{rel:.2e} where |grad| >= 1e-5 (at {at[0]}{list(at[1])}: autograd "
                  f"{at[2]:.6e}, fd {at[3]:.6e}); max abs error {absolute:.2e}")

        if args.tolerance:
            ref["rows"] = first_batch_rows(records)
            for label, rev in (("float32", False), ("float32 batch reversed", True)):
                f32 = train(cfg, weights, records, loss, torch.float32, rev)
                report_discrepancy(label, f32, ref)
            for key, (what, applies) in MISTAKES.items():
                if loss not in applies:
                    continue
                if key in ("file_order", "one_bos"):
                    data = load_records(sp, file_order=key == "file_order",
                                        add_bos=key != "one_bos")
                    wrong = train(cfg, weights, data, loss, torch.float64)
                else:
                    wrong = train(cfg, weights, records, loss, torch.float64, mistake=key)
                dl = [abs(a - b) for a, b in zip(wrong["losses"], ref["losses"])]
                dn = [abs(a - b) / b for a, b in zip(wrong["grad_norms"], ref["grad_norms"])]
                print(f"  mistake '{what}': step-1 loss |diff| {dl[0]:.1e}, losses max |diff| "
                      f"{max(dl):.1e}, grad norms max rel diff {max(dn):.1e}")


if __name__ == "__main__":
    main()
