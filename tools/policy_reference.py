#!/usr/bin/env python3
"""PyTorch float64 reference fixture for policy tuning's minibatch loss (tests/data/train/policy/).

Run from anywhere (paths are relative to the repository):
    /usr/bin/python3 tools/policy_reference.py              # (re)writes the fixture
    /usr/bin/python3 tools/policy_reference.py --check      # also: finite differences, GAE by an
                                                            # explicit sum, the losses by loops
    /usr/bin/python3 tools/policy_reference.py --tolerance  # also: torch float32 vs this float64,
                                                            # and deliberate mistakes

What `PolicyMinibatchLoss` (src/train/policy_train.h) must compute for one minibatch of fixed
rollouts, for PPO, APA as published (microsoft/RLHF-APA) and APA as the Starling trlx fork runs it,
exactly as trlx's loss() does (trlx/models/modeling_ppo.py: get_advantages_and_returns and
PPOConfig.loss; RLHF-APA's modeling_sppo.py for the square loss). The model is
tests/data/train/tiny-mistral-window (vocab 512, hidden 64, 2 layers, sliding window 5) plus a
seeded, nonzero linear value head `value_head.weight` [1, 64] stored in the fixture. Output:
tests/data/train/policy/tiny-mistral-window-policy.fixture.safetensors.

  rollouts  4 rollouts (seeded): a context of P ids (BOS = 1 first, the rest in [3, 512)) and a
            response of T ids in [3, 512), (P, T) = (4, 6), (9, 1), (6, 9), (12, 4): M = 20
            response tokens. old_logps, ref_logps and old_values [T] (float32, as a Rollout holds
            them) are the model's own float64 log-probs and values plus seeded noise (std 0.2,
            0.3 and 0.25), so the policy is near, not at, the rollout policy and the reference.
  sequence  per rollout, alone: inputs context ++ response[:-1], positions 0.., targets shifted by
            one; response token t is predicted at row P - 1 + t.
  logps     log softmax(logits[row])[response[t]] at those rows (the current weights).
  values    value_head . h[row], h = the final RMSNorm'd hidden state of that row (the state whose
            next token is response[t], as trlx's values[:, start:end] with start = P - 1).
  rewards   per token -kl_coef (old_logps - ref_logps), plus the case's score at the last token
            (trlx's make_experience; computed from the float32 inputs in float64).
  GAE       per rollout, from its rewards and old_values (not the current values):
            delta_t = r_t + gamma V_{t+1} - V_t (V_T = 0), A_t = delta_t + gamma lam A_{t+1},
            returns_t = A_t + V_t (before whitening).
  whiten    when the case says so: A = (A - mean) / sqrt(var + 1e-8) over the minibatch's M
            response tokens, var unbiased (torch.var; TRL's masked_whiten). trlx's own whiten runs
            over its right-padded [B, max T] tensor, pads (advantage 0) included; a minibatch of
            whole sequences has no such padding, so the fixture whitens the M real tokens.
  value     0.5 mean max((V - R)^2, (clamp(V, V_old - c, V_old + c) - R)^2), c = cliprange_value,
            or 0.5 mean (V - R)^2 when c = 0 (RLHF-APA's unclipped loss).
  policy    PPO: mean max(-A ratio, -A clamp(ratio, 1 - 0.2, 1 + 0.2)), ratio = exp(logp - old);
            APA paper: mean (logp - adv_coeff A - ref_logp)^2 (RLHF-APA stores the reference's
            log-probs as the rollout's, and puts no KL in the reward: kl_coef 0);
            APA Starling: mean (logp - A - old_logp)^2.
  loss      policy + vf_coef value; APA Starling only: when the value loss exceeds 1, the loss is
            vf_coef value alone (the fork's rule: the step trains the value head only).
  stats     clip_fraction: PPO's fraction of tokens where the clipped term is strictly larger (0
            for APA); value_clip_fraction: the same for the value terms (0 when c = 0);
            approx_kl: mean of (ratio - 1) - log ratio. All means over the M tokens (trlx's
            approx_kl takes torch.mean over the padded batch; here there is no padding).
  grads     d loss / d every parameter (the 21 model tensors and the value head), float64
            autograd; advantages and returns are constants (computed from the rollouts).

Cases (tests/data/train/README.md, policy section, lists the numbers):
  ppo                      kl 0.05, gamma 1, lam 0.95, whitened, cliprange 0.2 (active on some
                           tokens), cliprange_value 0.2, vf_coef 1
  apa_paper                kl 0, gamma 1, lam 0.95, whitened, adv_coeff 10, unclipped value loss
  apa_starling             kl 0.01, gamma 0.99, lam 0.9, not whitened, cliprange_value 0.2
  apa_starling_value_only  as apa_starling with gamma 1, lam 0.95 and scores 4x larger: value
                           loss > 1, so the policy term is dropped

Deterministic (one thread, float64, seeded PCG64): a rerun writes the same bytes.
"""

