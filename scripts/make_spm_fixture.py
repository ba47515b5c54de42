#!/usr/bin/env python3
"""SentencePiece ("llama"-vocab) tokenizer fixture + tiny llama GGUF.

Produces fixtures/spm/:
  tiny-spm.model                 SentencePiece BPE model trained here (Llama-2-like trainer
                                 spec: byte_fallback, split_digits, add_dummy_prefix,
                                 identity normalisation, no whitespace collapsing)
  tiny-spm.gguf                  tiny llama GGUF (1 layer, hidden 32, heads 2/2, ffn 64, f32)
                                 whose vocab is that model, written the way llama.cpp's
                                 convert_hf_to_gguf.py writes SPM vocabularies
  tokenizer_spm_llamacpp.json    llama.cpp ids for fixtures/llamacpp/tokenizer_corpus.json
                                 (add_bos False; special True and False) + detokenization
  tokenizer_spm_reference.json   the same corpus through the sentencepiece library and
                                 through transformers' LlamaTokenizer (fast) conversions
                                 (legacy True and False), with disagreements vs llama.cpp
  tiny_spm_logits.json           llama.cpp last-position logits of tiny-spm.gguf for a few
                                 prompts + an independent numpy forward of the same weights

Training text: generated in this script from word lists with random.Random(20240726)
(English sentences, accented European words, numbers, code-ish and chat lines).

Run from the repo root (after scripts/llamacpp_reference.py wrote the corpus):
    python3 scripts/make_spm_fixture.py
Needs (versions used): sentencepiece 0.2.3, protobuf 7.36.2, gguf 0.19.0, numpy 2.4.6,
llama-cpp-python 0.3.36 (see scripts/llamacpp_reference.py for the build),
transformers 5.23.0, tokenizers 0.23.3.
"""
import json
import os

# llama.cpp's OpenMP workers spin-wait by default; on a 2-core machine shared with other
# work that makes every decode ~30x slower. Passive waiting changes no numbers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import random
import shutil
import tempfile
from importlib.metadata import version as pkg_version

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fixtures", "spm")
CORPUS_JSON = os.path.join(ROOT, "fixtures", "llamacpp", "tokenizer_corpus.json")
SEED = 20240726
VOCAB_SIZE = 2000
USER_SYMBOLS = ["<|im_start|>", "<|im_end|>", "<sep>"]
# <|im_start|>/<|im_end|> are written as CONTROL (3), as convert_hf_to_gguf.py does for added
# tokens flagged "special" in tokenizer_config.json; "<sep>" stays USER_DEFINED (4).
CONTROL_SYMBOLS = {"<|im_start|>", "<|im_end|>"}

HP = dict(n_embd=32, n_layer=1, n_head=2, n_head_kv=2, n_ff=64, n_ctx=256, eps=1e-5, rope_base=10000.0)


def gen_by():
    d = {"script": "scripts/make_spm_fixture.py", "sentencepiece": spm.__version__,
         "protobuf": pkg_version("protobuf"), "gguf": pkg_version("gguf"), "numpy": np.__version__}
    for p in ("llama-cpp-python", "transformers", "tokenizers"):
        try:
            d[p] = pkg_version(p)
        except Exception:
            pass
    return d


# ------------------------------------------------------------------ training text
NOUNS = ("time year people way day man thing woman life child world school state family student "
         "group country problem hand part place case week company system program question work "
         "government number night point home water room mother area money story fact month lot "
         "right study book eye job word business issue side kind head house service friend father "
         "power hour game line end member law car city community name president team minute idea "
         "kid body information back parent face others level office door health person art war "
         "history party result change morning reason research girl guy moment air teacher force "
         "education computer server model token memory network function language river mountain "
         "garden kitchen window table engine bridge market island forest ocean planet signal").split()
VERBS = ("is was has makes takes sees finds gives tells works calls tries asks needs feels becomes "
         "leaves puts means keeps lets begins seems helps shows hears plays runs moves lives "
         "believes brings happens writes provides sits stands loses pays meets includes continues "
         "learns changes leads understands watches follows stops creates speaks reads allows adds "
         "spends grows opens walks wins offers remembers loves considers appears buys waits serves "
         "builds sends expects stays falls cuts reaches kills remains suggests raises passes sells "
         "computes tokenizes decodes encodes loads parses returns streams").split()
