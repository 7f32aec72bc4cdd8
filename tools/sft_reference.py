#!/usr/bin/env python3
"""PyTorch float64 reference fixture for supervised fine-tuning (tests/data/train/sft/).

Run from anywhere (paths are relative to the repository):
    /usr/bin/python3 tools/sft_reference.py              # (re)writes the fixture
    /usr/bin/python3 tools/sft_reference.py --check      # also: finite differences, and the ids
                                                         # against `build/starling tokenize`
    /usr/bin/python3 tools/sft_reference.py --tolerance  # also: torch float32 vs this float64,
                                                         # and deliberate masking mistakes

Input: tests/data/train/sft/chats.jsonl (6 conversations, written by hand) and the model
tests/data/tiny-mistral/hf. Output: tests/data/train/sft/tiny-mistral-sft.fixture.safetensors,
what `starling train sft --template openchat --no-shuffle --batch 3` must compute (the exact
command line is in the fixture's metadata and in tests/data/train/README.md):

  ids     OpenChat's own token ids (ochat's ConversationTemplate): [BOS], then for a system
          message sp.encode(content) + [<|end_of_turn|>], then per turn
          sp.encode("GPT4 Correct User:" or "GPT4 Correct Assistant:") + sp.encode(content) +
          [<|end_of_turn|>]; sp.encode is plain SentencePiece (its own dummy-prefix space, no
          special-token parsing: "<|end_of_turn|>" typed in a message is ordinary text).
  mask    a token is trained iff it belongs to an assistant message's content or is the
          <|end_of_turn|> closing an assistant turn; target position i (predicting ids[i+1])
          has loss weight = the conversation's weight if ids[i+1] is trained, else 0.
  batches --no-shuffle: micro-batch k holds conversations (k*B + j) mod N, j = 0..B-1, each its
          own sequence (inputs ids[:-1], targets ids[1:], positions from 0).
  loss    sum over the step's sequences of sum_i w_i * CE_i, divided by the number of target
          positions with w_i != 0 in the step.
  AdamW   as tools/train_reference.py: torch.optim.AdamW (foreach=False), weight decay on 2-D
          tensors only, clip_grad_norm_ before each step, constant learning rate.

Deterministic (one thread, float64, no randomness in the data path): a rerun writes the same
bytes. Needs Debian's python3-sentencepiece besides python3-torch and NumPy.
"""

import os

# One BLAS/OpenMP thread (see train_reference.py): reruns give identical bytes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_llama as tl  # noqa: E402
from train_reference import (BETA1, BETA2, EPS, GRAD_CLIP, LR, STEPS,  # noqa: E402
                             WEIGHT_DECAY, central_differences, rel_l2, run_adamw,
                             to_torch)

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = "tests/data/tiny-mistral/hf"
DATA = "tests/data/train/sft/chats.jsonl"
FIXTURE = "tests/data/train/sft/tiny-mistral-sft.fixture.safetensors"
STARLING = os.path.join(REPO, "build", "starling")

BATCH = 3   # conversations per micro-batch (= per optimizer step: no accumulation)
CTX = 64    # --ctx for the command line; every conversation here is <= 40 tokens

BOS, EOT = 1, 32000  # <s>, <|end_of_turn|> (tiny-mistral's added token)
USER_PREFIX, ASSISTANT_PREFIX = "GPT4 Correct User:", "GPT4 Correct Assistant:"

# The 10 losses of the fixture are what this prints (from the repository root; DIR and LOG are
# any new paths; the log's "loss" and "grad_norm" of step k are adamw.losses[k-1] and
# adamw.grad_norms[k-1]).
COMMAND = (f"starling train sft -m {MODEL_DIR} --template openchat --data {DATA} --no-shuffle "
           f"--batch {BATCH} --ctx {CTX} --steps {STEPS} --lr {LR:g} --weight-decay "
           f"{WEIGHT_DECAY:g} --grad-clip {GRAD_CLIP:g} --out DIR --log LOG")

# The two [V, 64] tensors are stored only at the rows the first micro-batch uses.
ROW_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


# --------------------------------------------------------------------------------------------
# Data: the openchat rendering, the mask and the --no-shuffle order
# --------------------------------------------------------------------------------------------

