#!/usr/bin/env python3
"""llama.cpp (and transformers) reference outputs for the default SmolLM2 GGUF.

Produces fixtures/llamacpp/:
  greedy_smollm2.json                 4+ chat prompts rendered with the GGUF's own chat
                                      template, tokenized by llama.cpp, then 32 greedy tokens
                                      decoded by llama.cpp (manual argmax loop, no EOS stop)
  tokenizer_corpus.json               ~45 test strings (multilingual, whitespace, emoji, code,
                                      special-token markup)
  tokenizer_smollm2_llamacpp.json     llama.cpp ids for the corpus (special=True / False) and
                                      llama.cpp's detokenization
  tokenizer_smollm2_transformers.json ids from transformers' GGUF -> tokenizer conversion
                                      (AutoTokenizer.from_pretrained(dir, gguf_file=...)) and
                                      the disagreements with llama.cpp
  smollm2-tokenizer/tokenizer.json    that converted tokenizer, saved by transformers

From: ~/.cache/llm-serve/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-default-model.sh).

Run from the repo root:  python3 scripts/llamacpp_reference.py
Needs (versions used): llama-cpp-python 0.3.36, built from the PyPI sdist for the CPU
(needs cmake, ninja, a C++ compiler; ~15 min on 2 cores). Build it portable, because the
default -march=native build dies with SIGILL in AMX tile code on this VM:
    pip install cmake ninja
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
      -DGGML_AMX_BF16=OFF" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
Also:
transformers 5.23.0, tokenizers 0.23.3, gguf 0.19.0, jinja2 3.1.6, numpy 2.4.6.
llama.cpp runs with n_threads=2, n_ctx=2048, n_batch=512, seed=0, CPU only.
"""
import json
import os

# llama.cpp's OpenMP workers spin-wait by default; on a 2-core machine shared with other
# work that makes every decode ~30x slower. Passive waiting changes no numbers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
import tempfile
from importlib.metadata import version as pkg_version

import numpy as np

import llama_cpp
from llama_cpp import Llama
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fixtures", "llamacpp")
GGUF_PATH = os.path.expanduser("~/.cache/llm-serve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
N_GEN = 32
TOPK = 5
# a generated position counts as "stable" when its top-1/top-2 logit gap is at least this
STABLE_MARGIN = 0.25

GENERATED_BY = {
    "script": "scripts/llamacpp_reference.py",
    "llama-cpp-python": llama_cpp.__version__,
    "transformers": transformers.__version__,
    "tokenizers": pkg_version("tokenizers"),
    "gguf": pkg_version("gguf"),
    "jinja2": pkg_version("jinja2"),
    "numpy": np.__version__,
    "model": os.path.basename(GGUF_PATH),
}

CONVERSATIONS = [
    ("capital_of_france",
     [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]),
    ("haiku_sea", [{"role": "user", "content": "Write a haiku about the sea."}]),
    ("hash_map", [{"role": "user", "content": "Explain what a hash map is."}]),
    ("system_three_colors",
     [{"role": "system", "content": "You are a helpful assistant that answers with short lists."},
      {"role": "user", "content": "List three colors."}]),
    ("multi_turn_math",
     [{"role": "user", "content": "What is 12 plus 30?"},
      {"role": "assistant", "content": "12 plus 30 is 42."},
      {"role": "user", "content": "Now multiply that by 2."}]),
    # extra prompts chosen for long stable (large-margin) greedy continuations
    ("count_to_ten", [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]),
    ("largest_planet", [{"role": "user", "content": "What is the largest planet in the solar system?"}]),
    ("alphabet", [{"role": "user", "content": "Write the English alphabet in capital letters, separated by spaces."}]),
]

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple    internal     spaces",
    "   ",
    "",
    "line one\nline two\n\nline four",
    "\ttab\tseparated\tvalues\t",
    "mixed \n\t whitespace \r\n windows line end",
    "Numbers: 0 7 42 123 1234 12345 3.14159 1,000,000 2024-07-26",
    "9876543210123456789",
    "Café, naïve, jalapeño, Ärger, Übermaß, straße, ﬁ ligature",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Ελληνικά: Γειά σου κόσμε",
    "Русский: Привет, мир! Ёлка",
    "中文：你好，世界！我爱编程。",
    "日本語：こんにちは、世界。カタカナとひらがな",
    "한국어: 안녕하세요 세계",
    "Emoji: 😀 👍 👍🏽 ❤️ 👨‍👩‍👧 🇫🇷 🇯🇵 🏳️‍🌈",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "don't, won't, I'll, you're, they've, she'd, it's, we'RE, I'M",
    "https://example.com/path/to/page?query=1&lang=en#section",
    "user@example.org wrote: <b>bold</b> & 'quotes' \"double\" `back`",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text before<|endoftext|>text after",
    "<|not_a_token|>",
    "<|im_start|><|im_end|>",
    "a<|im_start|>b",
    "<|im_start|> spaced <|im_end|>",
    "<|im_start|>",
    "left <sep> right",
    "HELLO World hello WORLD HeLLo",
    "!!! ??? ... --- *** ### @@@",
    "a\u00a0non-breaking\u00a0space and zero\u200bwidth",
    "Arabic: مرحبا بالعالم",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีชาวโลก",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝐛𝐨𝐥𝐝 and \U0001F9EA test tube",
    "ab" * 40,
    "x = 1_000_000; y = 0xFF; z = 1e-9",
    "The end.\n",
]


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def gguf_meta():
    from gguf import GGUFReader
    r = GGUFReader(GGUF_PATH)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
    eos = int(r.fields["tokenizer.ggml.eos_token_id"].contents())
    return r.fields["tokenizer.chat_template"].contents(), tokens[bos], tokens[eos], bos, eos