ADJS = ("good new first last long great little own other old right big high different small large "
        "next early young important few public bad same able quick lazy brown bright dark happy "
        "simple complex fast slow warm cold green blue red yellow quiet loud strange careful").split()
ADVS = "quickly slowly carefully often never always sometimes really almost already quite".split()
NAMES = "Alice Bob Carol Dave Eve Frank Grace Heidi Ivan Judy Mallory Oscar Peggy Trent Victor".split()
ACCENTED = ("café naïve jalapeño Ärger Übermaß straße façade crème brûlée déjà vu señor niño "
            "mañana über schön Müller Zürich Málaga São Paulo coração ação garçon élève "
            "Ångström Øresund smørrebrød København Kraków łódź Dvořák Škoda").split()
SPANISH = ("el la los las un una y de que en por para con sin sobre entre hasta desde cuando "
           "donde como porque pero también muy más menos bien mal gracias hola adiós").split()
FRENCH = ("le la les un une et de que en pour avec sans sur entre jusqu quand où comme parce "
          "mais aussi très plus moins bien mal merci bonjour au revoir été être déjà").split()
GERMAN = ("der die das ein eine und von dass in für mit ohne auf zwischen bis wenn wo wie weil "
          "aber auch sehr mehr weniger gut schlecht danke hallo tschüss für über schön").split()
CODE = [
    "def {n}(x, y):\n    return x + y * {k}",
    "for i in range({k}):\n    print(i, '{n}')",
    "let {n} = vec![{k}, {k2}, {k3}];",
    "fn {n}(a: u32) -> u32 {{ a * {k} }}",
    "if ({n} == {k}) {{ return null; }}",
    "{{\"{n}\": {k}, \"ok\": true, \"items\": [{k2}, {k3}]}}",
    "const {n} = require('{n}'); // {k}",
    "SELECT {n} FROM table WHERE id = {k};",
]


def sentence(r):
    kind = r.random()
    if kind < 0.45:
        w = [r.choice(NAMES) if r.random() < 0.3 else "The " + r.choice(ADJS) + " " + r.choice(NOUNS),
             r.choice(VERBS)]
        if r.random() < 0.4:
            w.append(r.choice(ADVS))
        w += [r.choice(["a", "the", "every", "no", "some"]), r.choice(ADJS), r.choice(NOUNS)]
        if r.random() < 0.3:
            w += [r.choice(["in", "on", "at", "with", "from", "for"]), "the", r.choice(NOUNS)]
        s = " ".join(w) + r.choice([".", ".", ".", "!", "?", ",", ";"])
        if r.random() < 0.2:
            s = s.replace(" is ", " isn't ") if " is " in s else s + " Don't worry, I'll see."
        return s
    if kind < 0.6:
        words = r.choice([SPANISH, FRENCH, GERMAN])
        return " ".join(r.choice(words) if r.random() > 0.25 else r.choice(ACCENTED)
                        for _ in range(r.randint(4, 12))).capitalize() + "."
    if kind < 0.72:
        return (f"In {r.randint(1800, 2030)} about {r.randint(0, 10**r.randint(1, 7))} "
                f"{r.choice(NOUNS)}s cost ${r.randint(1, 999)}.{r.randint(0, 99):02d} "
                f"({r.randint(0, 100)}%) on {r.randint(1, 28):02d}/{r.randint(1, 12):02d}.")
    if kind < 0.84:
        t = r.choice(CODE)
        return t.format(n=r.choice(NOUNS) + "_" + r.choice(NOUNS), k=r.randint(0, 999),
                        k2=r.randint(0, 99), k3=r.randint(0, 9))
    if kind < 0.92:
        role = r.choice(["user", "assistant", "system"])
        return f"<|im_start|>{role}\n{r.choice(NAMES)} {r.choice(VERBS)} {r.choice(NOUNS)}.<|im_end|>"
    # whitespace-heavy line
    return ("  " * r.randint(1, 4) + r.choice(NOUNS) + "\t" + r.choice(NOUNS) + "   " +
            r.choice(ADJS) + " <sep> " + r.choice(NOUNS))


def training_text():
    r = random.Random(SEED)
    return "\n".join(sentence(r) for _ in range(6000)) + "\n"


