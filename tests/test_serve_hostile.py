"""serve.py as a real process against hostile clients: randomized bodies of every type, range, size
and encoding, sent concurrently with valid greedy requests (no 5xx, no dropped connection, and the
valid requests' text equals their single-client answer), clients that disconnect mid-request
(their batch rows are freed at once), near misses of the API key, and a short soak of mixed
traffic (bench.py soak's)."""
import hmac
import http.client
import json
import random
import threading
import time
import types
from urllib.parse import urlsplit

import pytest
import torch

import serve
from benchmarks import soak
from core import checkpoint
from model import GPT, GPTConfig
from test_serve import LiveServer, make_app

HOSTILE_REQUESTS = 1200
KEY = {"Authorization": "Bearer k"}


def send(url, method, path, body=b"", headers=None, timeout=120):
    """(status, body bytes) of one request on its own connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_json(url, body):
    return send(url, "POST", "/v1/completions", json.dumps(body).encode(),
                {"Content-Type": "application/json", **KEY})


def hostile_value(rng):
    """Any JSON value, biased towards the edges the fields have."""
    return rng.choice([
        None, True, False, 0, -1, 1, 2, 3, 17, 2**31, 2**63, 2**64, -2**63 - 1, 10**30,
        0.0, -0.0, 1e-300, 5e-324, 1e-45, 0.5, 0.9999999, 1.0000001, 2.0, 2.0000001, 1e308,
        "", "5", "x" * rng.randint(1, 3000), "é漢字🙂", "\x00\x01", "\ud800", "<|endoftext|>",
        [], [1, 2], ["a", "b"], [""] * rng.randint(1, 40), {}, {"include_usage": True},
        [10**9], [-1], [[1, 2], [3]], [[]], [[1], "a"], [True, 2],
        {"a": {"b": [1]}}, [[["deep"]]],
    ])


FIELDS = ["prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
          "seed", "stop", "stream", "stream_options", "logprobs", "echo", "model", "user", "suffix"]


def hostile_body(rng):
    """A dict that is often valid enough to generate, with some fields hostile."""
    body = {"prompt": rng.choice(["The", "A river", "def f(", "", "é漢字🙂 " * 50, "x" * 5000,
                                  ["The", "A"]]),
            "max_tokens": rng.choice([0, 1, 5, 31, 40]),
            "temperature": rng.choice([0, 1e-300, 5e-324, 1e-8, 0.7, 2]),
            "top_p": rng.choice([1e-300, 1e-12, 0.3, 1]),
            "stream": rng.random() < 0.4}
    if rng.random() < 0.5:
        body["top_k"] = rng.choice([1, 2, 300, 10**20])
    if rng.random() < 0.3:
        body["n"] = rng.randint(1, 4)
    if rng.random() < 0.3:
        body["seed"] = rng.randint(-2**63, 2**64 - 1)
    if rng.random() < 0.2:
        body["stop"] = rng.choice(["\n", ["e", "a"], "🙂"])
    if rng.random() < 0.2:
        body["stream_options"] = {"include_usage": rng.random() < 0.5}
    if rng.random() < 0.2:  # scoring, as lm-evaluation-harness asks for it
        body.update(echo=True, logprobs=rng.choice([0, 1, 5]))
    for _ in range(rng.choice([0, 0, 1, 2, 3])):  # make some fields hostile
        body[rng.choice(FIELDS)] = hostile_value(rng)
    if rng.random() < 0.05:
        body[f"unknown_{rng.randint(0, 10**6)}"] = hostile_value(rng)
    return body


def hostile_request(rng):
    """(method, path, body bytes, headers) of one hostile request."""
    json_headers = {"Content-Type": "application/json", **KEY}
    kind = rng.random()
    if kind < 0.66:
        return "POST", rng.choice(["/v1/completions"] * 4 + ["/generate"]), \
            json.dumps(hostile_body(rng)).encode(), json_headers
    if kind < 0.70:  # the tokenizer endpoints (lm-evaluation-harness's)
        field = rng.choice(["prompt", "tokens"])
        return "POST", rng.choice(["/tokenize", "/detokenize"]), \
            json.dumps({field: hostile_value(rng)}).encode(), json_headers
    raw = rng.choice([
        b"", b"{", b'{"prompt": "x"', b"[" * 50_000 + b"]" * 50_000, b'{"prompt": NaN}',
        b'{"prompt": "x", "max_tokens": 1e999}', b'{"max_tokens": ' + b"9" * 5000 + b"}",
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))), b"\xef\xbb\xbf{}",
        json.dumps({"prompt": "The", "max_tokens": 3}).encode("utf-16"),
        '{"prompt": "caf\xe9"}'.encode("latin-1"), b'"just a string"', b"null", b"[1, 2]",
        b'{"prompt": "\\ud800\\udc00\\ud800"}',
    ])
    if kind < 0.90:
        return "POST", "/v1/completions", raw, json_headers
    if kind < 0.95:  # wrong content type, missing key, wrong method or path
        return "POST", "/v1/completions", raw or b"{}", {"Content-Type": "text/plain", **KEY}
    return rng.choice([("GET", "/v1/completions", b"", KEY), ("POST", "/v1/models", b"{}", KEY),
                       ("POST", "/v1/completions", b'{"prompt": "x"}', {}),
                       ("DELETE", "/generate", b"", KEY), ("GET", "/v1/models/%00", b"", KEY)])


def check_stream(data):
    events = [e for e in data.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]", events[-3:]
    for event in events[:-1]:
        assert "error" not in json.loads(event[6:]), event


def test_hostile_bodies_beside_valid_requests(ckpt, tmp_path):
    server = LiveServer(tmp_path / "serve.log", f"--ckpt={ckpt}", "--api_key=k", "--dtype=float64")
    try:
        valid = [{"prompt": p, "max_tokens": 16, "temperature": 0} for p in ("The river", "A", "def")]
        alone = {}
        for body in valid:
            status, data = post_json(server.url, body)
            assert status == 200
            alone[body["prompt"]] = json.loads(data)["choices"][0]["text"]
        failures, statuses, valid_count, done = [], {}, [0], threading.Event()
        counting = threading.Lock()  # the workers' counts: a read-then-write from 8 threads loses some

        def hostile_worker(seed, count):
            rng = random.Random(seed)
            for _ in range(count):
                method, path, body, headers = hostile_request(rng)
                try:
                    status, data = send(server.url, method, path, body, headers)
                    with counting:
                        statuses[status] = statuses.get(status, 0) + 1
                    if status >= 500:
                        failures.append(f"{status} for {body[:300]!r}: {data[:300]!r}")
                    elif status == 200 and b'"stream": true' in body and path == "/v1/completions":
                        check_stream(data)
                except Exception as e:  # a dropped connection, a broken stream
                    failures.append(f"{type(e).__name__}: {e} for {body[:300]!r}")

        def valid_worker(seed):
            rng = random.Random(seed)
            while not done.is_set():
                body = rng.choice(valid)
                try:
                    status, data = post_json(server.url, body)
                    text = json.loads(data)["choices"][0]["text"]
                    if status != 200 or text != alone[body["prompt"]]:
                        failures.append(f"valid request {body}: {status} {data[:300]!r}")
                    with counting:
                        valid_count[0] += 1
                except Exception as e:
                    failures.append(f"valid request {body}: {type(e).__name__}: {e}")

        hostile = [threading.Thread(target=hostile_worker, args=(seed, HOSTILE_REQUESTS // 6))
                   for seed in range(6)]
        steady = [threading.Thread(target=valid_worker, args=(100 + seed,)) for seed in range(2)]
        for t in hostile + steady:
            t.start()
        for t in hostile:
            t.join(timeout=280)
        done.set()
        for t in steady:
            t.join(timeout=120)
        assert not failures, "\n".join(failures[:10]) + "\n" + server.output()
        assert sum(statuses.values()) == HOSTILE_REQUESTS and valid_count[0] > 20
        assert statuses.get(200, 0) > 200 and statuses.get(400, 0) > 200, statuses  # both kinds ran
        status, _ = send(server.url, "GET", "/health")
        assert status == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def long_ckpt(ckpt, tmp_path_factory):
    """An untrained model with a 1024-token context whose greedy text never reaches the end-of-text
    token, so a 1000-token request runs until it is cancelled."""
    base = checkpoint.load(ckpt)
    args = {**base["model_args"], "block_size": 1024, "n_layer": 4, "n_head": 4, "n_embd": 128}
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    path = tmp_path_factory.mktemp("long") / "long.pt"
    checkpoint.save({k: base[k] for k in ("format_version", "tokenizer", "config")}
                    | {"model": model.state_dict(), "model_args": args}, path)
    loaded, tokenizer, _ = checkpoint.load_model(path)
    out = loaded.generate([tokenizer.encode("The")], 1000, temperature=0,
                          stop_tokens=[tokenizer.eot_id])[0]
    assert len(out) == 1000  # the premise of the test below
    return path


def metric(url, name):
    text = send(url, "GET", "/metrics")[1].decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_client_that_disconnects_frees_its_rows_at_once(long_ckpt, tmp_path):
    server = LiveServer(tmp_path / "serve.log", f"--ckpt={long_ckpt}")
    try:
        parts = urlsplit(server.url)
        body = {"prompt": "The", "max_tokens": 1000, "temperature": 0}
        for stream, cancelled in ((True, 1), (False, 2)):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            conn.request("POST", "/v1/completions", json.dumps({**body, "stream": stream}).encode(),
                         {"Content-Type": "application/json"})
            if stream:
                response = conn.getresponse()
                assert response.read(6) == b"data: "  # generating now
                response.close()
            else:
                deadline = time.time() + 30
                while metric(server.url, "mini_lm_active_sequences") == 0:
                    assert time.time() < deadline, server.output()
                    time.sleep(0.01)
            conn.close()  # the client goes away
            deadline = time.time() + 30
            while metric(server.url, "mini_lm_active_sequences") > 0:
                assert time.time() < deadline, server.output()
                time.sleep(0.01)
            # freed by cancellation, not by running to 1000 tokens
            assert metric(server.url, "mini_lm_cancelled_sequences_total") == cancelled
    finally:
        server.stop()


NEAR_MISSES = {
    "a wrong key of the same length": "Bearer q",
    "a prefix of the key": "Bearer s3c",
    "the key and more": "Bearer s3cret!",
    "the scheme alone": "Bearer ",
    "an empty header": "",
    "another scheme": "Basic s3cret",
    "non-ASCII bytes": "Bearer s3cr\u00e9t".encode("utf-8"),
    "non-ASCII, Latin-1": "Bearer s3cr\u00e9t".encode("latin-1"),
}


def test_the_api_key_refuses_near_misses_with_401(ckpt, tmp_path, monkeypatch):
    """Every near miss of the key gets 401 (never a 500, even for bytes no str key could equal),
    the key itself 200, and the check goes through hmac.compare_digest (constant time)."""
    server = LiveServer(tmp_path / "serve.log", f"--ckpt={ckpt}", "--api_key=s3cret",
                        "--dtype=float64")
    body = json.dumps({"prompt": "x", "max_tokens": 1}).encode()
    try:
        for case, value in NEAR_MISSES.items():
            headers = {"Content-Type": "application/json", "Authorization": value}
            status, data = send(server.url, "POST", "/v1/completions", body, headers)
            assert status == 401, (case, status, data[:300])
            assert json.loads(data)["error"]["type"] == "authentication_error", case
        status, _ = send(server.url, "POST", "/v1/completions", body,
                         {"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
        assert status == 200
    finally:
        server.stop()
    compared = []

    def spy(a, b):
        compared.append((a, b))
        return hmac.compare_digest(a, b)
    monkeypatch.setattr(serve, "hmac", types.SimpleNamespace(compare_digest=spy))
    client = make_app(ckpt, "--api_key=s3cret")[0].test_client()
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                       headers={"Authorization": "Bearer s3cre7"}).status_code == 401
    assert compared == [(b"Bearer s3cre7", b"Bearer s3cret")]


def test_a_short_soak_sends_every_kind_of_traffic_without_a_failure(ckpt, capsys):
    """bench.py soak's traffic (benchmarks/soak.py), for 12 seconds: every kind answered 200, no
    5xx, dropped connection or broken stream, the server's memory read three times."""
    results, memory = soak.bench_soak(ckpt, clients=3, minutes=0.2, options=["--dtype=float64"])
    assert {r[0] for r in results} == set(soak.TRAFFIC)
    assert all(r[1] == 200 and r[3] is None for r in results), [r for r in results if r[3]][:5]
    assert list(memory) == ["start", "after warm-up", "end"] and min(memory.values()) > 10
    assert "answering at the end: yes" in capsys.readouterr().out
