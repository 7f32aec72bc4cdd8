#!/usr/bin/env python3
"""PyTorch CPU training-speed baseline for llama2.c's TinyStories Llama shapes.

    /usr/bin/python3 bench/bench_train_torch.py --model stories15M --batch 4 --ctx 256 \\
        --threads 2 --steps 10 [--json]

Times full float32 training steps on random token data, the way a typical PyTorch user writes
them: forward (tools/torch_llama.py: plain matmul attention with a causal mask), mean
cross-entropy over the B*T tokens, backward, clip_grad_norm_(1.0), AdamW step, zero_grad.
Random weights (only the shapes matter for speed). 2 warm-up steps, then --steps timed steps;
reports median, min and max tokens/s (B*T tokens per step), the parameter count and the
achieved GFLOP/s as 6 * params * tokens/s / 1e9 (the usual 6N per token for forward + backward;
it leaves out attention's T^2 work and counts the tied embedding once).
Which BLAS torch really calls (from torch.__config__ and the libraries loaded) goes to stderr.
"""

import argparse
import os
import sys

# The shapes of karpathy/llama2.c's TinyStories models (the classifier is tied to the embedding,
# as in llama2.c). hidden = the FFN width.
MODELS = {
    "stories260K": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab=512, hidden=172),
    "stories15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab=32000, hidden=768),
    "stories42M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, vocab=32000, hidden=1376),
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="stories15M")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap.parse_args()


args = parse_args()
# Thread counts for OpenMP (torch's intra-op pool) and for OpenBLAS's own pthreads pool, which
# torch.set_num_threads does not reach. Must be set before torch is imported.
os.environ["OMP_NUM_THREADS"] = str(args.threads)
os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
os.environ["MKL_NUM_THREADS"] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import torch_llama as tl  # noqa: E402


def blas_report() -> list:
    """The BLAS/LAPACK/MKL lines of torch.__config__.show(), and the BLAS libraries actually
    mapped into this process (Debian's torch says BLAS_INFO=generic: it calls whatever
    libblas.so.3 the alternatives system points to)."""
    lines = [ln.strip() for ln in torch.__config__.show().splitlines()
             if any(k in ln for k in ("BLAS", "LAPACK", "MKL", "CPU capability"))]
    # keep only the BLAS-related settings of the long build-settings line
    out = []
    for ln in lines:
        if ln.startswith("- Build settings"):
            keep = [kv.strip() for kv in ln.split(",") if any(
                k in kv for k in ("BLAS", "LAPACK", "MKL"))]
            out.append("build settings: " + ", ".join(k.replace("- Build settings: ", "")
                                                      for k in keep))
        else:
            out.append(ln.lstrip("- "))
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "blas" in ln.lower()
                           or "mkl" in ln.lower() or "dnnl" in ln.lower()})
        out += ["loaded: " + os.path.realpath(p) for p in libs]
    except OSError:
        pass
    return out


def main():
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = MODELS[args.model]
    cfg = tl.LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["dim"], intermediate_size=shape["hidden"],
        num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], head_dim=shape["dim"] // shape["n_heads"],
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=True)
    B, T, V = args.batch, args.ctx, cfg.vocab_size

    params = {}
    for name, s in cfg.parameter_shapes().items():
        if len(s) == 1:
            params[name] = torch.ones(s)
        else:
            params[name] = torch.randn(s) * 0.02
        params[name].requires_grad_(True)
    plist = list(params.values())
    n_params = sum(p.numel() for p in plist)
    opt = torch.optim.AdamW(
        [{"params": [p for p in plist if p.dim() == 2], "weight_decay": 0.1},
         {"params": [p for p in plist if p.dim() == 1], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)

    for line in blas_report():
        print("blas: " + line, file=sys.stderr)
    print(f"scaled_dot_product_attention available: "
          f"{hasattr(F, 'scaled_dot_product_attention')} (not used: plain matmul attention)",
          file=sys.stderr)

    load_before = os.getloadavg()[0]  # other work on the machine skews the timings
    times, shares, losses = [], [], []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, V, (B, T + 1), generator=gen)
        c0 = time.process_time()
        t0 = time.perf_counter()
        logits = tl.forward(cfg, params, tokens[:, :T])
        loss = F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        # CPU seconds this process got per wall second of the step: near `threads` when it had
        # the cores to itself, lower when something else on the machine competed for them.
        share = (time.process_time() - c0) / dt
        losses.append(loss.item())
        if step >= args.warmup:
            times.append(dt)
            shares.append(share)
        if not args.json:
            print(f"step {step}{' (warm-up)' if step < args.warmup else ''}: {dt:.3f} s, "
                  f"CPU s per wall s {share:.2f}, loss {losses[-1]:.4f}", file=sys.stderr)

    cpu_per_wall = statistics.median(shares)
    tps = sorted(B * T / t for t in times)
    med = statistics.median(tps)
    # the steps that had (nearly) all their cores: >= 90% of `threads` CPU s per wall s
    quiet = sorted(B * T / t for t, c in zip(times, shares) if c >= 0.9 * args.threads)
    quiet_med = statistics.median(quiet) if quiet else None
    result = {
        "model": args.model, "batch": B, "ctx": T, "threads": args.threads,
        "steps": args.steps, "warmup": args.warmup, "params": n_params,
        "tokens_per_step": B * T,
        "tokens_per_s_median": round(med, 2), "tokens_per_s_min": round(tps[0], 2),
        "tokens_per_s_max": round(tps[-1], 2),
        "step_s_median": round(statistics.median(times), 4),
        "gflops_median": round(6 * n_params * med / 1e9, 3),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "torch": torch.__version__, "attention": "matmul + causal mask",
        "loadavg_1min_before": round(load_before, 2), "cpu_per_wall_median": round(cpu_per_wall, 2),
        "uncontended_steps": len(quiet),
        "tokens_per_s_uncontended_median": round(quiet_med, 2) if quiet else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: {n_params / 1e6:.3f}M params, batch {B} x ctx {T}, "
              f"{args.threads} threads, torch {torch.__version__} float32")
        print(f"  tokens/s: median {med:.1f}, min {tps[0]:.1f}, max {tps[-1]:.1f} "
              f"({statistics.median(times):.3f} s/step median over {args.steps} steps)")
        print(f"  {6 * n_params * med / 1e9:.2f} GFLOP/s (6 * params * tokens/s); "
              f"1-min load average before the run {load_before:.2f}, median CPU s per wall s "
              f"{cpu_per_wall:.2f}")
        if quiet:
            print(f"  the {len(quiet)} steps with >= {0.9 * args.threads:.1f} CPU s per wall s: "
                  f"median {quiet_med:.1f} tokens/s, {6 * n_params * quiet_med / 1e9:.2f} GFLOP/s")


if __name__ == "__main__":
    main()