# ------------------------------------------------------------------ sentencepiece
def train(tmp):
    txt = os.path.join(tmp, "train.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(training_text())
    prefix = os.path.join(tmp, "tiny-spm")
    spm.SentencePieceTrainer.train(
        input=txt, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995,
        user_defined_symbols=USER_SYMBOLS, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentencepiece_length=16, num_threads=1, seed_sentencepiece_size=100000,
        shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
    )
    # the trainer records the (temporary) input path and model prefix: make them stable
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(open(prefix + ".model", "rb").read())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("train.txt")
    proto.trainer_spec.model_prefix = "tiny-spm"
    with open(prefix + ".model", "wb") as f:
        f.write(proto.SerializeToString(deterministic=True))
    return prefix + ".model"


def spm_vocab(model_path):
    """tokens/scores/types as convert_hf_to_gguf.py's _create_vocab_sentencepiece builds them."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(open(model_path, "rb").read())
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        piece = sp.IdToPiece(i)
        t = 1  # NORMAL
        if sp.IsUnknown(i):
            t = 2
        elif sp.IsControl(i):
            t = 3
        elif sp.IsUnused(i):
            t = 5
        elif sp.IsByte(i):
            t = 6
        if proto.pieces[i].type == sp_pb2.ModelProto.SentencePiece.USER_DEFINED:
            t = 3 if piece in CONTROL_SYMBOLS else 4  # added_tokens_decoder handling
        tokens.append(piece)
        scores.append(float(sp.GetScore(i)))
        types.append(t)
    return sp, tokens, scores, types


# ------------------------------------------------------------------ GGUF
def hf_to_gguf_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> GGUF interleaved rope)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def random_weights(vocab):
    g = np.random.default_rng(SEED)
    d, ff = HP["n_embd"], HP["n_ff"]
    kvd = d // HP["n_head"] * HP["n_head_kv"]
    n = lambda *s, std=0.2: (g.standard_normal(s) * std).astype(np.float32)
    return {  # HF layout / names
        "embed": n(vocab, d, std=0.5), "norm": (1 + n(d, std=0.1)),
        "attn_norm": (1 + n(d, std=0.1)), "q": n(d, d), "k": n(kvd, d), "v": n(kvd, d), "o": n(d, d),
        "ffn_norm": (1 + n(d, std=0.1)), "gate": n(ff, d), "up": n(ff, d), "down": n(d, ff),
    }


def write_gguf(path, tokens, scores, types, w):
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("tiny-spm")
    wr.add_block_count(HP["n_layer"])
    wr.add_context_length(HP["n_ctx"])
    wr.add_embedding_length(HP["n_embd"])
    wr.add_feed_forward_length(HP["n_ff"])
    wr.add_head_count(HP["n_head"])
    wr.add_head_count_kv(HP["n_head_kv"])
    wr.add_layer_norm_rms_eps(HP["eps"])
    wr.add_rope_freq_base(HP["rope_base"])
    wr.add_rope_dimension_count(HP["n_embd"] // HP["n_head"])
    wr.add_vocab_size(len(tokens))
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    wr.add_add_space_prefix(True)
    wr.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}")
    nh, nkv = HP["n_head"], HP["n_head_kv"]
    # output.weight omitted on purpose: llama.cpp then ties it to token_embd.weight
    wr.add_tensor("token_embd.weight", w["embed"])
    wr.add_tensor("output_norm.weight", w["norm"])
    wr.add_tensor("blk.0.attn_norm.weight", w["attn_norm"])
    wr.add_tensor("blk.0.attn_q.weight", hf_to_gguf_permute(w["q"], nh))
    wr.add_tensor("blk.0.attn_k.weight", hf_to_gguf_permute(w["k"], nkv))
    wr.add_tensor("blk.0.attn_v.weight", w["v"])
    wr.add_tensor("blk.0.attn_output.weight", w["o"])
    wr.add_tensor("blk.0.ffn_norm.weight", w["ffn_norm"])
    wr.add_tensor("blk.0.ffn_gate.weight", w["gate"])
    wr.add_tensor("blk.0.ffn_up.weight", w["up"])
    wr.add_tensor("blk.0.ffn_down.weight", w["down"])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def np_forward(w, ids):
    """float64 HF-convention llama forward (rotate-half rope on the *unpermuted* q/k)."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    d, H, KV = HP["n_embd"], HP["n_head"], HP["n_head_kv"]
    hd, n, eps = d // H, len(ids), HP["eps"]
    rms = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g
    inv = 1.0 / HP["rope_base"] ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    x = W["embed"][ids]
    h = rms(x, W["attn_norm"])
    q = rope((h @ W["q"].T).reshape(n, H, hd))
    k = rope((h @ W["k"].T).reshape(n, KV, hd))
    v = (h @ W["v"].T).reshape(n, KV, hd)
    k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
    att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, d) @ W["o"].T
    h = rms(x, W["ffn_norm"])
    gt = h @ W["gate"].T
    x = x + ((gt / (1 + np.exp(-gt))) * (h @ W["up"].T)) @ W["down"].T
    return rms(x, W["norm"]) @ W["embed"].T