import os

# One BLAS/OpenMP thread (see train_reference.py): reruns give identical bytes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_llama as tl  # noqa: E402
from train_reference import central_differences, rel_l2, to_torch  # noqa: E402

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = "tests/data/train/tiny-mistral-window"
FIXTURE = "tests/data/train/policy/tiny-mistral-window-policy.fixture.safetensors"

SEED = 3016  # chosen so that every discrete decision is >= 5e-3 from flipping (--check prints it)
SHAPES = ((4, 6), (9, 1), (6, 9), (12, 4))  # (context P, response T) per rollout
VALUE_HEAD_STD = 0.05
NOISE = {"old_logps": 0.2, "ref_logps": 0.3, "old_values": 0.25}
SCORE_STD = 1.0
WHITEN_EPS = 1e-8
VALUE_ONLY_THRESHOLD = 1.0

# Per case: the rollout-time settings (kl_coef, the scores' scale) and PolicyUpdateConfig.
CASES = {
    "ppo": dict(algorithm="ppo", kl_coef=0.05, score_scale=1.0, gamma=1.0, lam=0.95,
                whiten=True, cliprange=0.2, cliprange_value=0.2, vf_coef=1.0, adv_coeff=10.0),
    "apa_paper": dict(algorithm="apa_paper", kl_coef=0.0, score_scale=1.0, gamma=1.0, lam=0.95,
                      whiten=True, cliprange=0.2, cliprange_value=0.0, vf_coef=1.0,
                      adv_coeff=10.0),
    "apa_starling": dict(algorithm="apa_starling", kl_coef=0.01, score_scale=1.0, gamma=0.99,
                         lam=0.9, whiten=False, cliprange=0.2, cliprange_value=0.2, vf_coef=1.0,
                         adv_coeff=10.0),
    "apa_starling_value_only": dict(algorithm="apa_starling", kl_coef=0.01, score_scale=4.0,
                                    gamma=1.0, lam=0.95, whiten=False, cliprange=0.2,
                                    cliprange_value=0.2, vf_coef=1.0, adv_coeff=10.0),
}

TERMS = ("loss", "policy_loss", "value_loss", "clip_fraction", "value_clip_fraction",
         "approx_kl")
PER_TOKEN = ("rewards", "advantages", "returns", "logps", "values")
EMBED = "model.embed_tokens.weight"  # stored at the rows the minibatch's inputs use
VALUE_HEAD = "value_head.weight"


# --------------------------------------------------------------------------------------------
# The model with a value head: logits and values of one sequence
# --------------------------------------------------------------------------------------------

def forward_with_values(cfg, params, ids):
    """(log-probs [n, V], values [n]) for the inputs `ids` (one sequence, positions 0..n-1). The
    value head rides along as an extra row of lm_head, so torch_llama's forward (unchanged)
    gives h . value_head as logit V."""
    p = dict(params)
    p["lm_head.weight"] = torch.cat([params["lm_head.weight"], params[VALUE_HEAD]], dim=0)
    out = tl.forward(cfg, p, torch.tensor(ids, dtype=torch.long)[None])[0]
    V = cfg.vocab_size
    return torch.log_softmax(out[:, :V], dim=-1), out[:, V]


