"""serve.py through Flask's test client and as a real server process on 127.0.0.1."""
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from core import configurator
import serve
from test_train import GPT2, SPEEDRUN, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpt2_ckpt(data_root, tmp_path_factory):
    """A checkpoint of GPT-2's recipe (learned positions, GELU, AdamW), beside the default one."""
    out = tmp_path_factory.mktemp("serve_gpt2_ckpt")
    run(data_root, out, "--max_iters=30", *GPT2)
    return out / "last.pt"


@pytest.fixture(scope="module")
def speedrun_ckpt(data_root, tmp_path_factory):
    """A checkpoint with every recipe option: an untied head and soft-capped logits too."""
    out = tmp_path_factory.mktemp("serve_speedrun_ckpt")
    run(data_root, out, "--max_iters=30", *SPEEDRUN)
    return out / "last.pt"


def make_app(ckpt, *extra):
    cfg = configurator.parse(serve.SPEC, [f"--ckpt={ckpt}", *extra])
    model, tokenizer, prompt_template = serve.load(cfg)
    return serve.create_app(model, tokenizer, cfg, prompt_template), model, tokenizer


@pytest.fixture(scope="module")
def app(ckpt):
    return make_app(ckpt)


def sse(data):
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


def test_completion_matches_model_generate(app):
    flask_app, model, tokenizer = app
    body = {"prompt": "The old town", "max_tokens": 10, "temperature": 0}
    r = flask_app.test_client().post("/v1/completions", json=body)
    assert r.status_code == 200
    out = r.get_json()
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert {"created", "model", "choices", "usage"} <= set(out)
    expected = model.generate([tokenizer.encode("The old town")], 10, temperature=0,
                              stop_tokens=[tokenizer.eot_id])[0]
    choice = out["choices"][0]
    assert choice["text"] == tokenizer.decode(expected) and choice["index"] == 0
    assert choice["finish_reason"] == ("length" if len(expected) == 10 else "stop")
    assert out["usage"] == {"prompt_tokens": len(tokenizer.encode("The old town")),
                            "completion_tokens": len(expected),
                            "total_tokens": len(tokenizer.encode("The old town")) + len(expected)}


def test_streaming_concatenates_to_the_plain_answer(app):
    client = app[0].test_client()
    body = {"prompt": ["The river", "def step"], "n": 2, "max_tokens": 12, "temperature": 0.9,
            "seed": 5}
    plain = client.post("/v1/completions", json=body).get_json()
    chunks = sse(client.post("/v1/completions", json={**body, "stream": True}).data)
    texts, reasons = {}, {}
    for chunk in chunks:
        c = chunk["choices"][0]
        texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        reasons[c["index"]] = c["finish_reason"] or reasons.get(c["index"])
    assert sorted(texts) == [0, 1, 2, 3]
    assert [texts[i] for i in range(4)] == [c["text"] for c in plain["choices"]]
    assert [reasons[i] for i in range(4)] == [c["finish_reason"] for c in plain["choices"]]


def test_stop_strings_cut_the_text(app):
    client = app[0].test_client()
    free = client.post("/v1/completions", json={"prompt": "The", "max_tokens": 20,
                                                "temperature": 0}).get_json()["choices"][0]["text"]
    stop = free[len(free) // 2:len(free) // 2 + 2]
    assert stop
    cut = client.post("/v1/completions", json={"prompt": "The", "max_tokens": 20, "temperature": 0,
                                               "stop": stop}).get_json()["choices"][0]
    assert cut["text"] == free[:free.index(stop)] and cut["finish_reason"] == "stop"
    streamed = sse(client.post("/v1/completions", json={"prompt": "The", "max_tokens": 20,
                                                        "temperature": 0, "stop": [stop],
                                                        "stream": True}).data)
    assert "".join(c["choices"][0]["text"] for c in streamed) == cut["text"]


def test_seed_makes_sampling_reproducible(app):
    client = app[0].test_client()
    body = {"prompt": "A", "max_tokens": 12, "temperature": 1.0, "seed": 3}
    a = client.post("/v1/completions", json=body).get_json()["choices"][0]["text"]
    assert a == client.post("/v1/completions", json=body).get_json()["choices"][0]["text"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
])
def test_bad_fields_get_400_naming_the_field(app, body, param):
    r = app[0].test_client().post("/v1/completions", json=body)
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["param"] == param and f"'{param}'" in error["message"]


