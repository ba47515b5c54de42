#!/usr/bin/env python3
"""PEFT LoRA adapters for the tiny test models, with reference logits, and
small random adapters for the default model.

Produces fixtures/lora/:
  tiny-llama/<adapter>/          adapter_config.json + adapter_model.safetensors, saved by
                                 PEFT's save_pretrained, for fixtures/tiny-models/tiny-llama
  tiny-llama/<adapter>.logits.safetensors
                                 input_ids_{0,1} and logits_{0,1}: transformers + PEFT
                                 (PeftModel, float32, eager attention, use_cache=False) on
                                 the first two input id sets of the base model's
                                 expected_logits.safetensors
  tiny-qwen2/...                 the same for fixtures/tiny-models/tiny-qwen2
  tiny-llama-gguf/tiny-llama.f32.gguf
                                 tiny-llama's weights as an F32 GGUF (arch llama, q/k rows
                                 permuted as convert_hf_to_gguf.py does): the tiny-llama
                                 adapters' logits must come out of it unchanged, which
                                 checks the q/k permutation of lora_B on GGUF bases
  smollm2/<adapter>/             random adapters (PEFT layout and names, float16) for
                                 SmolLM2-135M-Instruct, the default model, for engine and
                                 end-to-end tests; no reference logits (their tests compare
                                 the engine with itself)

Adapters (tiny models): several ranks and target sets, rsLoRA, rank_pattern and
alpha_pattern, weights stored as float16, and an untrained adapter (lora_B all zero: the
base model's logits). Every adapter's A and B are set from seeded normal draws so that
the update is well above the comparison tolerance.

Run from the repo root:  python3 scripts/make_lora_fixtures.py
Needs (versions used): torch 2.15.0 (CPU is enough), transformers 5.23.0, peft 0.21.2,
safetensors 0.8.0, gguf 0.19.0, numpy.
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
import peft
import safetensors
import gguf
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "fixtures", "tiny-models")
OUT = os.path.join(ROOT, "fixtures", "lora")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

GENERATED_BY = {
    "script": "scripts/make_lora_fixtures.py",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "safetensors": safetensors.__version__,
    "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "unknown",
}

torch.set_num_threads(1)

# name -> LoraConfig kwargs, plus "dtype" (how the weights are saved) and "zero_b".
TINY_ADAPTERS = {
    "tiny-llama": {
        "qv-r8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "all-r4": dict(r=4, lora_alpha=8, target_modules=ALL),
        "rslora-r16": dict(r=16, lora_alpha=8, use_rslora=True,
                           target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"]),
        "pattern": dict(r=8, lora_alpha=16, target_modules=ALL,
                        rank_pattern={"model.layers.1.self_attn.q_proj": 2, "down_proj": 12},
                        alpha_pattern={"v_proj": 4, "model.layers.0.mlp.up_proj": 32}),
        "qk-only": dict(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj"]),
        "all-r8-f16": dict(r=8, lora_alpha=16, target_modules=ALL, dtype=torch.float16),
        "zero-b": dict(r=8, lora_alpha=16, target_modules=ALL, zero_b=True),
    },
    "tiny-qwen2": {
        "qv-r8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "all-r4-rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=ALL),
        "pattern": dict(r=4, lora_alpha=4, target_modules=["k_proj", "o_proj", "up_proj"],
                        rank_pattern={"o_proj": 16}, alpha_pattern={"k_proj": 12}),
    },
}


def load_base(name):
    d = os.path.join(TINY, name)
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return m.float().eval()


def base_inputs(name):
    t = load_file(os.path.join(TINY, name, "expected_logits.safetensors"))
    return [t["input_ids_0"], t["input_ids_1"]]


def set_weights(model, seed, zero_b, dtype):
    """A and B from seeded normals (B zero for an untrained adapter), rounded to the
    dtype they are saved in, so the reference sees exactly the saved values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "lora_B" in name:
                p.copy_(torch.zeros(p.shape) if zero_b else 0.2 * torch.randn(p.shape, generator=g))
            else:
                continue
            p.copy_(p.to(dtype).float())


@torch.no_grad()
def logits_for(model, inputs):
    return [model(input_ids=ids[None, :], use_cache=False).logits[0].float().contiguous()
            for ids in inputs]


