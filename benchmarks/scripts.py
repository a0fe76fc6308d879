"""bench.py train / eval / serve: the scripts themselves. train.py in fresh processes (its log.jsonl),
eval.py's perplexity pass, and a real serve.py process driven over HTTP."""

import concurrent.futures
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import machine, mini_lm, model_of, sized
from core import checkpoint, cpu_memory, metrics
from core.tokenizer import Tokenizer
from model import GPT, GPTConfig


def bench_train(quick=False):
    """Runs train.py in fresh processes (so peak memory is each setting's own) and reads its
    log.jsonl."""
    base = ["config/cpu_demo.py", "--eval_interval=100000", "--sample_interval=0",
            "--log_interval=1", "--tensorboard=False", "--checkpoint_interval=0"]
    mini = base + ["--n_layer=10", "--n_head=8", "--n_embd=512", "--block_size=1024", "--batch_size=4",
                   f"--max_iters={4 if quick else 8}"]
    base = base + [f"--max_iters={4 if quick else 24}"]
    if quick:
        mini = base + ["--n_layer=2", "--block_size=64", "--batch_size=2"]
    print(f"machine: {machine()}\n\n| model | setting | tokens/s (median of last steps) | peak memory |\n"
          "|---|---|---:|---:|")
    vocab_size = json.loads(Path("data/demo/meta.json").read_text())["vocab_size"]  # what train.py reads
    labels = (sized("cpu_demo", model_of(*base, vocab_size=vocab_size)),
              sized("mini_lm's shape", model_of(*mini, vocab_size=vocab_size)) + ", batch 4 x 1024")
    for label, args in zip(labels, (base, mini)):
        # gradient checkpointing's memory is compared with freed memory handed back, where peak
        # memory is the tensors' own (kept memory holds the heap near its peak whatever they need)
        for setting in ([], ["--compile=True"], ["--keep_freed_memory=False"],
                        ["--keep_freed_memory=False", "--gradient_checkpointing=True"]):
            with tempfile.TemporaryDirectory() as out:
                result = subprocess.run([sys.executable, "train.py", *args, *setting, f"--out_dir={out}"],
                                        capture_output=True, text=True)
                if result.returncode:
                    raise SystemExit(result.stderr[-2000:])
                steps = [r for r in map(json.loads, open(Path(out) / "log.jsonl")) if r["kind"] == "step"]
            rate = statistics.median(r["tokens_per_s"] for r in steps[len(steps) // 2:])
            print(f"| {label} | {' '.join(setting) or 'eager'} | {rate:,.0f} | "
                  f"{steps[-1]['memory_gb']:.2f} GB |", flush=True)


def bench_eval(quick=False):
    """Tokens/s of the sliding-window perplexity pass (no grad, batched, fp32), random weights,
    with freed memory kept in the process as eval.py does on CPU (cpu_memory.py)."""
    import numpy as np
    import torch

    cpu_memory.keep_freed_memory()
    cpu_demo = model_of("config/cpu_demo.py")
    print(f"machine: {machine()}, {torch.get_num_threads()} threads\n\n"
          "| model | block | stride | batch | tokens | tokens/s |\n|---|---:|---:|---:|---:|---:|")
    for label, config in ((sized("cpu_demo", cpu_demo), cpu_demo), (sized("mini_lm", mini_lm()), mini_lm())):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**config)).eval()
        block = config["block_size"]
        n = 2_000 if quick else 50_000 if block <= 128 else 20_000
        tokens = np.random.default_rng(0).integers(0, config["vocab_size"], n)
        for stride in (block // 2, block):
            metrics.sliding_window_nll(model, tokens[:2 * block], stride, 8)
            t0 = time.perf_counter()
            nll = metrics.sliding_window_nll(model, tokens, stride, 8)
            rate = len(nll) / (time.perf_counter() - t0)
            print(f"| {label} | {block} | {stride} | 8 | {len(nll):,} | {rate:,.0f} |", flush=True)


def post(url, body):
    """(JSON answer, seconds) of one POST."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return out, time.perf_counter() - t0


def start_server(path, *options):
    """(process, url, seconds until /health answered) of serve.py on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "serve.py", f"--ckpt={path}", f"--port={port}", *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"serve.py {' '.join(options)} exited with {proc.returncode}")


def concurrent_clients(url, clients, requests_each, body):
    """(aggregate completion tokens/s, sorted latencies) of `clients` threads each sending
    requests_each completions one after another."""
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: post(url + "/v1/completions", body),
                                range(clients * requests_each)))
    wall = time.perf_counter() - t0
    return (sum(r[0]["usage"]["completion_tokens"] for r in results) / wall,
            sorted(r[1] for r in results))


def bench_serve(quick=False):
    """A real serve.py process per model size and decoding setting (random weights, the demo
    tokenizer), driven over HTTP: one client, then 4 and 8 at once."""
    import torch

    tokenizer = Tokenizer.load(Path("data/demo/tokenizer.json"))
    settings = [(sized("cpu_demo", model_of("config/cpu_demo.py")), model_of("config/cpu_demo.py"), dtype, False)
                for dtype in ("float32", "bfloat16")]
    settings += [(sized("mini_lm", mini_lm()), mini_lm(), dtype, compile_) for dtype in
                 ("float32", "bfloat16", "int8") for compile_ in (False, True)]
    print(f"machine: {machine()}\n\n| model | weights | decoding step | start-up | one client "
          "tokens/s | 4 clients: aggregate tokens/s | 8 clients: aggregate tokens/s | 64-token "
          "completion p50 / p95 (8 clients) |\n|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, config, dtype, compile_ in settings:
            path = Path(tmp) / f"{label.split()[0]}.pt"
            if not path.exists():
                torch.manual_seed(0)
                model = GPT(GPTConfig(**config))
                checkpoint.save({"format_version": checkpoint.FORMAT_VERSION,
                                 "model": model.state_dict(), "model_args": asdict(model.config),
                                 "tokenizer": tokenizer.to_dict(), "config": {}}, path)
            proc, url, start_up = start_server(path, f"--dtype={dtype}", f"--compile={compile_}")
            try:
                body = {"prompt": "The river", "max_tokens": 16 if quick else 128,
                        "temperature": 0, "stop": ["\u0000"]}
                post(url + "/generate", body)
                single = [post(url + "/generate", body)[0]["tokens_per_second"] for _ in range(3)]
                body = dict(body, max_tokens=16 if quick else 64)
                rates = {n: concurrent_clients(url, n, 2 if quick else 4, body) for n in (4, 8)}
                latencies = rates[8][1]
                p50 = latencies[len(latencies) // 2]
                p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
                print(f"| {label} | {dtype} | {'compiled' if compile_ else 'eager'} | "
                      f"{start_up:.0f} s | {statistics.median(single):,.1f} | {rates[4][0]:,.1f} | "
                      f"{rates[8][0]:,.1f} | {p50:.2f} s / {p95:.2f} s |", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