def test_malformed_oversized_and_unknown_requests(app):
    client = app[0].test_client()
    r = client.post("/v1/completions", data="{not json", content_type="application/json")
    assert r.status_code == 400 and "valid JSON" in r.get_json()["error"]["message"]
    r = client.post("/v1/completions", data="x" * 2_000_000, content_type="application/json")
    assert r.status_code == 413
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/completions").status_code == 405
    r = client.post("/v1/completions", json=[1, 2])
    assert r.status_code == 400


def test_long_prompts_are_truncated_to_the_context(app):
    flask_app, model, tokenizer = app
    long_prompt = "The river crosses the town. " * 200
    out = flask_app.test_client().post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 3,
                                                                "temperature": 0}).get_json()
    assert out["usage"]["prompt_tokens"] == model.config.block_size - 3  # room for max_tokens


def test_generate_health_page_and_metrics(app):
    client = app[0].test_client()
    before = client.get("/metrics").data.decode()
    r = client.post("/generate", json={"prompt": "The", "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and set(r.get_json()) >= {"text", "finish_reason", "usage"}
    assert client.get("/health").get_json()["status"] == "ok"
    assert b"<textarea" in client.get("/").data
    after = client.get("/metrics").data.decode()
    assert 'mini_lm_requests_total{endpoint="/generate",status="200"} 1.0' in after
    assert "mini_lm_time_to_first_token_seconds_count" in after and after != before
    generated = [line for line in after.splitlines() if line.startswith("mini_lm_generated_tokens_total")]
    assert float(generated[0].split()[1]) > 0


def test_api_key(ckpt):
    flask_app, _, _ = make_app(ckpt, "--api_key=s3cret")
    client = flask_app.test_client()
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 401
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert client.get("/health").status_code == 200


class LiveServer:
    """python serve.py ... --port 0 as a real process on 127.0.0.1; its output goes to a file (a pipe
    nobody reads would block the server once full) and is shown when a test fails."""

    def __init__(self, log_path, *args, cwd=ROOT, command=(sys.executable, "serve.py"), env=None):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*command, *args, "--port", "0"], cwd=cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 120
        while True:
            lines = [x for x in self.log_path.read_text().splitlines() if x.startswith("serving ")]
            if lines:
                self.url = lines[0].rsplit(" on ", 1)[1]
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"serve.py did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self):
        return self.log_path.read_text()[-5000:]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def live_server(ckpt, tmp_path_factory):
    # float64 weights: batching requests together must not change greedy tokens, and at fp32 a
    # near-tie between two logits could flip with the batch's shape
    server = LiveServer(tmp_path_factory.mktemp("live") / "serve.log", f"--ckpt={ckpt}",
                        "--api_key=k", "--dtype=float64")
    yield server.url
    server.stop()


def post(url, body, key="k", timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


@pytest.mark.parametrize("recipe", ["gpt2_ckpt", "ckpt", "speedrun_ckpt"], ids=["gpt2", "default", "speedrun"])
def test_engine_batches_staggered_requests_like_separate_generation(recipe, request):
    """Requests joining and leaving the batch at different steps, with prompts of different lengths,
    get exactly what model.generate gives each alone (float64, greedy), with learned positions and
    with rotary ones (the engine re-aligns cached keys: their positions must stay each row's own)."""
    flask_app, model, tokenizer = make_app(request.getfixturevalue(recipe), "--dtype=float64")
    assert model.config.position == ("learned" if recipe == "gpt2_ckpt" else "rotary")
    check_staggered_requests(flask_app, model, tokenizer)


def test_engine_on_the_compiled_decoding_step_answers_as_the_eager_model(ckpt, app):
    """serve.py --compile=True (on CPU the decoding step compiled with Inductor's inference
    settings, before the first request): the same staggered requests get the eager float32
    model's greedy tokens, and none of their batch sizes or lengths compiles again."""
    flask_app, model, tokenizer = make_app(ckpt, "--compile=True")
    assert "decode_step" in vars(model)  # the compiled step, set on the model by load_for_inference
    with torch.compiler.set_stance("fail_on_recompile"):
        check_staggered_requests(flask_app, app[1], tokenizer)


def check_staggered_requests(flask_app, reference, tokenizer):
    """Four requests of different lengths submitted to the app's engine while the others decode:
    each gets what reference.generate gives it alone, and the engine did decode them together
    (each decoding step slowed to 20 ms, so that requests 10 ms apart overlap)."""
    engine = flask_app.config["mini_lm_server"].engine
    model = engine.model
    prompts = [tokenizer.encode(t) for t in ("The river", "A", "def step_3(value, scale):", "The old")]
    params = [{"max_tokens": min(n, model.config.block_size - len(prompt)), "temperature": 0,
               "top_k": None, "top_p": 1.0, "seed": None, "n": 1}
              for n, prompt in zip((12, 5, 20, 9), prompts)]  # within the context, as run() ensures
    batch_sizes, own_step = [], model.decode_step
    model.decode_step = slowed_step(own_step, batch_sizes)
    try:
        jobs = []
        for prompt, p in zip(prompts, params):
            jobs.append(engine.submit([prompt], p, tokenizer.eot_id))
            time.sleep(0.01)  # arrive while the others are decoding
        outputs = [list(job)[-1] for job in jobs]
    finally:
        model.decode_step = own_step
    for output, prompt, p in zip(outputs, prompts, params):
        assert output == reference.generate([prompt], p["max_tokens"], temperature=0,
                                            stop_tokens=[tokenizer.eot_id])
    assert max(batch_sizes) > 1, batch_sizes


def slowed_step(decode_step, batch_sizes):
    """decode_step, recording each step's batch size and taking at least 20 ms."""
    def step(tokens, cache, pad_lengths=None):
        batch_sizes.append(len(tokens))
        time.sleep(0.02)
        return decode_step(tokens, cache, pad_lengths)
    return step


def test_engine_survives_a_failing_request(app):
    flask_app, model, tokenizer = app
    engine = flask_app.config["mini_lm_server"].engine
    params = {"max_tokens": 3, "temperature": 0, "top_k": None, "top_p": 1.0, "seed": None, "n": 1}
    bad = engine.submit([[model.config.vocab_size + 5]], params, tokenizer.eot_id)  # no such token
    with pytest.raises(RuntimeError, match="prefill failed"):
        list(bad)
    good = engine.submit([tokenizer.encode("The")], params, tokenizer.eot_id)
    assert list(good)[-1] == model.generate([tokenizer.encode("The")], 3, temperature=0,
                                            stop_tokens=[tokenizer.eot_id])


def test_real_server_serves_concurrent_clients_without_mixing(live_server):
    prompts = [f"The {w}" for w in ("river", "town", "market", "farmer", "bridge", "school",
                                    "church", "winter")]
    alone = {p: json.loads(post(live_server + "/v1/completions",
                                {"prompt": p, "max_tokens": 16, "temperature": 0}))["choices"][0]["text"]
             for p in prompts}
    results, errors = {}, []

    def client(p):
        try:
            for _ in range(2):
                out = json.loads(post(live_server + "/v1/completions",
                                      {"prompt": p, "max_tokens": 16, "temperature": 0}))
                results.setdefault(p, []).append(out["choices"][0]["text"])
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert all(results[p] == [alone[p]] * 2 for p in prompts)


def test_real_server_streams_and_checks_the_key(live_server):
    data = post(live_server + "/v1/completions", {"prompt": "The", "max_tokens": 6, "stream": True,
                                                  "temperature": 0})
    chunks = sse(data)
    assert chunks and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    with pytest.raises(urllib.error.HTTPError) as info:
        post(live_server + "/v1/completions", {"prompt": "x"}, key="wrong")
    assert info.value.code == 401
    metrics = urllib.request.urlopen(live_server + "/metrics").read().decode()
    assert 'status="401"' in metrics


def test_official_openai_client_works_unchanged(live_server):
    from openai import OpenAI
    client = OpenAI(base_url=live_server + "/v1", api_key="k")
    out = client.completions.create(model="mini-lm", prompt="The river", max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 8
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="mini-lm", prompt="The river", max_tokens=8, temperature=0, stream=True))
    assert streamed == out.choices[0].text


def greedy_params(max_tokens, **extra):
    return {"max_tokens": max_tokens, "temperature": 0, "top_k": None, "top_p": 1.0, "seed": None,
            "n": 1, **extra}


def test_cancelled_rows_leave_before_the_next_request_joins(ckpt, monkeypatch):
    """A request that ended (stop string, disconnect) must not share a forward pass with the next
    one: in fp32 the batch's shape changes the last bits of the logits and so a greedy near-tie."""
    flask_app, model, tokenizer = make_app(ckpt)
    engine = flask_app.config["mini_lm_server"].engine
    rows_at_admission = []
    admit = engine._admit
    monkeypatch.setattr(engine, "_admit", lambda job: (rows_at_admission.append(
        [r[0] for r in engine.rows]), admit(job))[1])
    prompt = tokenizer.encode("The river")
    first = engine.submit([prompt], greedy_params(model.config.block_size - len(prompt) - 1),
                          tokenizer.eot_id)
    next(iter(first))  # decoding now
    first.cancelled = True  # as run() does when the client goes away or a stop string matched
    second = engine.submit([prompt], greedy_params(3), tokenizer.eot_id)
    assert list(second)[-1] == model.generate([prompt], 3, temperature=0, stop_tokens=[tokenizer.eot_id])[0:1]
    assert rows_at_admission[-1] == []  # the first request's row was gone when the second joined


def test_a_failing_sequence_ends_only_itself(app):
    """A sampling failure (here a NaN temperature, which the API refuses, sent to the engine
    directly) ends its own sequence; the request decoded beside it is untouched."""
    flask_app, model, tokenizer = app
    engine = flask_app.config["mini_lm_server"].engine
    good_prompt = tokenizer.encode("The old town")
    good = engine.submit([good_prompt], greedy_params(12), tokenizer.eot_id)
    bad = engine.submit([tokenizer.encode("A")], greedy_params(12, temperature=float("nan")),
                        tokenizer.eot_id)
    assert list(bad)[-1] == [[]] and bad.errors[0].startswith("sampling failed: RuntimeError")
    assert list(good)[-1] == model.generate([good_prompt], 12, temperature=0,
                                            stop_tokens=[tokenizer.eot_id])


def test_a_request_keeps_its_sequences_that_did_not_fail(ckpt, monkeypatch):
    """n=2: the second sequence's sampling fails at its second token; the first still gets its
    whole answer, the second finishes with reason 'error'; if all fail the request is a 500."""
    from serving import engine as engine_module
    flask_app, model, tokenizer = make_app(ckpt, "--dtype=float64")  # batch shape changes below
    client = flask_app.test_client()
    body = {"prompt": "The river", "max_tokens": 8, "temperature": 0, "n": 2}
    alone = client.post("/v1/completions", json=body).get_json()["choices"][0]
    calls, real_sample = [], engine_module.sample

    def failing_sample(*args):  # rows are sampled in order: row 0, row 1, row 0, row 1 ...
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected")
        return real_sample(*args)

    monkeypatch.setattr(engine_module, "sample", failing_sample)
    choices = client.post("/v1/completions", json=body).get_json()["choices"]
    assert choices[0] == alone and choices[1]["finish_reason"] == "error"
    monkeypatch.setattr(engine_module, "sample", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    assert client.post("/v1/completions", json=body).status_code == 500


@pytest.mark.parametrize("extreme", [
    {"temperature": 1e-300}, {"temperature": 5e-324}, {"temperature": 1e-30, "top_p": 1e-300},
    {"temperature": 2, "top_p": 5e-324}, {"top_p": 1e-12, "top_k": 1}, {"top_k": 10**30},
    {"temperature": 1e-45, "top_k": 2, "top_p": 0.5, "seed": 2**64 - 1},
])
def test_extreme_but_valid_sampling_settings_are_greedy_not_errors(app, extreme):
    client = app[0].test_client()
    greedy = client.post("/v1/completions", json={"prompt": "The river", "max_tokens": 12,
                                                  "temperature": 0}).get_json()
    r = client.post("/v1/completions", json={"prompt": "The river", "max_tokens": 12, **extreme})
    assert r.status_code == 200, r.get_json()
    if extreme.get("top_k") != 10**30:  # that one alone samples at temperature 1
        assert r.get_json()["choices"] == greedy["choices"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "\ud800 lone surrogate"}, "prompt"),
    ({"prompt": "x", "stop": ["\udfff"]}, "stop"),
    ({"prompt": ["a", "b", "c"], "n": 8}, "n"),
    ({"prompt": "x", "max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"prompt": "x", "stream_options": "usage"}, "stream_options"),
    ({"prompt": "x", "stream_options": {"include_usage": 1}}, "include_usage"),
])
def test_more_bad_fields_get_400_naming_the_field(app, body, param):
    r = app[0].test_client().post("/v1/completions", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == param


def test_deeply_nested_or_undecodable_bodies_are_400(app):
    client = app[0].test_client()
    for data in ("[" * 100_000 + "]" * 100_000, b"\xff\xfe\xfa", '{"prompt": NaN}', "1e999999"):
        r = client.post("/v1/completions", data=data, content_type="application/json")
        assert r.status_code == 400, data[:20]


def test_max_completion_tokens_unknown_fields_and_usage_chunk(app):
    flask_app, model, tokenizer = app
    client = flask_app.test_client()
    server = flask_app.config["mini_lm_server"]
    plain = client.post("/v1/completions", json={"prompt": "The", "max_tokens": 5,
                                                 "temperature": 0}).get_json()
    logged = []
    server.log = type("Log", (), {"warning": lambda self, *a: logged.append(a[0] % a[1:])})()
    other = client.post("/v1/completions", json={
        "prompt": "The", "max_completion_tokens": 5, "temperature": 0, "best_of": 3,
        "suffix": "x", "frequency_penalty": 0.5, "model": "anything"}).get_json()
    assert other["choices"] == plain["choices"] and other["usage"] == plain["usage"]
    assert len(logged) == 1 and all(f"'{k}'" in logged[0] for k in ("best_of", "suffix",
                                                                      "frequency_penalty"))
    client.post("/v1/completions", json={"prompt": "The", "max_tokens": 1, "suffix": "y"})
    assert len(logged) == 1  # each name is logged once
    chunks = sse(client.post("/v1/completions", json={
        "prompt": "The", "max_tokens": 5, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}}).data)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain["choices"][0]["text"]


def test_models_endpoint(app):
    client = app[0].test_client()
    listed = client.get("/v1/models").get_json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["mini-lm"]
    assert client.get("/v1/models/mini-lm").get_json()["object"] == "model"
    assert client.get("/v1/models/gpt-4").status_code == 404


def test_cors_preflight_needs_no_key_and_only_listed_origins_get_headers(ckpt):
    flask_app, _, _ = make_app(ckpt, "--api_key=s", "--cors_origins=http://a.example, http://b.example")
    client = flask_app.test_client()
    preflight = {"Origin": "http://a.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = client.options("/v1/completions", headers=preflight)
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "http://a.example"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"Origin": "http://b.example", "Authorization": "Bearer s"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://b.example"
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"Origin": "http://evil.example", "Authorization": "Bearer s"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert client.options("/v1/completions", headers={**preflight, "Origin": "http://evil.example"}
                          ).headers.get("Access-Control-Allow-Origin") is None
    anyone = make_app(ckpt, "--cors_origins=*")[0].test_client()
    r = anyone.get("/v1/models", headers={"Origin": "http://x.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    closed = make_app(ckpt)[0].test_client()
    assert "Access-Control-Allow-Origin" not in closed.get("/v1/models",
                                                           headers={"Origin": "http://a.example"}).headers


def test_official_openai_client_lists_models_and_streams_usage(live_server):
    from openai import OpenAI
    client = OpenAI(base_url=live_server + "/v1", api_key="k")
    assert [m.id for m in client.models.list()] == ["mini-lm"]
    plain = client.completions.create(model="mini-lm", prompt="The river", max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model="mini-lm", prompt="The river", max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens and not chunks[-1].choices
    assert "".join(c.choices[0].text for c in chunks[:-1]) == plain.choices[0].text