def policy_outputs(cfg, params, rollouts, value_row_shift=0):
    """The current policy's log-probs and values [M] at the response tokens, rollout by rollout
    (value_row_shift: a mistake, the value read one row late)."""
    logps, values = [], []
    for r in rollouts:
        ids = np.concatenate([r["context"], r["response"][:-1]])
        lp, v = forward_with_values(cfg, params, ids)
        P, T = len(r["context"]), len(r["response"])
        rows = torch.arange(P - 1, P - 1 + T)
        logps.append(lp[rows, torch.tensor(r["response"], dtype=torch.long)])
        vrows = torch.clamp(rows + value_row_shift, max=len(ids) - 1)
        values.append(v[vrows])
    return torch.cat(logps), torch.cat(values)


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------

def make_rollouts(cfg, weights, value_head):
    """The fixed rollouts: ids, and the float32 old/ref log-probs and old values near the model's
    own (see the docstring), plus unit-scale scores (a case multiplies them by its score_scale)."""
    rng = np.random.default_rng(SEED)
    rollouts = []
    for P, T in SHAPES:
        context = np.concatenate([[1], rng.integers(3, cfg.vocab_size, P - 1)]).astype(np.int32)
        response = rng.integers(3, cfg.vocab_size, T).astype(np.int32)
        rollouts.append({"context": context, "response": response})
    params = to_torch(weights, torch.float64, requires_grad=False)
    params[VALUE_HEAD] = torch.tensor(value_head, dtype=torch.float64)
    with torch.no_grad():
        lp, v = policy_outputs(cfg, params, rollouts)
    start = 0
    for r in rollouts:
        T = len(r["response"])
        own = {"old_logps": lp[start:start + T].numpy(), "ref_logps": lp[start:start + T].numpy(),
               "old_values": v[start:start + T].numpy()}
        for key in ("old_logps", "ref_logps", "old_values"):
            r[key] = (own[key] + NOISE[key] * rng.standard_normal(T)).astype(np.float32)
        start += T
    scores = SCORE_STD * rng.standard_normal(len(rollouts))
    return rollouts, scores


# --------------------------------------------------------------------------------------------
# Rewards, GAE, whitening and the loss (trlx's definitions)
# --------------------------------------------------------------------------------------------

def penalized_rewards(r, kl_coef, score, dtype, kl_sign=1.0):
    old = torch.tensor(r["old_logps"], dtype=dtype)
    ref = torch.tensor(r["ref_logps"], dtype=dtype)
    rewards = -kl_coef * kl_sign * (old - ref)
    rewards[-1] += score
    return rewards


def gae(rewards, values, gamma, lam):
    """trlx's get_advantages_and_returns for one response (no whitening)."""
    T = len(rewards)
    last = 0.0
    out = [None] * T
    for t in reversed(range(T)):
        next_value = values[t + 1] if t < T - 1 else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        out[t] = last
    advantages = torch.stack(out)
    return advantages, advantages + values


def whiten(x, unbiased=True):
    var, mean = torch.var_mean(x, unbiased=unbiased)
    return (x - mean) * torch.rsqrt(var + WHITEN_EPS)


