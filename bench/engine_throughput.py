#!/usr/bin/env python3
"""Aggregate generation throughput of the llm-serve engine against
llama.cpp's server, side by side, at several levels of concurrency.

For each level C, C requests (each with its own prompt of --prompt-tokens
token ids, generating --gen-tokens tokens with end-of-sequence ignored,
greedy) are submitted at once:

- llm-serve: `llm-serve bench-engine` (the engine in process; continuous
  batching, chunked prefill).
- llama.cpp: `llama-server` started with the same GGUF, the same thread
  count and C parallel slots (each slot holding prompt + generation), the
  requests sent concurrently to /completion with the same token ids.

Aggregate throughput = generated tokens / wall time from the first request
to the last. The two sides alternate level by level in one run; with
--rounds R the whole sweep runs R times and each figure is the median.

    python3 bench/engine_throughput.py --llama-server /path/to/llama-server
"""
import argparse
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_prompts(n, length, vocab, seed=1234):
    rng = random.Random(seed)
    # Ordinary token ids (skip the first ids, which hold special tokens).
    return [[rng.randrange(200, vocab) for _ in range(length)] for _ in range(n)]


def ours(binary, model, threads, c, prompts_file, pp, tg):
    out = subprocess.run(
        [binary, "bench-engine", "--model", model, "--threads", str(threads), "--concurrency", str(c),
         "--prompt-tokens", str(pp), "--gen-tokens", str(tg), "--prompts-file", prompts_file, "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=3600):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def llama(binary, model, threads, c, prompts, pp, tg):
    port = free_port()
    ctx_per_slot = pp + tg + 16
    proc = subprocess.Popen(
        [binary, "-m", model, "-t", str(threads), "-tb", str(threads), "-np", str(c), "-c", str(c * ctx_per_slot),
         "--port", str(port), "--host", "127.0.0.1", "-b", "512", "-ub", "512", "--no-warmup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("llama-server did not start")
            time.sleep(0.2)
        body = lambda p, n: {"prompt": p, "n_predict": n, "ignore_eos": True, "temperature": 0.0,
                             "cache_prompt": False}
        post(base + "/completion", body(prompts[0][:8], 4))  # warm-up
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=c) as ex:
            results = list(ex.map(lambda p: post(base + "/completion", body(p, tg)), prompts[:c]))
        wall = time.time() - start
        generated = sum(r["tokens_predicted"] for r in results)
        ttft = sum(r["timings"]["prompt_ms"] for r in results) / len(results) / 1e3
        return {"generated": generated, "wall_s": wall, "gen_tokens_per_s": generated / wall,
                "mean_prompt_s": ttft}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.expanduser(
        os.environ.get("LLM_SERVE_MODELS_DIR", "~/.cache/llm-serve/models") + "/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llm-serve", default=os.path.join(ROOT, "target/release/llm-serve"))
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    prompts = make_prompts(max(levels), a.prompt_tokens, a.vocab)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
        prompts_file = f.name
    runs = {c: ([], []) for c in levels}
    for r in range(a.rounds):
        for c in levels:
            o = ours(a.llm_serve, a.model, a.threads, c, prompts_file, a.prompt_tokens, a.gen_tokens)
            l = llama(a.llama_server, a.model, a.threads, c, prompts, a.prompt_tokens, a.gen_tokens) if a.llama_server else None
            runs[c][0].append(o)
            if l:
                runs[c][1].append(l)
            lt = f"{l['gen_tokens_per_s']:7.1f}" if l else "    n/a"
            print(f"round {r + 1} concurrency {c:>3}: llm-serve {o['gen_tokens_per_s']:7.1f} tok/s   llama-server {lt} tok/s",
                  flush=True)

    def median(results):
        if not results:
            return None
        v = sorted(x["gen_tokens_per_s"] for x in results)
        return {"gen_tokens_per_s": v[len(v) // 2]}

    rows = [(c, median(runs[c][0]), median(runs[c][1])) for c in levels]
    print(f"\nmedians of {a.rounds} rounds:")
    for c, o, l in rows:
        lt = f"{l['gen_tokens_per_s']:7.1f}" if l else "    n/a"
        ratio = f"{o['gen_tokens_per_s'] / l['gen_tokens_per_s']:.2f}x" if l else "n/a"
        print(f"concurrency {c:>3}: llm-serve {o['gen_tokens_per_s']:7.1f} tok/s   llama-server {lt} tok/s   ratio {ratio}")
    base_o = rows[0][1]["gen_tokens_per_s"]
    base_l = rows[0][2]["gen_tokens_per_s"] if rows[0][2] else None
    print("\nscaling against 1 request:")
    for c, o, l in rows:
        ls = f"{l['gen_tokens_per_s'] / base_l:.2f}x" if l and base_l else "n/a"
        print(f"  {c:>3}: llm-serve {o['gen_tokens_per_s'] / base_o:.2f}x   llama-server {ls}")
    os.unlink(prompts_file)


if __name__ == "__main__":
    sys.exit(main())
