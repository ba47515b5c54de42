#!/usr/bin/env python3
"""Soak test: mixed traffic against `llm-serve serve` for a given time.

Starts `llm-serve serve` on the default model (or attaches to a running
server with --url and --pid), runs worker threads that each loop over a
random mix of requests -- non-streaming and streaming chat, completions
with several prompts, streams dropped mid-way, clients that leave before
the response, and bad requests (malformed JSON, wrong types, unknown
models, oversized prompts, huge `n`, text/plain bodies) -- and reports,
after a warm-up and again at the end (once traffic has stopped and the
server has settled), the RSS and open file descriptors of every process
of the server and the gauges that must return to idle. It exits non-zero
when a bound is exceeded:

  * RSS of each process grows by at most --rss-bound-mib (default 64 MiB)
    between the snapshot after the warm-up and the end;
  * open fds of each process grow by at most --fd-bound (default 16);
  * at the end nothing is running, waiting, queued or in flight
    (`llm_serve:num_requests_running`, `llm_serve:num_requests_waiting`,
    `serve_deployment_queued_queries`, `serve_num_ongoing_requests_at_replicas`
    are 0 and `serve_num_ongoing_http_requests` is 1: the scrape itself);
  * no request got a 5xx (every bad request is a 4xx), and the replica
    process was never replaced.

Only the standard library; loopback only; every loop is bounded by the
duration. Example (10 minutes, as recorded in bench/README.md):

  python3 bench/soak.py --binary target/release/llm-serve --duration 600
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

MODEL = "smollm2"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def children(pid):
    """Every descendant pid of `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parents.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def process_facts(pid):
    """RSS in MiB and open fds of a process, with its role."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        role = args[1].decode() if len(args) > 1 else "?"
        return {"pid": pid, "role": role, "rss_mib": rss_kib / 1024, "fds": fds}
    except (OSError, StopIteration):
        return None


GAUGES = [
    "serve_num_ongoing_http_requests",
    "llm_serve:num_requests_running",
    "llm_serve:num_requests_waiting",
    "llm_serve:kv_cache_usage_perc",
    "serve_deployment_queued_queries",
    "serve_num_ongoing_requests_at_replicas",
    "serve_deployment_replica_starts_total",
]


def gauges(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        if name in GAUGES:
            out[name] = out.get(name, 0.0) + float(value)
    return out


def snapshot(host, port, pid):
    procs = [process_facts(p) for p in [pid] + children(pid)]
    return {"processes": [p for p in procs if p], "gauges": gauges(host, port)}


class Traffic:
    """One worker's request mix; results go into a shared counter."""

    def __init__(self, host, port, counts, lock, rng):
        self.host, self.port = host, port
        self.counts, self.lock, self.rng = counts, lock, rng

    def count(self, kind, status):
        with self.lock:
            self.counts[(kind, status)] += 1

    def post(self, path, body, content_type="application/json", timeout=120):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": content_type})
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, payload

    def run_one(self):
        kind = self.rng.choices(
            ["chat", "stream", "completions", "stream_abort", "leave_early", "bad"],
            weights=[3, 3, 2, 2, 1, 3],
        )[0]
        try:
            getattr(self, kind)()
        except (OSError, http.client.HTTPException) as e:
            self.count(kind, f"error:{type(e).__name__}")

    def _chat_body(self, max_tokens=16, **extra):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.rng.choice(
                ["Say hello.", "Name a colour.", "What is 2+2?", "Tell me a fact."])}],
            "max_tokens": max_tokens,
            "temperature": self.rng.choice([0, 0.7, 1.0]),
        }
        body.update(extra)
        return body


class Mix(Traffic):
    def chat(self):
        status, _ = self.post("/v1/chat/completions", self._chat_body(self.rng.randint(1, 32)))
        self.count("chat", status)

    def completions(self):
        prompts = ["Once upon a time", "The capital of France is", "1, 2, 3,"]
        body = {"model": MODEL, "prompt": prompts[: self.rng.randint(1, 3)],
                "max_tokens": self.rng.randint(1, 24), "n": self.rng.randint(1, 2)}
        status, _ = self.post("/v1/completions", body)
        self.count("completions", status)

    def stream(self, abort_after=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        body = self._chat_body(self.rng.randint(4, 48), stream=True,
                               stream_options={"include_usage": True})
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        kind = "stream" if abort_after is None else "stream_abort"
        if abort_after is None:
            data = r.read()
            ok = data.rstrip().endswith(b"data: [DONE]")
            self.count(kind, r.status if ok else f"{r.status}:truncated")
        else:
            for _ in range(abort_after):
                if not r.readline():
                    break
            self.count(kind, r.status)
            # Dropping the socket mid-stream: the engine must let it go.
            conn.sock.close()
        conn.close()

    def stream_abort(self):
        self.stream(abort_after=self.rng.randint(1, 6))

    def leave_early(self):
        body = json.dumps(self._chat_body(64, ignore_eos=True)).encode()
        s = socket.create_connection((self.host, self.port), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(self.rng.uniform(0.01, 0.3))
        s.close()
        self.count("leave_early", "sent")

    def bad(self):
        choice = self.rng.randrange(8)
        if choice == 0:
            status, _ = self.post("/v1/chat/completions", b"{not json", timeout=30)
        elif choice == 1:
            status, _ = self.post("/v1/chat/completions",
                                  self._chat_body(temperature="hot"), timeout=30)
        elif choice == 2:
            status, _ = self.post("/v1/chat/completions",
                                  self._chat_body(n=1_000_000_000), timeout=30)
        elif choice == 3:
            status, _ = self.post("/v1/chat/completions",
                                  self._chat_body(model="no-such-model"), timeout=30)
        elif choice == 4:
            status, _ = self.post("/v1/completions",
                                  {"model": MODEL, "prompt": "word " * 5000}, timeout=60)
        elif choice == 5:
            status, _ = self.post("/v1/chat/completions",
                                  json.dumps(self._chat_body()).encode(),
                                  content_type="text/plain", timeout=30)
        elif choice == 6:
            status, _ = self.post("/v1/chat/completions",
                                  self._chat_body(tools="x"), timeout=30)
        else:
            status, _ = self.post("/v1/completions",
                                  {"model": MODEL, "prompt": [[1, 2], [-3]]}, timeout=30)
        self.count(f"bad{choice}", status)


def worker(host, port, deadline, counts, lock, seed):
    mix = Mix(host, port, counts, lock, random.Random(seed))
    while time.time() < deadline:
        mix.run_one()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default="target/release/llm-serve")
    ap.add_argument("--model", default="default")
    ap.add_argument("--url", help="attach to a running server (host:port) instead of starting one")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid")
    ap.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    ap.add_argument("--warmup", type=float, default=30, help="seconds before the first snapshot")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rss-bound-mib", type=float, default=64)
    ap.add_argument("--fd-bound", type=int, default=16)
    ap.add_argument("--kv-cache-mib", type=int, default=64,
                    help="KV cache of the replica; small, so the warm-up touches all of it "
                         "(its pages become resident as blocks are first used)")
    ap.add_argument("--sample-every", type=float, default=60, help="seconds between RSS samples")
    ap.add_argument("--json", help="also write the report to this file")
    args = ap.parse_args()

    server = None
    if args.url:
        host, port = args.url.rsplit(":", 1)
        port, pid = int(port), args.pid
        if pid is None:
            sys.exit("--url needs --pid (the server's process) to measure it")
    else:
        host, port = "127.0.0.1", free_port()
        state = tempfile.mkdtemp(prefix="llm-serve-soak-")
        server = subprocess.Popen(
            [args.binary, "serve", "--model", args.model, "--served-model-name", MODEL,
             "--port", str(port), "--dashboard-port", str(free_port()),
             "--state-dir", state, "--max-model-len", "2048",
             "--kv-cache-memory-bytes", str(args.kv_cache_mib << 20)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "serve.err"), "w"))
        pid = server.pid
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"llm-serve did not become healthy (see {state}/serve.err)")
            time.sleep(0.2)

    counts, lock = Counter(), threading.Lock()
    start = time.time()
    end = start + args.duration
    threads = [threading.Thread(target=worker, args=(host, port, end, counts, lock, i),
                                daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(min(args.warmup, args.duration / 2))
    first = snapshot(host, port, pid)
    series = [(round(time.time() - start), first["processes"])]
    while any(t.is_alive() for t in threads):
        time.sleep(min(args.sample_every, max(0.1, end - time.time() + 0.1)))
        if time.time() < end:
            series.append((round(time.time() - start), snapshot(host, port, pid)["processes"]))
    for t in threads:
        t.join(timeout=300)
    time.sleep(5)  # let cancelled work and idle connections settle
    last = snapshot(host, port, pid)

    problems = []
    before = {p["pid"]: p for p in first["processes"]}
    for p in last["processes"]:
        b = before.get(p["pid"])
        if b is None:
            problems.append(f"process {p['pid']} ({p['role']}) appeared during the run")
            continue
        if p["rss_mib"] - b["rss_mib"] > args.rss_bound_mib:
            problems.append(f"{p['role']} {p['pid']}: RSS grew {p['rss_mib'] - b['rss_mib']:.1f} MiB")
        if p["fds"] - b["fds"] > args.fd_bound:
            problems.append(f"{p['role']} {p['pid']}: fds grew {p['fds'] - b['fds']}")
    g = last["gauges"]
    for name in ["llm_serve:num_requests_running", "llm_serve:num_requests_waiting",
                 "serve_deployment_queued_queries", "serve_num_ongoing_requests_at_replicas"]:
        if g.get(name, 0.0) != 0.0:
            problems.append(f"{name} is {g.get(name)} at rest")
    if g.get("serve_num_ongoing_http_requests", 1.0) != 1.0:
        problems.append(f"serve_num_ongoing_http_requests is {g.get('serve_num_ongoing_http_requests')} at rest (1 is the scrape)")
    if g.get("serve_deployment_replica_starts_total", 1.0) != first["gauges"].get(
            "serve_deployment_replica_starts_total", 1.0):
        problems.append("a replica was started again during the run")
    for (kind, status), n in counts.items():
        if isinstance(status, int) and status >= 500:
            problems.append(f"{n} × {kind} answered {status}")
        if isinstance(status, str) and status.startswith("error") and kind not in ("stream_abort", "leave_early"):
            problems.append(f"{n} × {kind}: {status}")

    report = {
        "duration_s": round(time.time() - start, 1),
        "clients": args.clients,
        "requests": {f"{k} {s}": n for (k, s), n in sorted(counts.items(), key=str)},
        "after_warmup": first,
        "end": last,
        "rss_mib_series": [
            {"t_s": t, **{f"{p['role']}:{p['pid']}": round(p["rss_mib"], 1) for p in procs}}
            for t, procs in series + [(round(time.time() - start), last["processes"])]
        ],
        "bounds": {"rss_growth_mib": args.rss_bound_mib, "fd_growth": args.fd_bound},
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if server is not None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