def advantages_and_returns(rollouts, scores, case, dtype, mistake=None):
    """rewards, advantages (whitened when the case says so) and returns [M], constants."""
    rewards, advs, rets = [], [], []
    lam = 1.0 if mistake == "lam_1" else case["lam"]
    for r, s in zip(rollouts, scores):
        rw = penalized_rewards(r, case["kl_coef"], s * case["score_scale"], dtype,
                               -1.0 if mistake == "kl_sign" else 1.0)
        values = torch.tensor(r["old_values"], dtype=dtype)
        if mistake == "gae_reversed_values":  # V_{t+1} and V_t swapped
            values = values.flip(0)
        a, ret = gae(rw, values, case["gamma"], lam)
        rewards.append(rw), advs.append(a), rets.append(ret)
    advantages, returns = torch.cat(advs), torch.cat(rets)
    if mistake == "returns_after_whitening" and case["whiten"]:
        advantages = whiten(advantages)
        returns = advantages + torch.cat([torch.tensor(r["old_values"], dtype=dtype)
                                          for r in rollouts])
    elif mistake == "whiten_padded" and case["whiten"]:
        # trlx's whiten over a right-padded [B, max T] tensor (pads 0) instead of the M tokens.
        width = max(len(r["response"]) for r in rollouts)
        padded = torch.zeros(len(rollouts), width, dtype=dtype)
        start = 0
        for b, r in enumerate(rollouts):
            T = len(r["response"])
            padded[b, :T] = advantages[start:start + T]
            start += T
        var, mean = torch.var_mean(padded)
        advantages = (advantages - mean) * torch.rsqrt(var + WHITEN_EPS)
    elif case["whiten"] != (mistake == "whiten_flipped"):
        advantages = whiten(advantages, unbiased=mistake != "whiten_biased")
    return torch.cat(rewards), advantages.detach(), returns.detach()


def trlx_loss(case, logps, values, old_logps, ref_logps, old_values, advantages, returns,
              mistake=None):
    """(loss tensor, {term: float}) as trlx computes them over the M tokens (mask all ones)."""
    n = len(logps)
    c = case["cliprange_value"]
    if mistake == "value_unclipped":
        c = 0.0
    vf_loss1 = (values - returns) ** 2
    if c > 0:
        values_clipped = torch.clamp(values, old_values - c, old_values + c)
        vf_loss2 = (values_clipped - returns) ** 2
        vf_loss = 0.5 * torch.max(vf_loss1, vf_loss2).sum() / n
        vf_clipfrac = float((vf_loss2 > vf_loss1).double().sum()) / n
    else:
        vf_loss = 0.5 * vf_loss1.sum() / n
        vf_clipfrac = 0.0
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        approx_kl = float(((ratio - 1) - log_ratio).mean())
    clipfrac = 0.0
    alg = case["algorithm"]
    if alg == "ppo":
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - case["cliprange"],
                                             1.0 + case["cliprange"])
        if mistake == "ppo_min":
            pg_loss = torch.min(pg_loss1, pg_loss2).sum() / n
        else:
            pg_loss = torch.max(pg_loss1, pg_loss2).sum() / n
        clipfrac = float((pg_loss2 > pg_loss1).double().sum()) / n
    elif alg == "apa_paper":
        anchor = old_logps if mistake == "apa_anchor_swapped" else ref_logps
        pg_loss = ((logps - case["adv_coeff"] * advantages - anchor) ** 2).sum() / n
    else:  # apa_starling
        anchor = ref_logps if mistake == "apa_anchor_swapped" else old_logps
        pg_loss = ((logps - advantages - anchor) ** 2).sum() / n
    vf_coef = case["vf_coef"]
    loss = pg_loss + vf_coef * vf_loss
    value_only = (alg == "apa_starling" and float(vf_loss) > VALUE_ONLY_THRESHOLD
                  and mistake != "no_value_only_rule")
    if value_only:
        loss = vf_coef * vf_loss
    terms = {"loss": float(loss), "policy_loss": float(pg_loss), "value_loss": float(vf_loss),
             "clip_fraction": clipfrac, "value_clip_fraction": vf_clipfrac,
             "approx_kl": approx_kl, "value_only": value_only}
    return loss, terms


def flat(rollouts, key, dtype):
    return torch.cat([torch.tensor(r[key], dtype=dtype) for r in rollouts])