# ------------------------------------------------------------------ main
# llama.cpp's own detokenizer, shared with the greedy-reference script.
from llamacpp_reference import llama_detokenize  # noqa: E402


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def hf_tokenizers(model_path, tmp):
    """transformers' LlamaTokenizer (tokenizers backend) converted from the .model file."""
    from transformers import LlamaTokenizer
    out = {}
    for legacy in (False, True):
        d = os.path.join(tmp, f"hf-legacy-{legacy}")
        os.makedirs(d, exist_ok=True)
        shutil.copy(model_path, os.path.join(d, "tokenizer.model"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": False,
                       "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                       "unk_token": "<unk>",
                       "added_tokens_decoder": {
                           str(i): {"content": t, "special": t in CONTROL_SYMBOLS, "lstrip": False,
                                    "rstrip": False, "normalized": False, "single_word": False}
                           for i, t in enumerate(["<unk>", "<s>", "</s>"] + USER_SYMBOLS)}}, f)
        out[legacy] = LlamaTokenizer.from_pretrained(d, legacy=legacy)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = json.load(open(CORPUS_JSON, encoding="utf-8"))["strings"]
    tmp = tempfile.mkdtemp(prefix="spm-fixture-")
    try:
        model_tmp = train(tmp)
        model_path = os.path.join(OUT, "tiny-spm.model")
        shutil.copy(model_tmp, model_path)
        sp, tokens, scores, types = spm_vocab(model_path)
        print(f"spm vocab {len(tokens)}; types: " +
              ", ".join(f"{t}:{types.count(t)}" for t in sorted(set(types))) +
              f"; first ids: {tokens[:8]}")
        w = random_weights(len(tokens))
        gguf_path = os.path.join(OUT, "tiny-spm.gguf")
        write_gguf(gguf_path, tokens, scores, types, w)

        from llama_cpp import Llama
        # F32 KV cache (type_k/type_v = GGML_TYPE_F32 = 0): with llama.cpp's default F16 cache
        # the logits differ from exact math by ~1e-2; with F32 they agree to ~1e-5.
        llm = Llama(model_path=gguf_path, n_ctx=256, n_threads=2, n_batch=256, seed=0,
                    logits_all=True, verbose=False, type_k=0, type_v=0)
        rows = []
        for s in corpus:
            b = s.encode("utf-8")
            ids_sp = llm.tokenize(b, add_bos=False, special=True)
            ids_nosp = llm.tokenize(b, add_bos=False, special=False)
            rows.append({
                "text": s, "ids_special": ids_sp, "ids_nospecial": ids_nosp,
                "ids_special_add_bos": llm.tokenize(b, add_bos=True, special=True),
                "detok_special": llm.detokenize(ids_sp, special=True).decode("utf-8", "replace"),
                "detok_nospecial": llm.detokenize(ids_nosp, special=False).decode("utf-8", "replace"),
                "detok_llama_detokenize": llama_detokenize(llm, ids_sp),
            })
            rows[-1]["roundtrip_ok"] = rows[-1]["detok_llama_detokenize"] == s
        mism = [r["text"] for r in rows if not r["roundtrip_ok"]]
        write_json("tokenizer_spm_llamacpp.json", {
            "generated_by": gen_by(),
            "gguf": "fixtures/spm/tiny-spm.gguf",
            "corpus": "fixtures/llamacpp/tokenizer_corpus.json",
            "settings": {"ids_special": "tokenize(text, add_bos=False, special=True)",
                         "ids_nospecial": "tokenize(text, add_bos=False, special=False)",
                         "ids_special_add_bos": "tokenize(text, add_bos=True, special=True)",
                         "detok_special": "detokenize(ids_special, special=True)",
                         "detok_nospecial": "detokenize(ids_nospecial, special=False)",
                         "detok_llama_detokenize": "C API llama_detokenize(ids_special, remove_special=False, "
                                                   "unparse_special=True): strips the space prefix of the "
                                                   "first token (llama-cpp-python's detokenize does not)",
                         "roundtrip_ok": "detok_llama_detokenize == text"},
            "vocab": {"size": len(tokens), "bos_id": 1, "eos_id": 2, "unk_id": 0,
                      "control": [i for i, t in enumerate(types) if t == 3],
                      "user_defined": [i for i, t in enumerate(types) if t == 4],
                      "byte_range": [types.index(6), len(types) - types[::-1].index(6) - 1]},
            "roundtrip_mismatches": mism,
            "cases": rows,
        })
        print(f"llama.cpp roundtrip mismatches ({len(mism)}): {mism}")

        # --- references: sentencepiece itself and transformers conversions
        hf = hf_tokenizers(model_path, tmp)
        ref_rows, dis = [], {"sentencepiece": [], "hf_legacy_false": [], "hf_legacy_true": []}
        for s, lc in zip(corpus, rows):
            r = {"text": s,
                 "sentencepiece": sp.encode(s),
                 "hf_legacy_false": hf[False].encode(s, add_special_tokens=False),
                 "hf_legacy_true": hf[True].encode(s, add_special_tokens=False)}
            r["hf_legacy_false_decoded"] = hf[False].decode(r["hf_legacy_false"])
            ref_rows.append(r)
            if r["sentencepiece"] != lc["ids_nospecial"]:
                dis["sentencepiece"].append({"text": s, "llamacpp_nospecial": lc["ids_nospecial"],
                                             "sentencepiece": r["sentencepiece"]})
            for k in ("hf_legacy_false", "hf_legacy_true"):
                if r[k] != lc["ids_special"]:
                    dis[k].append({"text": s, "llamacpp_special": lc["ids_special"], k: r[k]})
        best = min(("hf_legacy_false", "hf_legacy_true"), key=lambda k: len(dis[k]))
        write_json("tokenizer_spm_reference.json", {
            "generated_by": gen_by(),
            "settings": {
                "sentencepiece": "SentencePieceProcessor(tiny-spm.model).encode(text) "
                                 "(control/user tokens: only user-defined symbols are atomic)",
                "hf_legacy_false": "transformers LlamaTokenizer.from_pretrained(dir with tokenizer.model, "
                                   "legacy=False).encode(text, add_special_tokens=False)",
                "hf_legacy_true": "same with legacy=True",
                "compare": "sentencepiece vs llama.cpp ids_nospecial; hf_* vs llama.cpp ids_special",
            },
            "best_hf_match": best,
            "disagreement_counts": {k: len(v) for k, v in dis.items()},
            "disagreements": dis,
            "cases": ref_rows,
        })
        print("disagreements vs llama.cpp:", {k: len(v) for k, v in dis.items()}, "best:", best)

        # --- logits of the tiny model
        prompts = ["Hello world", "The quick brown fox jumps over the lazy dog.",
                   "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"]
        lrows, worst = [], 0.0
        for p in prompts:
            ids = llm.tokenize(p.encode(), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)], dtype=np.float32)
            ref = np_forward(w, ids)
            worst = max(worst, float(np.abs(got - ref).max()))
            lrows.append({"text": p, "ids": ids, "last_logits": [float(x) for x in got[-1]],
                          "argmax_per_position": [int(x) for x in got.argmax(-1)],
                          "numpy_last_logits_max_abs_diff": float(np.abs(got[-1] - ref[-1]).max())})
        print(f"tiny-spm.gguf llama.cpp vs numpy max |diff| = {worst:.2e}")
        assert worst < 1e-3, worst
        write_json("tiny_spm_logits.json", {
            "generated_by": gen_by(),
            "gguf": "fixtures/spm/tiny-spm.gguf",
            "note": "llama.cpp logits (f32 weights, CPU) after evaluating ids (add_bos=True, special=True); "
                    "q/k stored permuted as convert_hf_to_gguf.py does; output.weight absent (tied). "
                    "An independent float64 numpy forward of the unpermuted HF-layout weights agrees "
                    f"to {worst:.1e}.",
            "cases": lrows,
        })
        llm.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
