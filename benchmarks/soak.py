"""bench.py soak: a real serve.py process under N clients for M minutes of mixed traffic.

Each client sends, one after another, requests drawn from TRAFFIC: plain completions, streamed ones,
streams it drops half-way (closing the connection after a few events), n > 1, stop strings, and
echo + logprobs (how lm-evaluation-harness scores text). Reported: requests and status codes per
kind, latency p50 / p99 per kind, failures (a 5xx, a dropped connection, a broken stream), and the
server's resident memory at the start, after the warm-up and at the end, so a leak shows as growth
after the warm-up.
"""

import http.client
import json
import random
import statistics
import threading
import time
from pathlib import Path

from benchmarks.common import machine
from benchmarks.scripts import start_server

PROMPTS = ["The river", "Once upon a time", "In the beginning", "def main():", "A", "The king said"]
WARM_UP_SECONDS = 30


def completion(rng, **extra):
    return {"prompt": rng.choice(PROMPTS), "max_tokens": rng.choice([8, 32, 64]),
            "temperature": rng.choice([0, 0.8]), **extra}


# kind: (share of the traffic, request body from a random generator)
TRAFFIC = {
    "plain": (0.3, lambda rng: completion(rng)),
    "streamed": (0.2, lambda rng: completion(rng, stream=True)),
    "stream dropped": (0.15, lambda rng: completion(rng, stream=True, max_tokens=128)),
    "n > 1": (0.1, lambda rng: completion(rng, n=rng.choice([2, 4]))),
    "stop strings": (0.15, lambda rng: completion(rng, stop=[".", "\n", " the"])),
    "echo + logprobs": (0.1, lambda rng: {"prompt": rng.choice(PROMPTS) + " and the sea",
                                          "max_tokens": 0, "echo": True, "logprobs": 1}),
}


def resident_mb(pid):
    """The process's resident memory (VmRSS) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def send(host, port, kind, body):
    """(status, seconds, problem or None) of one request of this kind on its own connection."""
    conn = http.client.HTTPConnection(host, port, timeout=300)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if kind == "stream dropped" and response.status == 200:
            for _ in range(3):  # a few events, then the client goes away
                response.fp.readline()
            return response.status, time.perf_counter() - t0, None
        data = response.read()
        problem = None
        if response.status >= 500:
            problem = f"{response.status}: {data[:200]!r}"
        elif response.status == 200 and body.get("stream"):
            events = [e for e in data.decode().split("\n\n") if e]
            if events[-1] != "data: [DONE]" or any('"error"' in e for e in events):
                problem = f"broken stream: {data[-200:]!r}"
        return response.status, time.perf_counter() - t0, problem
    except (OSError, http.client.HTTPException) as e:
        return None, time.perf_counter() - t0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def client(host, port, seed, until, results, lock):
    """Send requests drawn from TRAFFIC until the deadline; append (kind, status, seconds, problem,
    finished at) to results."""
    rng = random.Random(seed)
    kinds, weights = list(TRAFFIC), [share for share, _ in TRAFFIC.values()]
    while time.time() < until:
        kind = rng.choices(kinds, weights)[0]
        status, seconds, problem = send(host, port, kind, TRAFFIC[kind][1](rng))
        with lock:
            results.append((kind, status, seconds, problem, time.time()))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_soak(ckpt, clients=4, minutes=5.0, options=()):
    """Soak serve.py (ckpt, with options) with `clients` clients for `minutes`; prints the tables."""
    proc, url, start_up = start_server(ckpt, *options)
    host, port = url.removeprefix("http://").split(":")
    results, lock = [], threading.Lock()
    try:
        memory = {"start": resident_mb(proc.pid)}
        started = time.time()
        until = started + 60 * minutes
        threads = [threading.Thread(target=client, args=(host, int(port), seed, until, results, lock))
                   for seed in range(clients)]
        for t in threads:
            t.start()
        time.sleep(min(WARM_UP_SECONDS, 60 * minutes / 2))
        memory["after warm-up"] = resident_mb(proc.pid)
        for t in threads:
            t.join()
        memory["end"] = resident_mb(proc.pid)
        alive = proc.poll() is None and send(host, int(port), "plain", {"prompt": "A",
                                                                         "max_tokens": 1})[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report(ckpt, clients, minutes, options, start_up, results, memory, alive)
    return results, memory


def report(ckpt, clients, minutes, options, start_up, results, memory, alive):
    print(f"machine: {machine()}\nserve.py --ckpt={ckpt} {' '.join(options)}: {clients} clients for "
          f"{minutes:g} minutes (start-up {start_up:.0f} s)\n")
    print("| kind | requests | status codes | failures | latency p50 | latency p99 |\n"
          "|---|---:|---|---:|---:|---:|")
    for kind in [*TRAFFIC, "all"]:
        rows = [r for r in results if kind in ("all", r[0])]
        if not rows:
            continue
        codes = {}
        for r in rows:
            codes[r[1]] = codes.get(r[1], 0) + 1
        latencies = [r[2] for r in rows]
        print(f"| {kind} | {len(rows):,} | "
              + ", ".join(f"{code}: {count:,}" for code, count in sorted(codes.items(), key=str))
              + f" | {sum(r[3] is not None for r in rows)} | {statistics.median(latencies):.2f} s | "
              f"{percentile(latencies, 0.99):.2f} s |")
    print("\nserver resident memory: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in memory.items())
          + f"; answering at the end: {'yes' if alive else 'NO'}")
    for r in [r for r in results if r[3] is not None][:10]:
        print(f"failure ({r[0]}): {r[3]}")