def run_case(cfg, weights, value_head, rollouts, scores, case, dtype, mistake=None,
             reverse=False, keep_graph_params=None):
    """Everything the fixture holds for one case, in `dtype`. `reverse`: the rollouts in the
    opposite order (the same numbers, another summation order), results put back in order."""
    order = list(range(len(rollouts)))[::-1] if reverse else list(range(len(rollouts)))
    rs = [rollouts[i] for i in order]
    sc = [scores[i] for i in order]
    params = keep_graph_params
    if params is None:
        params = to_torch(weights, dtype)
        params[VALUE_HEAD] = torch.tensor(value_head, dtype=dtype, requires_grad=True)
    rewards, advantages, returns = advantages_and_returns(rs, sc, case, dtype, mistake)
    logps, values = policy_outputs(cfg, params, rs, 1 if mistake == "value_row_late" else 0)
    loss, terms = trlx_loss(case, logps, values, flat(rs, "old_logps", dtype),
                            flat(rs, "ref_logps", dtype), flat(rs, "old_values", dtype),
                            advantages, returns, mistake)
    if keep_graph_params is not None:
        return loss
    loss.backward()
    out = {"terms": terms, "rewards": rewards, "advantages": advantages, "returns": returns,
           "logps": logps.detach(), "values": values.detach(),
           "grads": {n: p.grad.detach().clone() for n, p in params.items()},
           "ratio": torch.exp(logps - flat(rs, "old_logps", dtype)).detach(),
           "old_values": flat(rs, "old_values", dtype)}
    if reverse:  # per-token tensors back in rollout order
        lengths = [len(r["response"]) for r in rs]
        for key in PER_TOKEN + ("ratio", "old_values"):
            pieces = list(torch.split(out[key], lengths))[::-1]
            out[key] = torch.cat(pieces)
    return out


# --------------------------------------------------------------------------------------------
# The fixture
# --------------------------------------------------------------------------------------------

def used_rows(rollouts):
    """The sorted distinct input ids of the minibatch (the embedding's nonzero gradient rows)."""
    return sorted({int(t) for r in rollouts
                   for t in np.concatenate([r["context"], r["response"][:-1]])})