def render_openchat(sp, messages):
    """(ids, trained) for one conversation: OpenChat's token ids and, per token, whether SFT
    trains it. Roles: an optional leading system message, then user and assistant alternating,
    starting with user."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages[first:], start=first):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        assert m["role"] == expected, f"message {i}: expected {expected}, got {m['role']}"
    ids, trained = [BOS], [False]
    for m in messages:
        if m["role"] == "system":
            part = sp.encode(m["content"]) + [EOT]
            ids += part
            trained += [False] * len(part)
            continue
        assistant = m["role"] == "assistant"
        prefix = sp.encode(ASSISTANT_PREFIX if assistant else USER_PREFIX)
        body = sp.encode(m["content"]) + [EOT]
        ids += prefix + body
        trained += [False] * len(prefix) + [assistant] * len(body)
    return ids, trained


def load_conversations(sp):
    """[(ids int32 [n], loss weights float32 [n-1], messages)] in file order."""
    out = []
    with open(os.path.join(REPO, DATA), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            conv = json.loads(line)
            ids, trained = render_openchat(sp, conv["messages"])
            w = float(conv.get("weight", 1.0))
            weights = np.array([w if t else 0.0 for t in trained[1:]], dtype=np.float32)
            # Conversations without a trained token would be dropped before indexing; keep
            # the data free of them (and within --ctx) so that the order is unambiguous.
            assert (weights != 0).any() and len(ids) <= min(40, CTX + 1), line
            out.append((np.array(ids, dtype=np.int32), weights, conv["messages"]))
    return out


def micro_batch(step, n):
    """--no-shuffle: the conversation indices of micro-batch `step`."""
    return [(step * BATCH + j) % n for j in range(BATCH)]


# --------------------------------------------------------------------------------------------
# Loss and training
# --------------------------------------------------------------------------------------------

def step_loss_of(cfg, params, seqs, normalization="count"):
    """sum over sequences of sum_i w_i * CE_i, over count(w_i != 0) in the step. `seqs` is a
    list of (ids, weights) numpy pairs; each sequence runs alone (positions from 0, attention
    within itself). normalization "sum_w" or "per_sequence" are deliberate mistakes."""
    dtype = params["model.embed_tokens.weight"].dtype
    total, count, per_seq = 0.0, 0, []
    for ids, w_np in seqs:
        ids_t = torch.tensor(ids, dtype=torch.long)
        w = torch.tensor(w_np, dtype=dtype)
        logits = tl.forward(cfg, params, ids_t[None, :-1])[0]
        ce = -torch.log_softmax(logits, dim=-1).gather(-1, ids_t[1:, None]).squeeze(-1)
        total = total + (w * ce).sum()
        count += int((w != 0).sum())
        per_seq.append((w * ce).sum() / int((w != 0).sum()))
    if normalization == "sum_w":
        return total / float(sum(float(w.sum()) for _, w in seqs))
    if normalization == "per_sequence":
        return sum(per_seq) / len(per_seq)
    return total / count


def train(cfg, weights_np, convs, dtype, reverse_within_batch=False, normalization="count"):
    """STEPS AdamW steps (train_reference.run_adamw) over the --no-shuffle micro-batches."""
    params = to_torch(weights_np, dtype)

    def step_loss(step):
        batch = micro_batch(step, len(convs))
        if reverse_within_batch:
            batch = batch[::-1]
        return step_loss_of(cfg, params, [convs[i][:2] for i in batch], normalization)

    return run_adamw(params, step_loss)


def first_batch_rows(convs):
    """The distinct ids (sorted) of the first micro-batch's conversations."""
    return sorted({int(t) for i in micro_batch(0, len(convs)) for t in convs[i][0]})


