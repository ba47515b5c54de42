#!/usr/bin/env python3
"""Generate tiny randomly-initialised HF checkpoints + reference logits.

Produces fixtures/tiny-models/<name>/ for
  tiny-llama          LlamaForCausalLM, GQA (4 q heads / 2 kv heads), untied lm_head, f32
  tiny-llama3         Llama with 1 kv head, tied embeddings, rope_theta 500000 and
                      llama3 rope scaling (factor 8, low 1, high 4, original_max 32)
  tiny-llama3-smooth  identical to tiny-llama3 but original_max_position_embeddings 64,
                      so that one rope frequency falls into llama3's *interpolated*
                      ("smooth") band (with original_max 32 and head_dim 16 every
                      frequency is either kept or divided by 8; no smooth band)
  tiny-qwen2          Qwen2ForCausalLM, same sizes as tiny-llama, 2 kv heads, tied
                      embeddings, non-zero q/k/v biases, rope_theta 1e6, eps 1e-6
  tiny-llama-sharded  tiny-llama weights saved in 3 shards + model.safetensors.index.json
  tiny-llama-bf16     tiny-llama weights rounded to bfloat16
  tiny-llama-f16      tiny-llama weights rounded to float16

Each directory holds config.json, model*.safetensors and expected_logits.safetensors
with tensors input_ids_{i} (int64 [len]) and logits_{i} (float32 [len, vocab]) for
i in 0..3 (lengths 7, 33, 100): full-sequence logits from transformers, float32,
eval(), use_cache=False, attn_implementation="eager". For bf16/f16 the logits are
computed in float32 from the *rounded* weights (checkpoint loaded, then .float()).

config.json files are written in the classic (transformers 4.x / hub) layout:
`rope_theta` + `rope_scaling` + `torch_dtype`, which is what real checkpoints carry.
(transformers 5 itself would write `rope_parameters` and `dtype`.) The script verifies
that transformers, loading the written directory, reproduces the logits of the model
it built in memory.

Run from the repo root:  python3 scripts/make_tiny_models.py
Needs (versions used): torch 2.15.0 (CPU is enough), transformers 5.23.0,
safetensors 0.8.0, numpy 2.4.6.
"""
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
import safetensors
from safetensors.torch import save_file, load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fixtures", "tiny-models")
SEQ_LENS = [7, 33, 100]
VOCAB = 512

GENERATED_BY = {
    "script": "scripts/make_tiny_models.py",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}

torch.set_num_threads(1)  # single-threaded: bit-reproducible reductions

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
)


def legacy_config(model_type, arch, extra, dtype):
    """A config.json dict in the layout real hub checkpoints use."""
    cfg = {"architectures": [arch], "model_type": model_type}
    cfg.update(BASE)
    cfg.update(extra)
    cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["torch_dtype"] = dtype
    cfg["use_cache"] = True
    cfg["initializer_range"] = 0.02
    cfg["attention_dropout"] = 0.0
    cfg["transformers_version"] = transformers.__version__
    return dict(sorted(cfg.items()))