def write_fixture(rollouts, scores, value_head, results):
    tensors = {VALUE_HEAD: value_head.astype(np.float32)}
    for i, r in enumerate(rollouts):
        for key in ("context", "response"):
            tensors[f"rollout.{i}.{key}"] = r[key].astype(np.int32)
        for key in ("old_logps", "ref_logps", "old_values"):
            tensors[f"rollout.{i}.{key}"] = r[key].astype(np.float32)
    rows = used_rows(rollouts)
    tensors["grad_rows." + EMBED] = np.array(rows, dtype=np.int32)
    for name, case in CASES.items():
        res = results[name]
        tensors[f"{name}.scores"] = np.asarray(scores * case["score_scale"], dtype=np.float64)
        for key in PER_TOKEN:
            tensors[f"{name}.{key}"] = res[key].numpy().astype(np.float64)
        for key in TERMS:
            tensors[f"{name}.{key}"] = np.array([res["terms"][key]], dtype=np.float64)
        tensors[f"{name}.value_only"] = np.array([int(res["terms"]["value_only"])],
                                                 dtype=np.int32)
        for n, g in res["grads"].items():
            if n == EMBED:
                tensors[f"{name}.grad.{n}"] = g[rows].numpy().astype(np.float32)
                tensors[f"{name}.grad_norm.{n}"] = np.array([float(g.norm())], dtype=np.float64)
            else:
                tensors[f"{name}.grad.{n}"] = g.numpy().astype(np.float32)
    cases = {name: {k: v for k, v in case.items()} for name, case in CASES.items()}
    metadata = {
        "model": MODEL_DIR,
        "cases": json.dumps(cases, sort_keys=True, separators=(",", ":")),
        "rollouts": "rollout.<i>.<context|response> (I32) and <old_logps|ref_logps|old_values> "
                    "(F32, per response token); one minibatch of all rollouts, in order",
        "sequence": "per rollout alone: inputs context ++ response[:-1], positions 0..; response "
                    "token t is the target of row P - 1 + t",
        "values": "value_head.weight . the final RMSNorm'd hidden state of row P - 1 + t",
        "rewards": "-kl_coef (old_logps - ref_logps) per token, + <case>.scores[i] at the last",
        "gae": "delta_t = r_t + gamma V_old[t+1] - V_old[t] (V_old[T] = 0), A_t = delta_t + "
               "gamma lam A_{t+1}, returns = A + V_old (before whitening), per rollout",
        "whiten": "(A - mean) / sqrt(var + 1e-8) over the minibatch's response tokens, var "
                  "unbiased",
        "losses": "value 0.5 mean max((V-R)^2, (clamp(V, V_old +- cliprange_value) - R)^2) "
                  "(unclipped when cliprange_value = 0); ppo mean max(-A ratio, -A clamp(ratio, "
                  "1 +- cliprange)); apa_paper mean (logp - adv_coeff A - ref_logp)^2; "
                  "apa_starling mean (logp - A - old_logp)^2; loss = policy + vf_coef value",
        "value_only": "apa_starling: value_loss > 1 -> loss = vf_coef value_loss (policy "
                      "gradient dropped); policy_loss still reports the policy term",
        "stats": "means over the response tokens: clip_fraction (ppo; 0 for apa), "
                 "value_clip_fraction, approx_kl = mean((ratio - 1) - log ratio)",
        "grad_rows": "<case>.grad.model.embed_tokens.weight holds only the rows "
                     "grad_rows.model.embed_tokens.weight (the inputs' ids); "
                     "<case>.grad_norm.model.embed_tokens.weight is the full tensor's L2 norm",
        "generator": "tools/policy_reference.py", "torch": torch.__version__,
    }
    path = os.path.join(REPO, FIXTURE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tl.write_safetensors(path, tensors, metadata)
    return path


def margins(res, case):
    """How far the fixture's discrete decisions are from flipping (float32 must not flip them):
    the PPO ratio from the clip edges, the values from their clip edges, the value loss from 1."""
    out = {}
    ratio, v, v_old = res["ratio"], res["values"], res["old_values"]
    if case["algorithm"] == "ppo":
        edges = torch.stack([ratio - (1 - case["cliprange"]), ratio - (1 + case["cliprange"])])
        out["ratio to clip edges"] = float(edges.abs().min())
    c = case["cliprange_value"]
    if c > 0:
        edges = torch.stack([v - (v_old - c), v - (v_old + c)])
        out["value to clip edges"] = float(edges.abs().min())
    if case["algorithm"] == "apa_starling":
        out["value loss to 1"] = abs(res["terms"]["value_loss"] - VALUE_ONLY_THRESHOLD)
    return out


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

def finite_difference_check(cfg, weights, value_head, rollouts, scores, case, grads, seed,
                            per_tensor=3):
    """train_reference.central_differences of the case's loss at `per_tensor` random entries of
    every parameter tensor and the value head (embedding entries from the inputs' rows)."""
    params = to_torch(weights, torch.float64, requires_grad=False)
    params[VALUE_HEAD] = torch.tensor(value_head, dtype=torch.float64)

    def loss():
        with torch.no_grad():
            return float(run_case(cfg, weights, value_head, rollouts, scores, case,
                                  torch.float64, keep_graph_params=params))

    return central_differences(params, loss, grads, np.random.default_rng(seed), per_tensor,
                               (EMBED,), used_rows(rollouts))


def gae_by_sums(rewards, values, gamma, lam):
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l}, written as explicit sums (no recursion)."""
    T = len(rewards)
    r = [float(x) for x in rewards]
    v = [float(x) for x in values] + [0.0]
    deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(T)]
    adv = [math.fsum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, T)) for t in range(T)]
    return adv, [a + v[t] for t, a in enumerate(adv)]


def loss_by_loops(case, res, rollouts):
    """The loss terms again, token by token in plain Python floats, from the fixture's inputs."""
    old = [float(x) for r in rollouts for x in r["old_logps"]]
    ref = [float(x) for r in rollouts for x in r["ref_logps"]]
    vold = [float(x) for r in rollouts for x in r["old_values"]]
    lp = res["logps"].tolist()
    v = res["values"].tolist()
    a = res["advantages"].tolist()
    ret = res["returns"].tolist()
    n = len(lp)
    value = policy = kl = 0.0
    clipped = vclipped = 0
    c = case["cliprange_value"]
    for i in range(n):
        u = (v[i] - ret[i]) ** 2
        if c > 0:
            vc = min(max(v[i], vold[i] - c), vold[i] + c)
            w = (vc - ret[i]) ** 2
            vclipped += w > u
            u = max(u, w)
        value += 0.5 * u / n
        ratio = math.exp(lp[i] - old[i])
        kl += ((ratio - 1) - (lp[i] - old[i])) / n
        if case["algorithm"] == "ppo":
            lo, hi = 1 - case["cliprange"], 1 + case["cliprange"]
            t1, t2 = -a[i] * ratio, -a[i] * min(max(ratio, lo), hi)
            clipped += t2 > t1
            policy += max(t1, t2) / n
        elif case["algorithm"] == "apa_paper":
            policy += (lp[i] - case["adv_coeff"] * a[i] - ref[i]) ** 2 / n
        else:
            policy += (lp[i] - a[i] - old[i]) ** 2 / n
    loss = policy + case["vf_coef"] * value
    if case["algorithm"] == "apa_starling" and value > VALUE_ONLY_THRESHOLD:
        loss = case["vf_coef"] * value
    return {"loss": loss, "policy_loss": policy, "value_loss": value,
            "clip_fraction": clipped / n if case["algorithm"] == "ppo" else 0.0,
            "value_clip_fraction": vclipped / n, "approx_kl": kl}