def last_logits(llm):
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def llama_detokenize(llm, ids, remove_special=False, unparse_special=True):
    """llama.cpp's own detokenizer (what llama-server's common_detokenize uses)."""
    import ctypes
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
    assert n >= 0, n
    return buf.raw[:n].decode("utf-8", "replace")


def top_k(logits, k):
    # stable ordering: by logit descending, then id ascending
    idx = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:k]
    return [[int(i), float(logits[i])] for i in idx]


def greedy_ids(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    gen = []
    for _ in range(N_GEN):
        nxt = int(np.argmax(last_logits(llm)))
        gen.append(nxt)
        llm.eval([nxt])
    return gen


def greedy(llm, chat_template, bos_tok, eos_tok, eos_id, llm_f32kv=None):
    cases = []
    for name, messages in CONVERSATIONS:
        rendered, _ = ctu.render_jinja_template(
            conversations=[messages], chat_template=chat_template, add_generation_prompt=True,
            bos_token=bos_tok, eos_token=eos_tok)
        prompt_text = rendered[0]
        prompt_ids = llm.tokenize(prompt_text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt_ids)
        gen, steps = [], []
        for step in range(N_GEN):
            lg = last_logits(llm)
            tk = top_k(lg, TOPK)
            nxt = int(np.argmax(lg))
            assert nxt == tk[0][0]
            steps.append({"top": tk, "margin": tk[0][1] - tk[1][1]})
            gen.append(nxt)
            llm.eval([nxt])
        first_eos = next((i for i, t in enumerate(gen) if t == eos_id), None)
        text = llm.detokenize(gen, special=True).decode("utf-8", errors="replace")
        text_until_eos = llm.detokenize(gen[:first_eos] if first_eos is not None else gen,
                                        special=False).decode("utf-8", errors="replace")
        margins = [st["margin"] for st in steps]
        cases.append({
            "name": name,
            "messages": messages,
            "prompt_text": prompt_text,
            "prompt_ids": prompt_ids,
            "generated_ids": gen,
            "generated_text": text,
            "generated_text_until_eos": text_until_eos,
            "first_eos_index": first_eos,
            "top5_first": steps[0]["top"],
            "top2_margins": margins,
            "min_margin_before_eos": min(margins[: (first_eos + 1) if first_eos is not None else N_GEN]),
        })
        if llm_f32kv is not None:
            g2 = greedy_ids(llm_f32kv, prompt_ids)
            cases[-1]["generated_ids_f32_kv_cache"] = g2
            cases[-1]["f32_kv_cache_agrees_until"] = next(
                (i for i, (x, y) in enumerate(zip(gen, g2)) if x != y), N_GEN)
        agree = cases[-1].get("f32_kv_cache_agrees_until", N_GEN)
        stable = next((i for i, m in enumerate(margins) if m < STABLE_MARGIN), N_GEN)
        cases[-1]["stable_prefix_len"] = min(stable, agree)
        print(f"[greedy] {name}: {len(prompt_ids)} prompt ids, eos@{first_eos}, "
              f"f32-kv agrees until {cases[-1].get('f32_kv_cache_agrees_until')}, "
              f"stable prefix {cases[-1]['stable_prefix_len']}, "
              f"min margin {cases[-1]['min_margin_before_eos']:.4f}: {text_until_eos!r}")
    return cases


def llamacpp_tokenize(llm):
    rows, roundtrip_mismatch = [], []
    for s in CORPUS:
        b = s.encode("utf-8")
        ids_sp = llm.tokenize(b, add_bos=False, special=True)
        ids_nosp = llm.tokenize(b, add_bos=False, special=False)
        det_sp = llm.detokenize(ids_sp, special=True).decode("utf-8", errors="replace")
        det_nosp = llm.detokenize(ids_nosp, special=False).decode("utf-8", errors="replace")
        row = {"text": s, "ids_special": ids_sp, "ids_nospecial": ids_nosp,
               "detok_special": det_sp, "detok_nospecial": det_nosp,
               "detok_llama_detokenize": llama_detokenize(llm, ids_sp),
               "roundtrip_ok": det_sp == s}
        if det_sp != s:
            roundtrip_mismatch.append(s)
        rows.append(row)
    return rows, roundtrip_mismatch


def transformers_tokenize():
    from transformers import AutoTokenizer
    tmp = tempfile.mkdtemp(prefix="smollm2-gguf-")
    try:
        name = os.path.basename(GGUF_PATH)
        os.symlink(GGUF_PATH, os.path.join(tmp, name))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=name)
        save_dir = os.path.join(tmp, "saved")
        tok.save_pretrained(save_dir)
        dst = os.path.join(OUT, "smollm2-tokenizer")
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        # re-serialise deterministically (sorted keys are NOT used: order matters for added_tokens)
        with open(os.path.join(save_dir, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
        info = {"class": type(tok).__name__, "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                "unk_token": tok.unk_token, "pad_token": tok.pad_token}
        rows = []
        for s in CORPUS:
            ids_sp = tok.encode(s, add_special_tokens=False)
            # no "parse special tokens = False" switch in HF: split_special_tokens=True is the equivalent
            try:
                ids_nosp = tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            except Exception as e:  # pragma: no cover
                ids_nosp = None
            dec = tok.decode(ids_sp, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            rows.append({"text": s, "ids_special": ids_sp, "ids_nospecial": ids_nosp, "decoded": dec})
        return rows, info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    chat_template, bos_tok, eos_tok, bos_id, eos_id = gguf_meta()
    llm = Llama(model_path=GGUF_PATH, n_ctx=2048, n_threads=2, n_batch=512, logits_all=False,
                seed=0, verbose=False)
    assert llm.token_eos() == eos_id, (llm.token_eos(), eos_id)

    write_json("tokenizer_corpus.json", {
        "generated_by": GENERATED_BY,
        "description": "tokenizer test strings shared by the llamacpp and spm fixtures",
        "strings": CORPUS,
    })

    llm_f32kv = Llama(model_path=GGUF_PATH, n_ctx=2048, n_threads=2, n_batch=512, logits_all=False,
                      seed=0, verbose=False, type_k=0, type_v=0)
    cases = greedy(llm, chat_template, bos_tok, eos_tok, eos_id, llm_f32kv)
    llm_f32kv.close()
    write_json("greedy_smollm2.json", {
        "generated_by": GENERATED_BY,
        "model": os.path.basename(GGUF_PATH),
        "settings": {"n_ctx": 2048, "n_threads": 2, "n_batch": 512, "seed": 0,
                     "decode": "greedy argmax over last-position logits, ties -> lowest id; no EOS stop",
                     "n_generated": N_GEN, "add_bos": False, "parse_special": True,
                     "stable_margin_threshold": STABLE_MARGIN,
                     "stable_prefix_len": "number of leading generated tokens whose top1-top2 margin is "
                                          ">= stable_margin_threshold and on which the F32-KV run agrees; "
                                          "an independent implementation should reproduce at least these",
                     "kv_cache": "llama.cpp default (F16); generated_ids_f32_kv_cache repeats the run "
                                 "with type_k=type_v=F32",
                     "build": "llama-cpp-python built with GGML_NATIVE=OFF, AVX2/FMA/F16C (no AVX512/AMX)"},
        "chat_template_source": "GGUF tokenizer.chat_template, rendered by transformers render_jinja_template",
        "bos_token": bos_tok, "eos_token": eos_tok, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "cases": cases,
    })

    lc_rows, mism = llamacpp_tokenize(llm)
    write_json("tokenizer_smollm2_llamacpp.json", {
        "generated_by": GENERATED_BY,
        "settings": {"add_bos": False, "ids_special": "tokenize(text, special=True)",
                     "ids_nospecial": "tokenize(text, special=False)",
                     "detok_special": "detokenize(ids_special, special=True)",
                     "detok_nospecial": "detokenize(ids_nospecial, special=False)",
                     "detok_llama_detokenize": "C API llama_detokenize(ids_special, remove_special=False, "
                                               "unparse_special=True)",
                     "roundtrip_ok": "detok_special == text"},
        "roundtrip_mismatches": mism,
        "cases": lc_rows,
    })
    print(f"[tokenizer] llama.cpp roundtrip mismatches: {mism}")

    hf_rows, info = transformers_tokenize()
    disagreements = []
    for lc, hf in zip(lc_rows, hf_rows):
        d = {}
        if lc["ids_special"] != hf["ids_special"]:
            d["ids_special"] = {"llamacpp": lc["ids_special"], "transformers": hf["ids_special"]}
        if hf["ids_nospecial"] is not None and lc["ids_nospecial"] != hf["ids_nospecial"]:
            d["ids_nospecial"] = {"llamacpp": lc["ids_nospecial"], "transformers": hf["ids_nospecial"]}
        if d:
            d["text"] = lc["text"]
            disagreements.append(d)
    write_json("tokenizer_smollm2_transformers.json", {
        "generated_by": GENERATED_BY,
        "tokenizer": info,
        "settings": {"ids_special": "tok.encode(text, add_special_tokens=False)",
                     "ids_nospecial": "tok(text, add_special_tokens=False, split_special_tokens=True)",
                     "decoded": "tok.decode(ids_special, skip_special_tokens=False, "
                                "clean_up_tokenization_spaces=False)",
                     "tokenizer_json": "fixtures/llamacpp/smollm2-tokenizer/tokenizer.json"},
        "disagreements_with_llamacpp": disagreements,
        "cases": hf_rows,
    })
    print(f"[tokenizer] transformers vs llama.cpp disagreements: {len(disagreements)}")
    for d in disagreements:
        print("   ", json.dumps(d, ensure_ascii=False)[:300])


if __name__ == "__main__":
    main()