def write_fixture(convs, result):
    tensors = {
        "loss": np.array([result["loss"]], dtype=np.float64),
        "adamw.losses": np.array(result["losses"], dtype=np.float64),
        "adamw.grad_norms": np.array(result["grad_norms"], dtype=np.float64),
    }
    for i, (ids, w, _) in enumerate(convs):
        tensors[f"ids.{i}"] = ids.astype(np.int32)
        tensors[f"weights.{i}"] = w.astype(np.float32)
    rows = first_batch_rows(convs)
    for n, g in result["grads"].items():
        if n in ROW_TENSORS:
            tensors["grad_rows." + n] = np.array(rows, dtype=np.int32)
            tensors["grad." + n] = g[rows].numpy().astype(np.float32)
            tensors["grad_norm." + n] = np.array([float(g.norm())], dtype=np.float64)
        else:
            tensors["grad." + n] = g.numpy().astype(np.float32)
    metadata = {
        "model": MODEL_DIR, "data": DATA, "template": "openchat", "conversations": len(convs),
        "batch": BATCH, "ctx": CTX, "steps": STEPS, "order": "no-shuffle: step k uses "
        "conversations (k*batch + j) mod conversations, j = 0..batch-1",
        "lr": repr(LR), "schedule": "constant", "beta1": repr(BETA1), "beta2": repr(BETA2),
        "eps": repr(EPS), "weight_decay": repr(WEIGHT_DECAY), "grad_clip": repr(GRAD_CLIP),
        "normalization": "sum over the step's sequences of sum(w*ce), / count(w!=0) in the step",
        "loss_grad_batch": "conversations 0, 1, 2 (the first micro-batch)",
        "grad_rows": "grad.<embed_tokens|lm_head> hold only the rows grad_rows.<name> (the ids "
                     "of the first micro-batch); grad_norm.<name> is the full tensor's L2 norm",
        "command": COMMAND, "generator": "tools/sft_reference.py", "torch": torch.__version__,
        "sentencepiece": spm.__version__,
    }
    path = os.path.join(REPO, FIXTURE)
    tl.write_safetensors(path, tensors, metadata)
    return path


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

def finite_difference_check(cfg, weights_np, convs, grads, seed=3001, per_tensor=3):
    """train_reference.central_differences of the first micro-batch's loss at `per_tensor`
    random entries of every parameter tensor (embedding and lm_head entries from rows the batch
    uses)."""
    params = to_torch(weights_np, torch.float64, requires_grad=False)
    seqs = [convs[i][:2] for i in micro_batch(0, len(convs))]
    return central_differences(params, lambda: step_loss_of(cfg, params, seqs).item(), grads,
                               np.random.default_rng(seed), per_tensor, ROW_TENSORS,
                               first_batch_rows(convs))


