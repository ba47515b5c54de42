"""Starts `llm-serve serve` on the default model for the OpenAI SDK tests.

LLM_SERVE_BIN names the binary (the cargo test that runs this suite sets
it); otherwise target/release/llm-serve, then target/debug/llm-serve.
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODEL = "smollm2"
MAX_MODEL_LEN = 2048


def binary():
    if os.environ.get("LLM_SERVE_BIN"):
        return os.environ["LLM_SERVE_BIN"]
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "llm-serve")
        if os.path.exists(path):
            return path
    raise RuntimeError("build llm-serve first (cargo build --release) or set LLM_SERVE_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    port = free_port()
    # The server's log goes to a file, not a pipe nobody drains (a full pipe
    # would block the server).
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [binary(), "serve", "--dashboard-port", str(free_port()), "--state-dir", tempfile.mkdtemp(prefix="llm-serve-sdk-"),
         "--model", "default", "--served-model-name", MODEL, "--host", "127.0.0.1",
         "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes", str(256 << 20)],
        stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llm-serve exited: {log.read()}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("llm-serve did not become healthy in 120 s")
        time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)
