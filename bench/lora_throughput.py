#!/usr/bin/env python3
"""Throughput of multi-LoRA serving against the base model, side by side in
one run, through `llm-serve serve` on the default model.

The script writes N random rank-R LoRA adapters (PEFT layout, float16, all
seven projections: q, k, v, o, gate, up, down) for SmolLM2-135M into a
temporary directory and serves it as the model's `--lora-dir` with room
for all of them. Each round sends C concurrent streaming chat requests
(greedy, end-of-sequence ignored, exactly --max-tokens tokens each) three
times, alternating (each round starting one later than the last):

  base      every stream on the base model
  lora-4    the streams spread over 4 adapters (C/4 streams each)
  lora-N    the streams spread over N adapters (one each for N = C)

Aggregate throughput = completion tokens (from the usage chunks) / wall
time from the first request to the last; each figure is the median over
--rounds, and the ratios are against `base` of the same run. Before the
rounds, every adapter is loaded once by a first request: the replica's
`Successfully loaded model '<id>' in <ms>ms.` lines give the cold-load
latency (read the adapter from disk, check it, lay it out for the kernels).

With --overhead, a second server without `--lora-dir` runs base rounds
alternating with the first one's, for the cost of a LoRA-enabled replica
serving no adapter.

    python3 bench/lora_throughput.py [--binary target/release/llm-serve] [--overhead]
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SmolLM2-135M: projection (in, out) sizes, 30 layers.
LAYERS = 30
SHAPES = {
    "self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192), "self_attn.v_proj": (576, 192),
    "self_attn.o_proj": (576, 576), "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536),
    "mlp.down_proj": (1536, 576),
}
PROMPTS = [
    "Tell me a story about a lighthouse.", "Describe a busy market.", "Write about the ocean at night.",
    "Explain how bread is made.", "Describe a walk in the mountains.", "Tell me about a city you like.",
    "Write a letter to a friend.", "Describe a thunderstorm.",
]


def f16_pool(rng, n, scale):
    """`n` random float16 values (normal, std `scale`) as little-endian bytes."""
    return b"".join(struct.pack("<e", rng.gauss(0.0, scale)) for _ in range(n))


def write_adapters(directory, count, rank):
    """`count` PEFT adapters, each a distinct slice of one random pool."""
    rng = random.Random(7)
    tensors = []
    for layer in range(LAYERS):
        for module, (fan_in, fan_out) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors.append((f"{prefix}.lora_A.weight", (rank, fan_in)))
            tensors.append((f"{prefix}.lora_B.weight", (fan_out, rank)))
    total = sum(s[0] * s[1] for _, s in tensors)
    # A pool of values twice the size of an adapter, from random windows of
    # 4096 random values; adapter i starts at its own offset, so every
    # adapter's weights differ.
    values = f16_pool(rng, 4096, 0.05)
    pool = bytearray()
    while len(pool) < 4 * total:
        i = rng.randrange(0, 4096 - 512) * 2
        pool += values[i:i + 1024]
    names = []
    for a in range(count):
        name = f"lora-{a:02d}"
        d = os.path.join(directory, name)
        os.makedirs(d)
        header, offset, chunks = {}, 0, []
        start = (a * 9973 * 2) % (2 * total)
        data = bytes(pool[start:start + 2 * total])
        for tname, shape in tensors:
            n = shape[0] * shape[1] * 2
            header[tname] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + data)
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "bias": "none",
                  "target_modules": [m.split(".")[1] for m in SHAPES], "use_rslora": False,
                  "use_dora": False, "modules_to_save": None}
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f)
        names.append(name)
    return names, offset


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


def level(base, models, max_tokens):
    bodies = [{"model": m, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
               "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}} for i, m in enumerate(models)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        tokens = sum(pool.map(lambda b: stream(base, b), bodies))
    return tokens, time.perf_counter() - start


class Server:
    def __init__(self, binary, threads, lora_dir=None, max_adapters=16):
        self.port = free_port()
        self.state = tempfile.mkdtemp(prefix="llm-serve-bench-")
        args = [binary, "serve", "--model", "default", "--served-model-name", "m", "--port", str(self.port),
                "--dashboard-port", str(free_port()), "--state-dir", self.state, "--threads", str(threads),
                "--max-model-len", "1024", "--kv-cache-memory-bytes", str(512 << 20)]
        if lora_dir:
            args += ["--lora-dir", lora_dir, "--max-num-adapters-per-replica", str(max_adapters)]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, stderr=self.log, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise SystemExit(f"llm-serve did not start: {self.log.read()}")
            time.sleep(0.5)

    def load_latencies_ms(self):
        out = {}
        logs = os.path.join(self.state, "logs", "serve")
        for f in os.listdir(logs):
            if f.startswith("replica_"):
                with open(os.path.join(logs, f), errors="replace") as fh:
                    for m in re.finditer(r"Successfully loaded model '([^']+)' in ([0-9.]+)ms", fh.read()):
                        out[m.group(1)] = float(m.group(2))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "llm-serve"))
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--overhead", action="store_true",
                    help="also compare base streams on a server without --lora-dir")
    args = ap.parse_args()
    c = args.concurrency
    with tempfile.TemporaryDirectory(prefix="llm-serve-loras-") as d:
        t0 = time.time()
        names, nbytes = write_adapters(d, args.adapters, args.rank)
        print(f"{len(names)} adapters, rank {args.rank}, {nbytes / 2**20:.1f} MiB each "
              f"(written in {time.time() - t0:.0f} s)", flush=True)
        lora = Server(args.binary, args.threads, d, max(args.adapters, 4))
        plain = Server(args.binary, args.threads) if args.overhead else None
        try:
            for n in names:  # cold loads, one at a time
                level(lora.base, [f"m:{n}"], 1)
            loads = sorted(lora.load_latencies_ms().values())
            level(lora.base, ["m"] * 2, 4)  # warm-up
            if plain:
                level(plain.base, ["m"] * 2, 4)
            four = [f"m:{names[i % 4]}" for i in range(c)]
            spread = [f"m:{names[i % len(names)]}" for i in range(c)]
            runs = [("base", lora, ["m"] * c), ("lora-4", lora, four), (f"lora-{len(names)}", lora, spread)]
            if plain:
                runs.append(("base, no lora_config", plain, ["m"] * c))
            rates = {name: [] for name, _, _ in runs}
            for r in range(args.rounds):
                # Each round starts one later, so no run always goes first.
                shift = r % len(runs)
                for name, server, models in runs[shift:] + runs[:shift]:
                    tokens, wall = level(server.base, models, args.max_tokens)
                    rates[name].append(tokens / wall)
                    print(f"round {r + 1} {name}: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s",
                          flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            result = {"concurrency": c, "adapters": len(names), "rank": args.rank, "max_tokens": args.max_tokens,
                      "rounds": args.rounds, "threads": args.threads,
                      "tok_s": {k: round(v, 1) for k, v in med.items()},
                      "ratio_vs_base": {k: round(v / med["base"], 3) for k, v in med.items()},
                      "cold_load_ms_p50": round(statistics.median(loads), 1) if loads else None,
                      "cold_load_ms_max": round(max(loads), 1) if loads else None}
            print(json.dumps(result))
        finally:
            lora.stop()
            if plain:
                plain.stop()


if __name__ == "__main__":
    main()
