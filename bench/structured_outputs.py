#!/usr/bin/env python3
"""Throughput of grammar-constrained streams against unconstrained ones,
side by side in one run, through `llm-serve serve` on one model.

Each round sends C concurrent streaming chat requests twice, alternating:
unconstrained (end-of-sequence ignored, exactly --max-tokens tokens) and
with a `json_schema` response format whose schema admits long answers (a
list of up to 64 short strings), greedy. Aggregate throughput = completion
tokens (from the streams' usage chunks) / wall time from the first request
to the last. Each figure is the median over --rounds; the ratio is
constrained / unconstrained.

The per-token cost of the mask itself is measured by
`cargo run --release -p llm-serve-engine --example mask_cost`.

    python3 bench/structured_outputs.py [--binary target/release/llm-serve]
"""
import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 64}},
    "required": ["items"],
    "additionalProperties": False,
}
PROMPTS = [
    "List some fruits.", "Name animals that live in the sea.", "List European capitals.",
    "Write down colours you know.", "List programming languages.", "Name famous painters.",
    "List kitchen tools.", "Name some rivers.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(base, body):
    """Sends one streaming request; returns its completion tokens."""
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    tokens = 0
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens


def level(base, model, c, max_tokens, constrained):
    bodies = []
    for i in range(c):
        body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "list", "schema": SCHEMA}}
        else:
            body["ignore_eos"] = True
        bodies.append(body)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(c) as pool:
        tokens = sum(pool.map(lambda b: stream(base, b), bodies))
    wall = time.perf_counter() - start
    return tokens, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "llm-serve"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [args.binary, "serve", "--model", args.model, "--served-model-name", "m", "--port", str(port),
         "--dashboard-port", str(free_port()), "--state-dir", tempfile.mkdtemp(prefix="llm-serve-bench-"),
         "--max-model-len", "1024", "--kv-cache-memory-bytes", str(512 << 20)], stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise SystemExit(f"llm-serve did not start: {log.read()}")
            time.sleep(0.5)
        level(base, "m", 2, 8, True)  # warm-up: builds the token trie
        rates = {False: [], True: []}
        for r in range(args.rounds):
            for constrained in (False, True):
                tokens, wall = level(base, "m", args.concurrency, args.max_tokens, constrained)
                rates[constrained].append(tokens / wall)
                print(f"round {r + 1} {'json_schema ' if constrained else 'unconstrained'}: "
                      f"{tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s", flush=True)
        free, con = statistics.median(rates[False]), statistics.median(rates[True])
        result = {"concurrency": args.concurrency, "max_tokens": args.max_tokens, "rounds": args.rounds,
                  "unconstrained_tok_s": round(free, 1), "json_schema_tok_s": round(con, 1),
                  "ratio": round(con / free, 3)}
        print(json.dumps(result))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