def check_ids_with_starling(convs):
    """Each conversation's ids against `build/starling tokenize --template openchat --messages
    FILE --json` (the C++ renderer). Returns a list of report lines."""
    if not os.path.exists(STARLING):
        return [f"ids vs starling tokenize: skipped ({STARLING} not built)"]
    lines, all_ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ids, _, messages) in enumerate(convs):
            path = os.path.join(tmp, f"conv{i}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(messages, f, ensure_ascii=False)
            out = subprocess.run([STARLING, "tokenize", "--tokenizer", MODEL_DIR, "--template",
                                  "openchat", "--messages", path, "--json"], cwd=REPO,
                                 check=True, capture_output=True, text=True).stdout
            theirs = json.loads(out)["ids"]
            ok = theirs == ids.tolist()
            all_ok &= ok
            lines.append(f"ids vs starling tokenize, conversation {i} ({len(ids)} tokens): "
                         + ("identical" if ok else f"DIFFER: starling {theirs}"))
    lines.append("ids vs starling tokenize: " + ("all identical" if all_ok else "MISMATCH"))
    return lines


# --------------------------------------------------------------------------------------------
# --tolerance: deliberate mistakes in the data path (how far each moves the losses)
# --------------------------------------------------------------------------------------------

def mistaken_data(convs, mistake):
    """The conversations with one data rule deliberately wrong."""
    out = []
    for ids, w, messages in convs:
        w = w.copy()
        if mistake == "train_everything":  # every target position trained
            w[:] = w.max()
        elif mistake == "no_eot":  # the closing <|end_of_turn|> of assistant turns not trained
            w[(ids[1:] == EOT)] = 0.0
        elif mistake == "unweighted":  # conversation weights ignored
            w[w != 0] = 1.0
        out.append((ids, w, messages))
    return out


MISTAKES = {
    "train_everything": "every target trained (no assistant mask)",
    "no_eot": "the closing <|end_of_turn|> not trained",
    "unweighted": "conversation weights ignored",
    "sum_w": "normalized by sum(w) instead of count(w != 0)",
    "per_sequence": "mean per sequence, then averaged over the batch",
}


def report_discrepancy(label, f32, ref):
    rels = {n: rel_l2(f32["grads"][n], ref["grads"][n]) for n in ref["grads"]}
    worst = max(rels, key=rels.get)
    dl = [abs(a - b) for a, b in zip(f32["losses"], ref["losses"])]
    dn = [abs(a - b) / b for a, b in zip(f32["grad_norms"], ref["grad_norms"])]
    dp = max(rel_l2(f32["final"][n], ref["final"][n]) for n in ref["final"])
    row_rels = []
    rows = ref["rows"]
    for n in ROW_TENSORS:
        row_rels.append(rel_l2(f32["grads"][n][rows], ref["grads"][n][rows]))
    print(f"  {label} vs float64: initial loss |diff| {dl[0]:.1e}; gradients: max rel L2 "
          f"{rels[worst]:.1e} ({worst}), median {np.median(list(rels.values())):.1e}; stored "
          f"rows of embed/lm_head rel L2 {row_rels[0]:.1e} / {row_rels[1]:.1e}; parameters "
          f"after {STEPS} steps: max rel L2 {dp:.1e}")
    print("    AdamW loss |diff| per step: " + " ".join(f"{x:.1e}" for x in dl))
    print("    grad norm rel diff per step:  " + " ".join(f"{x:.1e}" for x in dn))


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="verify: finite differences, ids vs `build/starling tokenize`")
    ap.add_argument("--tolerance", action="store_true",
                    help="measure torch float32 against the float64 reference, and how far "
                         "deliberate data-path mistakes move the losses")
    args = ap.parse_args()

    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, MODEL_DIR, "tokenizer.model"))
    convs = load_conversations(sp)
    hf, cfg, weights = tl.load_hf_model(os.path.join(REPO, MODEL_DIR))
    assert list(weights) == list(cfg.parameter_shapes())

    ref = train(cfg, weights, convs, torch.float64)
    path = write_fixture(convs, ref)
    trained = [int((w != 0).sum()) for _, w, _ in convs]
    print(f"{len(convs)} conversations, lengths {[len(c[0]) for c in convs]}, trained targets "
          f"{trained}")
    print(f"loss {ref['loss']:.6f}, grad norm {ref['grad_norms'][0]:.4f}; "
          f"{os.path.relpath(path, REPO)} {os.path.getsize(path)} bytes")
    print("  losses:     " + " ".join(f"{x:.5f}" for x in ref["losses"]))
    print("  grad norms: " + " ".join(f"{x:.4f}" for x in ref["grad_norms"]))
    print("  command: " + COMMAND)

    if args.check:
        n, rel, absolute, at = finite_difference_check(cfg, weights, convs, ref["grads"])
        print(f"  check: finite differences vs autograd at {n} entries: max rel error {rel:.2e} "
              f"where |grad| >= 1e-5 (at {at[0]}{list(at[1])}: autograd {at[2]:.6e}, fd "
              f"{at[3]:.6e}); max abs error {absolute:.2e}")
        for line in check_ids_with_starling(convs):
            print("  check: " + line)

    if args.tolerance:
        ref["rows"] = first_batch_rows(convs)
        for label, rev in (("float32", False), ("float32 batch reversed", True)):
            report_discrepancy(label, train(cfg, weights, convs, torch.float32, rev), ref)
        for key, what in MISTAKES.items():
            if key in ("sum_w", "per_sequence"):
                wrong = train(cfg, weights, convs, torch.float64, normalization=key)
            else:
                wrong = train(cfg, weights, mistaken_data(convs, key), torch.float64)
            print(f"  mistake '{what}': initial loss {wrong['loss']:.4f} (|diff| "
                  f"{abs(wrong['loss'] - ref['loss']):.1e}), AdamW losses max |diff| "
                  f"{max(abs(a - b) for a, b in zip(wrong['losses'], ref['losses'])):.1e}")


if __name__ == "__main__":
    main()