# --------------------------------------------------------------------------------------------
# --tolerance
# --------------------------------------------------------------------------------------------

MISTAKES = {
    "lam_1": "lam 1 instead of the case's",
    "kl_sign": "KL penalty with the wrong sign, +kl_coef (old - ref)",
    "gae_reversed_values": "GAE over the old values in reverse order",
    "returns_after_whitening": "returns from the whitened advantages",
    "whiten_padded": "whitening over the padded [B, max T] batch (trlx's literal whiten)",
    "whiten_biased": "whitening with the biased variance",
    "whiten_flipped": "whitening switched (on for Starling, off for PPO and APA paper)",
    "value_row_late": "values read one row late (the value after the token, not before)",
    "value_unclipped": "value loss never clipped",
    "ppo_min": "PPO surrogate with min instead of max",
    "apa_anchor_swapped": "APA anchored on the other log-probs (old for paper, ref for Starling)",
    "no_value_only_rule": "Starling's value-only rule not applied",
}


def compare(a, b):
    """Max differences of a (float32 run or a mistake) against the reference b."""
    d = {}
    for key in PER_TOKEN:
        d[key] = float((a[key].double() - b[key]).abs().max())
    for key in TERMS:
        d[key] = abs(a["terms"][key] - b["terms"][key])
    rels = {n: rel_l2(a["grads"][n], b["grads"][n]) for n in b["grads"]}
    d["grad_worst"] = max(rels.values())
    d["grad_worst_name"] = max(rels, key=rels.get)
    d["grad_median"] = float(np.median(list(rels.values())))
    return d