def save_adapter(model, d, dtype):
    model.save_pretrained(d, safe_serialization=True)
    path = os.path.join(d, "adapter_model.safetensors")
    if dtype != torch.float32:
        t = load_file(path)
        save_file({k: v.to(dtype).contiguous() for k, v in t.items()}, path,
                  metadata={"format": "pt"})
    # adapter_config.json: sorted keys, no absolute paths, stable across runs.
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = cfg.get("base_model_name_or_path") and os.path.basename(
        cfg["base_model_name_or_path"].rstrip("/"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set's order
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def make_tiny(model_name):
    out = os.path.join(OUT, model_name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    inputs = base_inputs(model_name)
    base_logits = logits_for(load_base(model_name), inputs)
    for i, (name, spec) in enumerate(sorted(TINY_ADAPTERS[model_name].items())):
        spec = dict(spec)
        dtype = spec.pop("dtype", torch.float32)
        zero_b = spec.pop("zero_b", False)
        model = get_peft_model(load_base(model_name),
                               LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0,
                                          init_lora_weights=True, **spec))
        set_weights(model, 1000 + i, zero_b, dtype)
        model.eval()
        d = os.path.join(out, name)
        save_adapter(model, d, dtype)
        # The reference runs what was saved: reload it with PEFT.
        reloaded = PeftModel.from_pretrained(load_base(model_name), d).eval()
        logits = logits_for(reloaded, inputs)
        for a, b in zip(logits, logits_for(model, inputs)):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), f"{model_name}/{name}: reload differs"
        delta = max(float((a - b).abs().max()) for a, b in zip(logits, base_logits))
        if zero_b:
            assert delta < 1e-5, f"{model_name}/{name}: a zero B changed the logits by {delta}"
        else:
            assert delta > 1e-2, f"{model_name}/{name}: the adapter barely moves the logits ({delta})"
        tensors = {}
        for j, (ids, lg) in enumerate(zip(inputs, logits)):
            tensors[f"input_ids_{j}"] = ids.contiguous()
            tensors[f"logits_{j}"] = lg
        save_file(tensors, os.path.join(out, f"{name}.logits.safetensors"),
                  metadata={"generated_by": json.dumps(GENERATED_BY)})
        size = os.path.getsize(os.path.join(d, "adapter_model.safetensors"))
        print(f"{model_name}/{name:14s} max|logits - base| = {delta:8.4f}  weights {size} bytes")


def hf_to_gguf_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> GGUF interleaved rope)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def make_tiny_gguf():
    """tiny-llama as an F32 GGUF with a stand-in vocabulary (the model tests use ids)."""
    src = os.path.join(TINY, "tiny-llama")
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    sd = {k: v.float().numpy() for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    out = os.path.join(OUT, "tiny-llama-gguf")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    path = os.path.join(out, "tiny-llama.f32.gguf")
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("tiny-llama")
    wr.add_block_count(cfg["num_hidden_layers"])
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_feed_forward_length(cfg["intermediate_size"])
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_rope_freq_base(cfg["rope_theta"])
    wr.add_rope_dimension_count(cfg["head_dim"])
    wr.add_vocab_size(cfg["vocab_size"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_tokenizer_pre("default")
    wr.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    wr.add_token_scores([0.0] * cfg["vocab_size"])
    wr.add_token_types([1] * cfg["vocab_size"])
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    wr.add_tensor("output_norm.weight", sd["model.norm.weight"])
    wr.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = hf_to_gguf_permute(w, nh)
            elif hf == "self_attn.k_proj":
                w = hf_to_gguf_permute(w, nkv)
            wr.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(w))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    print(f"tiny-llama-gguf: {os.path.getsize(path)} bytes")


# SmolLM2-135M: hidden 576, 9 heads / 3 kv heads (head_dim 64), ffn 1536, 30 layers.
SMOL = dict(hidden=576, q=576, kv=192, ffn=1536, layers=30)
SMOL_ADAPTERS = {
    "qv-r8": dict(r=8, alpha=16, targets=["q_proj", "v_proj"]),
    "o-down-r4": dict(r=4, alpha=8, targets=["o_proj", "down_proj"]),
    "all-r2": dict(r=2, alpha=4, targets=ALL),
    "qk-r4": dict(r=4, alpha=8, targets=["q_proj", "k_proj"]),
    "zero-b": dict(r=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"], zero_b=True),
}


def smol_shape(proj):
    s = SMOL
    return {"q_proj": (s["hidden"], s["q"]), "k_proj": (s["hidden"], s["kv"]),
            "v_proj": (s["hidden"], s["kv"]), "o_proj": (s["q"], s["hidden"]),
            "gate_proj": (s["hidden"], s["ffn"]), "up_proj": (s["hidden"], s["ffn"]),
            "down_proj": (s["ffn"], s["hidden"])}[proj]


def make_smollm2():
    out = os.path.join(OUT, "smollm2")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for i, (name, spec) in enumerate(sorted(SMOL_ADAPTERS.items())):
        g = torch.Generator().manual_seed(2000 + i)
        tensors = {}
        r = spec["r"]
        for layer in range(SMOL["layers"]):
            for proj in spec["targets"]:
                block = "self_attn" if proj in ALL[:4] else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{block}.{proj}"
                fan_in, fan_out = smol_shape(proj)
                # Magnitudes that move a 135M model's greedy tokens without wrecking it.
                a = torch.randn((r, fan_in), generator=g) / fan_in ** 0.5
                b = (torch.zeros((fan_out, r)) if spec.get("zero_b")
                     else 0.5 * torch.randn((fan_out, r), generator=g) / r ** 0.5)
                tensors[f"{prefix}.lora_A.weight"] = a.to(torch.float16).contiguous()
                tensors[f"{prefix}.lora_B.weight"] = b.to(torch.float16).contiguous()
        d = os.path.join(out, name)
        os.makedirs(d)
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": spec["alpha"],
               "target_modules": spec["targets"], "bias": "none", "use_rslora": False,
               "use_dora": False, "modules_to_save": None, "lora_dropout": 0.0,
               "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "fan_in_fan_out": False, "init_lora_weights": True}
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        size = os.path.getsize(os.path.join(d, "adapter_model.safetensors"))
        print(f"smollm2/{name:12s} weights {size} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    for m in TINY_ADAPTERS:
        make_tiny(m)
    make_tiny_gguf()
    make_smollm2()
    with open(os.path.join(OUT, "generated_by.json"), "w") as f:
        json.dump(GENERATED_BY, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
