"""A small, self-contained Llama/Mistral model in PyTorch, plus safetensors I/O.

Shared by tools/train_reference.py (float64 reference fixtures for the training core's tests)
and bench/bench_train_torch.py (the PyTorch training-speed baseline). It does not use the
`transformers` library: the model below is written out from Hugging Face's LlamaForCausalLM /
MistralForCausalLM semantics so that every operation is visible and runs in any dtype
(float64 for the reference, float32 for the baseline and for the tolerance measurement).

Semantics (Hugging Face's, which the C++ engine must match):
  x = embed_tokens[tokens]
  per layer:
    h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))  with n = rmsnorm(x)
    x = h + down_proj(silu(gate_proj(m)) * up_proj(m))                          with m = rmsnorm(h)
  logits = lm_head(rmsnorm(x))   (lm_head = embed_tokens when the embeddings are tied)
  rmsnorm(x) = x * rsqrt(mean(x^2) + eps) * w
  RoPE: Hugging Face's rotate_half layout: dimension i of a head is paired with dimension
        i + head_dim/2 and both are rotated by the angle pos * theta^(-2i/head_dim), pos = 0..T-1.
  attention: softmax(q k^T / sqrt(head_dim) + mask) v, query head h reads KV head h // (H / KVH);
        position i sees exactly the positions j with i - window < j <= i (window = sliding_window,
        or unbounded when the model has none, i.e. plain causal attention).
"""

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    sliding_window: Optional[int]
    tie_word_embeddings: bool

    @staticmethod
    def from_hf(d: dict) -> "LlamaConfig":
        """From a Hugging Face config.json dict (head_dim defaults to hidden_size / heads)."""
        heads = d["num_attention_heads"]
        return LlamaConfig(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads", heads),
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d["rms_norm_eps"],
            rope_theta=d.get("rope_theta", 10000.0),
            sliding_window=d.get("sliding_window"),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
        )

    def parameter_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Every parameter tensor by its Hugging Face name, sorted by name."""
        D, F_, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (V, D)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (D,)
            shapes[p + "post_attention_layernorm.weight"] = (D,)
            shapes[p + "self_attn.q_proj.weight"] = (q, D)
            shapes[p + "self_attn.k_proj.weight"] = (kv, D)
            shapes[p + "self_attn.v_proj.weight"] = (kv, D)
            shapes[p + "self_attn.o_proj.weight"] = (D, q)
            shapes[p + "mlp.gate_proj.weight"] = (F_, D)
            shapes[p + "mlp.up_proj.weight"] = (F_, D)
            shapes[p + "mlp.down_proj.weight"] = (D, F_)
        return dict(sorted(shapes.items()))

    def parameter_count(self) -> int:
        return sum(math.prod(s) for s in self.parameter_shapes().values())


# --------------------------------------------------------------------------------------------
# safetensors, by hand: 8-byte little-endian header length N, N bytes of JSON header
# ({name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {str: str}}), then the
# raw little-endian tensor bytes, offsets relative to the start of that data section.
# --------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                 "I16": "<i2", "I8": "i1", "U8": "u1"}


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Returns ({name: array}, metadata). BF16 is widened to float32 exactly (a bfloat16 is the
    top 16 bits of a float32)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_NUMPY_DTYPES[info["dtype"]])
        out[name] = arr.reshape(shape).copy()
    return out, metadata


def write_safetensors(path: str, tensors: Dict[str, np.ndarray],
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the tensors sorted by name, contiguous (the format allows no holes), with the JSON
    header padded with spaces to a multiple of 8 bytes. Deterministic: same input, same bytes."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = {np.dtype("float64"): "F64", np.dtype("float32"): "F32",
                 np.dtype("float16"): "F16", np.dtype("int64"): "I64",
                 np.dtype("int32"): "I32", np.dtype("int16"): "I16",
                 np.dtype("int8"): "I8", np.dtype("uint8"): "U8"}[arr.dtype.newbyteorder("=")]
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def load_hf_model(model_dir: str) -> Tuple[dict, LlamaConfig, Dict[str, np.ndarray]]:
    """Reads config.json and the weights (model.safetensors, or the shards that
    model.safetensors.index.json names). Weights come back as float32 numpy arrays."""
    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        tensors, _ = read_safetensors(os.path.join(model_dir, name))
        weights.update({k: v.astype(np.float32) for k, v in tensors.items()})
    return hf, LlamaConfig.from_hf(hf), dict(sorted(weights.items()))


# --------------------------------------------------------------------------------------------
# The model, as plain functions over a {HF name: tensor} dict
# --------------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def rope_cos_sin(T: int, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [T, head_dim] in Hugging Face's layout (the half-size table repeated
    twice). The angles are computed in float64 and rounded once to `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def attention_mask(T: int, window: Optional[int]) -> torch.Tensor:
    """Boolean [T, T]: True where query position i may attend to key position j, i.e.
    j <= i and (no window or i - window < j)."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    return allowed


def forward(cfg: LlamaConfig, params: Dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] for tokens [B, T] (positions 0..T-1 in every sequence)."""
    B, T = tokens.shape
    H, KVH, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    group = H // KVH
    embed = params["model.embed_tokens.weight"]
    dtype = embed.dtype
    cos, sin = rope_cos_sin(T, Dh, cfg.rope_theta, dtype)
    mask = attention_mask(T, cfg.sliding_window)
    scale = 1.0 / math.sqrt(Dh)

    x = embed[tokens]  # [B, T, D]; the gradient scatter-adds into the used rows
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        n = rms_norm(x, params[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = (n @ params[p + "self_attn.q_proj.weight"].T).view(B, T, H, Dh).transpose(1, 2)
        k = (n @ params[p + "self_attn.k_proj.weight"].T).view(B, T, KVH, Dh).transpose(1, 2)
        v = (n @ params[p + "self_attn.v_proj.weight"].T).view(B, T, KVH, Dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: repeat_interleave makes query head h read KV head h // group.
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, T, T]
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v  # [B, H, T, Dh]
        attn = attn.transpose(1, 2).reshape(B, T, H * Dh)
        h = x + attn @ params[p + "self_attn.o_proj.weight"].T
        m = rms_norm(h, params[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = m @ params[p + "mlp.gate_proj.weight"].T
        up = m @ params[p + "mlp.up_proj.weight"].T
        x = h + (F.silu(gate) * up) @ params[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, params["model.norm.weight"], cfg.rms_norm_eps)
    head = embed if cfg.tie_word_embeddings else params["lm_head.weight"]
    return x @ head.T


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * CE_i / count(w_i != 0), CE_i = -log softmax(logits_i)[target_i]. With all
    weights 1 this is the plain mean over B*T tokens."""
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    count = int((weights != 0).sum())
    return (weights * ce).sum() / count