def print_compare(label, d):
    print(f"    {label}: " + ", ".join(f"{k} {d[k]:.1e}" for k in PER_TOKEN + TERMS)
          + f"; grads rel L2 worst {d['grad_worst']:.1e} ({d['grad_worst_name']}), median "
          f"{d['grad_median']:.1e}")


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="verify: finite differences, GAE by explicit sums, losses by loops")
    ap.add_argument("--tolerance", action="store_true",
                    help="measure torch float32 against the float64 reference, and how far "
                         "deliberate mistakes move the fixture's numbers")
    args = ap.parse_args()

    _, cfg, weights = tl.load_hf_model(os.path.join(REPO, MODEL_DIR))
    assert list(weights) == list(cfg.parameter_shapes())
    rng = np.random.default_rng(SEED + 1)
    value_head = (VALUE_HEAD_STD * rng.standard_normal((1, cfg.hidden_size))).astype(np.float32)
    rollouts, scores = make_rollouts(cfg, weights, value_head)
    print(f"{len(rollouts)} rollouts (P, T): {SHAPES}; M = "
          f"{sum(len(r['response']) for r in rollouts)}; scores "
          + " ".join(f"{s:.4f}" for s in scores))

    results = {name: run_case(cfg, weights, value_head, rollouts, scores, case, torch.float64)
               for name, case in CASES.items()}
    path = write_fixture(rollouts, scores, value_head, results)
    for name, case in CASES.items():
        res = results[name]
        t = res["terms"]
        print(f"{name}: " + ", ".join(f"{k} {t[k]:.6f}" for k in TERMS)
              + f", value_only {t['value_only']}")
        print("  advantages " + " ".join(f"{x:.4f}" for x in res["advantages"].tolist()))
        print("  margins: " + ", ".join(f"{k} {v:.2e}" for k, v in margins(res, case).items()))
    print(f"  {os.path.relpath(path, REPO)} {os.path.getsize(path)} bytes")

    if args.check:
        for k, (name, case) in enumerate(CASES.items()):
            n, rel, absolute, at = finite_difference_check(
                cfg, weights, value_head, rollouts, scores, case, results[name]["grads"],
                seed=SEED + 10 + k)
            print(f"  check {name}: finite differences vs autograd at {n} entries: max rel error "
                  f"{rel:.2e} where |grad| >= 1e-5 (at {at[0]}{list(at[1])}: autograd "
                  f"{at[2]:.6e}, fd {at[3]:.6e}); max abs error {absolute:.2e}")
            worst = 0.0
            start = 0
            for r, s in zip(rollouts, scores):
                T = len(r["response"])
                rw = results[name]["rewards"][start:start + T].tolist()
                adv, ret = gae_by_sums(rw, r["old_values"], case["gamma"], case["lam"])
                worst = max(worst, max(abs(x - y) for x, y in
                                       zip(ret, results[name]["returns"][start:start + T])))
                if not case["whiten"]:
                    worst = max(worst, max(abs(x - y) for x, y in
                                           zip(adv, results[name]["advantages"][start:start + T])))
                start += T
            loops = loss_by_loops(case, results[name], rollouts)
            dl = max(abs(loops[key] - results[name]["terms"][key]) for key in TERMS)
            print(f"  check {name}: GAE by explicit sums vs the recursion, max |diff| {worst:.1e}; "
                  f"loss terms by loops, max |diff| {dl:.1e}")

    if args.tolerance:
        for name, case in CASES.items():
            print(f"  {name}:")
            for label, rev in (("float32", False), ("float32 rollouts reversed", True)):
                f32 = run_case(cfg, weights, value_head, rollouts, scores, case, torch.float32,
                               reverse=rev)
                print_compare(label + " vs float64", compare(f32, results[name]))
            for key, what in MISTAKES.items():
                wrong = run_case(cfg, weights, value_head, rollouts, scores, case, torch.float64,
                                 mistake=key)
                d = compare(wrong, results[name])
                if max(d[k] for k in PER_TOKEN + TERMS) == 0 and d["grad_worst"] == 0:
                    continue  # the mistake does not apply to this case
                print_compare(f"mistake '{what}'", d)


if __name__ == "__main__":
    main()