def randomize(model, seed):
    """Non-degenerate random init: linear/embedding N(0, 0.15), norms 1 +- 0.1, biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS]


@torch.no_grad()
def logits_for(model, inputs):
    model.eval()
    out = []
    for ids in inputs:
        lg = model(input_ids=ids[None, :], use_cache=False).logits[0].float()
        out.append(lg.contiguous())
    return out


def write_config(d, cfg):
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def write_expected(d, inputs, logits):
    tensors = {}
    for i, (ids, lg) in enumerate(zip(inputs, logits)):
        tensors[f"input_ids_{i}"] = ids.contiguous()
        tensors[f"logits_{i}"] = lg.contiguous()
    save_file(tensors, os.path.join(d, "expected_logits.safetensors"),
              # a single metadata key: safetensors keeps metadata in a hash map, so with
              # several keys their order in the header (and the file's bytes) varies per run
              metadata={"generated_by": json.dumps(dict(
                  GENERATED_BY,
                  note="full-sequence logits, float32, eager attention, use_cache=False"))})


def load_dir(cls, d, dtype=torch.float32):
    m = cls.from_pretrained(d, dtype=dtype, attn_implementation="eager")
    return m.float().eval()


def save_weights(model, d, dtype=torch.float32, max_shard_size="50GB"):
    m = copy.deepcopy(model).to(dtype)  # never round the caller's float32 model in place
    m.save_pretrained(d, safe_serialization=True, max_shard_size=max_shard_size)
    # generation_config.json from save_pretrained is removed; written explicitly where wanted
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)


def build(name, cls, cfg_cls, model_type, arch, extra, seed, input_seed,
          dtype_name="float32", shard=None, src_model=None):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cfg_dict = legacy_config(model_type, arch, extra, dtype_name)
    if src_model is None:
        cfg_kwargs = {k: copy.deepcopy(v) for k, v in cfg_dict.items()
                      if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")}
        config = cfg_cls(**cfg_kwargs)
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = cls(config).float()
        randomize(model, seed)
    else:
        model = src_model
    inputs = make_inputs(input_seed)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    save_weights(model, d, tdtype, shard or "50GB")
    write_config(d, cfg_dict)  # overwrite with the classic layout
    reloaded = load_dir(cls, d, tdtype)
    ref = logits_for(reloaded, inputs)
    if tdtype == torch.float32:
        mem = logits_for(model, inputs)
        for a, b in zip(ref, mem):
            assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-5, rtol=0), \
                f"{name}: reloaded logits differ from in-memory model ({(a-b).abs().max()})"
    # cross-check against an independent numpy implementation of the config's semantics
    sd = {}
    for fn in sorted(os.listdir(d)):
        if fn.startswith("model") and fn.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, fn)))
    worst = 0.0
    for ids, lg in zip(inputs, ref):
        npl = np_forward({k: t.float() for k, t in sd.items()}, cfg_dict, ids.tolist())
        worst = max(worst, float(np.abs(npl - lg.double().numpy()).max()))
    assert worst < 1e-4, f"{name}: numpy reference disagrees with transformers by {worst}"
    write_expected(d, inputs, ref)
    files = sorted(os.listdir(d))
    mx = max(float(l.abs().max()) for l in ref)
    std = float(torch.cat([l.flatten() for l in ref]).std())
    print(f"{name:20s} max|logit|={mx:8.4f} std={std:.4f} numpy-vs-hf={worst:.2e} files={files}")
    return model, ref


def np_inv_freq(cfg):
    hd = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":
        f, lo, hi, orig = (rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
                           rs["original_max_position_embeddings"])
        wl = 2 * np.pi / inv
        smooth = (orig / wl - lo) / (hi - lo)
        scaled = np.where(wl > orig / lo, inv / f, inv)
        mid = (wl <= orig / lo) & (wl >= orig / hi)
        inv = np.where(mid, (1 - smooth) * inv / f + smooth * inv, scaled)
    return inv


def np_forward(sd, cfg, ids):
    """Independent float64 numpy reference (llama / qwen2, rotate-half rope, GQA, causal)."""
    w = {k: v.double().numpy() for k, v in sd.items()}
    H, KV, hd, eps = (cfg["num_attention_heads"], cfg["num_key_value_heads"],
                      cfg["head_dim"], cfg["rms_norm_eps"])
    n = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    inv = np_inv_freq(cfg)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # x [n, heads, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        rot = np.concatenate([-x2, x1], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(n, H, hd))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(n, KV, hd))
        v = lin(h, p + "self_attn.v_proj").reshape(n, KV, hd)
        rep = H // KV
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(n, H * hd)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin((g / (1 + np.exp(-g))) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


def llama3_band_report(theta, head_dim, factor, low, high, orig):
    import math
    lo_wl, hi_wl = orig / low, orig / high
    bands = []
    for i in range(0, head_dim, 2):
        wl = 2 * math.pi * theta ** (i / head_dim)
        bands.append("keep" if wl < hi_wl else ("div" if wl > lo_wl else "smooth"))
    return bands


def main():
    os.makedirs(OUT, exist_ok=True)
    print("generated_by:", GENERATED_BY)

    llama_extra = dict(rope_theta=10000.0, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, pretraining_tp=1, rope_scaling=None)
    llama, llama_logits = build("tiny-llama", LlamaForCausalLM, LlamaConfig, "llama",
                                "LlamaForCausalLM", llama_extra, seed=1234, input_seed=1)
    with open(os.path.join(OUT, "tiny-llama", "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False,
                   "transformers_version": transformers.__version__}, f, indent=2)
        f.write("\n")

    # same weights, sharded
    build("tiny-llama-sharded", LlamaForCausalLM, LlamaConfig, "llama", "LlamaForCausalLM",
          llama_extra, seed=1234, input_seed=1, shard="250KB", src_model=llama)
    idx = json.load(open(os.path.join(OUT, "tiny-llama-sharded", "model.safetensors.index.json")))
    nshards = len(set(idx["weight_map"].values()))
    assert 2 <= nshards <= 3, f"expected 2-3 shards, got {nshards}"
    # same weights, rounded to half precisions
    build("tiny-llama-bf16", LlamaForCausalLM, LlamaConfig, "llama", "LlamaForCausalLM",
          llama_extra, seed=1234, input_seed=1, dtype_name="bfloat16", src_model=llama)
    build("tiny-llama-f16", LlamaForCausalLM, LlamaConfig, "llama", "LlamaForCausalLM",
          llama_extra, seed=1234, input_seed=1, dtype_name="float16", src_model=llama)

    for name, orig, seed in (("tiny-llama3", 32, 2345), ("tiny-llama3-smooth", 64, 2345)):
        rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": orig}
        extra = dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
                     rope_scaling=rs, attention_bias=False, mlp_bias=False, pretraining_tp=1)
        print(f"  {name} llama3 bands per rotary pair:",
              llama3_band_report(500000.0, 16, 8.0, 1.0, 4.0, orig))
        build(name, LlamaForCausalLM, LlamaConfig, "llama", "LlamaForCausalLM", extra,
              seed=seed, input_seed=2)

    qwen_extra = dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      use_sliding_window=False, sliding_window=None, max_window_layers=2,
                      rope_scaling=None)
    model, _ = build("tiny-qwen2", Qwen2ForCausalLM, Qwen2Config, "qwen2", "Qwen2ForCausalLM",
                     qwen_extra, seed=3456, input_seed=3)
    st = load_file(os.path.join(OUT, "tiny-qwen2", "model.safetensors"))
    biases = [k for k in st if k.endswith(".bias")]
    assert len(biases) == 6 and all(st[k].abs().max() > 0 for k in biases), biases
    assert "lm_head.weight" not in st

    with open(os.path.join(OUT, "generated_by.json"), "w") as f:
        json.dump(GENERATED_BY, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
