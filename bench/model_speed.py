#!/usr/bin/env python3
"""Single-sequence model speed of llm-serve against llama.cpp, side by side.

Runs `llm-serve bench` (pp512 / tg128 by default) and llama.cpp's
`llama-bench` with the same GGUF, thread count and test sizes, alternating
them for several rounds in one run, and prints each side's mean tokens/s and
the ratio llm-serve / llama.cpp.

    python3 bench/model_speed.py --llama-bench /path/to/llama-bench [--threads 2]

Without --llama-bench (or $LLAMA_BENCH), llama.cpp is timed in-process through
the llama-cpp-python package (per-call Python overhead makes its decode figure
somewhat pessimistic). See bench/README.md for how to get either.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llm_serve(binary, model, threads, pp, tg, reps):
    out = subprocess.run(
        [binary, "bench", "--model", model, "--threads", str(threads), "--prompt-tokens", str(pp),
         "--gen-tokens", str(tg), "--repetitions", str(reps), "--json"],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["prefill_tokens_per_s"], r["decode_tokens_per_s"]


def llama_bench(binary, model, threads, pp, tg, reps):
    out = subprocess.run(
        [binary, "-m", model, "-t", str(threads), "-p", str(pp), "-n", str(tg), "-r", str(reps), "-o", "json"],
        check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    pp_rate = next(r["avg_ts"] for r in rows if r["n_prompt"] == pp and r["n_gen"] == 0)
    tg_rate = next(r["avg_ts"] for r in rows if r["n_gen"] == tg and r["n_prompt"] == 0)
    return pp_rate, tg_rate


def llama_cpp_python(model, threads, pp, tg, reps):
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_ctx=max(pp, tg) + 16, n_threads=threads, n_threads_batch=threads,
                n_batch=pp, n_ubatch=pp, verbose=False)
    vocab = llm.n_vocab()
    ids = [(i * 2654435761 + 17) % vocab for i in range(pp + tg)]
    pps, tgs = [], []
    for rep in range(reps + 1):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids[:pp])
        pp_s = time.perf_counter() - t
        llm.reset()
        t = time.perf_counter()
        for i in range(tg):
            llm.eval([ids[pp + i]])
        tg_s = time.perf_counter() - t
        if rep:
            pps.append(pp / pp_s)
            tgs.append(tg / tg_s)
    return statistics.mean(pps), statistics.mean(tgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("LLM_SERVE_MODELS_DIR", os.path.expanduser("~/.cache/llm-serve/models")),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repetitions", type=int, default=3, help="per round, per side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"))
    ap.add_argument("--llm-serve", default=os.path.join(ROOT, "target/release/llm-serve"))
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "llm-serve"], cwd=ROOT, check=True)
    if not os.path.isfile(args.model):
        sys.exit(f"{args.model} is missing: run scripts/fetch-default-model.sh")
    ours, theirs = [], []
    for rnd in range(args.rounds):
        ours.append(llm_serve(args.llm_serve, args.model, args.threads, args.prompt_tokens, args.gen_tokens,
                              args.repetitions))
        if args.llama_bench:
            theirs.append(llama_bench(args.llama_bench, args.model, args.threads, args.prompt_tokens,
                                      args.gen_tokens, args.repetitions))
        else:
            theirs.append(llama_cpp_python(args.model, args.threads, args.prompt_tokens, args.gen_tokens,
                                           args.repetitions))
        print(f"round {rnd + 1}: llm-serve pp {ours[-1][0]:.1f} tg {ours[-1][1]:.1f} | "
              f"llama.cpp pp {theirs[-1][0]:.1f} tg {theirs[-1][1]:.1f}", file=sys.stderr)
    o_pp = statistics.mean(r[0] for r in ours)
    o_tg = statistics.mean(r[1] for r in ours)
    t_pp = statistics.mean(r[0] for r in theirs)
    t_tg = statistics.mean(r[1] for r in theirs)
    baseline = "llama-bench" if args.llama_bench else "llama-cpp-python"
    print(f"model: {os.path.basename(args.model)}, threads: {args.threads}, baseline: {baseline}, "
          f"rounds: {args.rounds} x {args.repetitions}")
    print(f"| test | llm-serve tok/s | llama.cpp tok/s | ratio |")
    print(f"|---|---:|---:|---:|")
    print(f"| pp{args.prompt_tokens} | {o_pp:.1f} | {t_pp:.1f} | {o_pp / t_pp:.2f}x |")
    print(f"| tg{args.gen_tokens} | {o_tg:.1f} | {t_tg:.1f} | {o_tg / t_tg:.2f}x |")


if __name__ == "__main__":
    main()
