"""serve.py: serve a checkpoint over HTTP (Flask app on the waitress WSGI server).

    python serve.py --ckpt=out/best.pt                      # http://127.0.0.1:8000
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "The river", "max_tokens": 32, "temperature": 0}'

Endpoints:
  POST /v1/completions  OpenAI-compatible completions (prompt as a string or a list, max_tokens,
                        temperature, top_p, stop, n, seed, stream with server-sent events)
  POST /generate        {"prompt": "...", "max_tokens": 64, ...} -> {"text": ..., ...}
  GET  /health          model name and size
  GET  /metrics         Prometheus text: requests by status, time to first token and request
                        latency histograms, prompt and generated token counters, tokens/s
  GET  /                a page to type a prompt and watch the stream

Requests are decoded together (continuous batching): one engine thread advances every active
sequence by one token per forward pass; a new request joins after its prompt's prefill and a
finished one leaves at once, so nobody waits for another request to finish. max_tokens is capped at
block_size - 1 and a prompt keeps its last block_size - max_tokens tokens (usage says what was used).
With --api_key (or MINI_LM_API_KEY), /v1/* and /generate need `Authorization: Bearer <key>`.
"""

import concurrent.futures
import json
import os
import queue
import sys
import threading
import time
import uuid

import torch
from flask import Flask, Response, jsonify, request

import checkpoint
import configurator
import hardware
from model import KVCache, sample

SPEC = {
    "ckpt": ("out/best.pt", "checkpoint to serve"),
    "host": ("127.0.0.1", "address to bind (0.0.0.0 exposes the server to the network)"),
    "port": (8000, "port"),
    "api_key": ("", "require this bearer token (default: $MINI_LM_API_KEY, else none)"),
    "model_name": ("mini-lm", "the `model` field of responses"),
    "max_tokens_limit": (1024, "largest max_tokens a request may ask for"),
    "max_n": (8, "largest n (completions per prompt) a request may ask for"),
    "max_body_bytes": (1_000_000, "larger request bodies get 413"),
    "device": ("auto", "'auto', 'cpu', 'cuda' ..."),
    "dtype": ("float32", "weights: 'float32', 'bfloat16' (half the bytes) or 'float64' (tests)"),
    "threads": (8, "waitress worker threads (concurrent requests)"),
    "max_batch": (16, "sequences decoded together at most; more requests wait their turn"),
}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class BadRequest(ValueError):
    def __init__(self, message, param=None, status=400):
        super().__init__(message)
        self.param, self.status = param, status


class Metrics:
    """Counters and histograms in Prometheus' text format, kept by hand (a few dicts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}  # (endpoint, status) -> count
        self.histograms = {"time_to_first_token_seconds": [0] * (len(LATENCY_BUCKETS) + 1) + [0.0],
                           "request_seconds": [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]}
        self.prompt_tokens = self.generated_tokens = 0
        self.generation_seconds = 0.0

    def observe(self, name, seconds):
        with self.lock:
            h = self.histograms[name]
            i = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
            h[i] += 1
            h[-1] += seconds

    def count_request(self, endpoint, status):
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def count_tokens(self, prompt, generated, seconds):
        with self.lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated
            self.generation_seconds += seconds

    def render(self):
        with self.lock:
            out = ["# TYPE mini_lm_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'mini_lm_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, h in self.histograms.items():
                out.append(f"# TYPE mini_lm_{name} histogram")
                cumulative = 0
                for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], h[:-1]):
                    cumulative += n
                    out.append(f'mini_lm_{name}_bucket{{le="{bound}"}} {cumulative}')
                out += [f"mini_lm_{name}_sum {h[-1]:.6f}", f"mini_lm_{name}_count {cumulative}"]
            rate = self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0
            out += ["# TYPE mini_lm_prompt_tokens_total counter",
                    f"mini_lm_prompt_tokens_total {self.prompt_tokens}",
                    "# TYPE mini_lm_generated_tokens_total counter",
                    f"mini_lm_generated_tokens_total {self.generated_tokens}",
                    "# TYPE mini_lm_tokens_per_second gauge",
                    f"mini_lm_tokens_per_second {rate:.3f}"]
            return "\n".join(out) + "\n"


def _field(body, name, kind, default, check=None, message="has the wrong type"):
    """body[name] if it has the right type and passes check, default if absent, else a 400."""
    value = body.get(name)
    if value is None:
        return default
    wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if wrong_type or (check and not check(value)):
        raise BadRequest(f"'{name}' {message} (got {value!r})", name)
    return value


class Job:
    """One request's sequences (prompts x n) inside the engine; the handler thread reads `updates`."""

    def __init__(self, prompts, params, eot_id, device):
        self.prompts, self.params, self.eot_id = prompts, params, eot_id
        self.tokens = [[] for _ in prompts]
        self.done = [params["max_tokens"] == 0] * len(prompts)
        self.updates = queue.Queue()
        self.cancelled = False
        self.generator = None
        if params["seed"] is not None:
            self.generator = torch.Generator(device=device).manual_seed(params["seed"])

    def __iter__(self):
        """The token lists after every step, as model.generate_stream yields them."""
        while True:
            update = self.updates.get()
            if update is None:
                return
            if isinstance(update, BaseException):
                raise update
            yield update


class Engine:
    """Continuous batching: one thread owns the model and advances every active sequence of every
    request by one token per forward pass. Sequences sit right-aligned in one KV cache (left
    padding masked, positions counted from each sequence's own start), so a request that arrives
    joins at the next step after its prompt's prefill, and a finished one leaves at once."""

    def __init__(self, model, max_batch):
        self.model, self.max_batch = model, max_batch
        self.inbox = queue.Queue()
        self.rows = []  # (job, index in job, own length) per batch row
        self.cache, self.logits = None, None
        weight = model.lm_head.weight
        self.device = weight.device
        # bf16 attention is slow on CPUs: keep the cache in fp32 there (as model.generate does)
        self.cache_dtype = (torch.promote_types(weight.dtype, torch.float32)
                            if self.device.type == "cpu" else weight.dtype)
        threading.Thread(target=self._loop, name="engine", daemon=True).start()

    def submit(self, prompts, params, eot_id):
        job = Job(prompts, params, eot_id, self.device)
        self.inbox.put(job)
        return job

    def _realign(self, parts):
        """A new cache with the given rows right-aligned; parts: [(cache, [(row, own length)])]."""
        config = self.model.config
        count = sum(len(rows) for _, rows in parts)
        length = max(own for _, rows in parts for _, own in rows)
        new = KVCache(config, count, self.device, self.cache_dtype)
        new.length = length
        i = 0
        for cache, rows in parts:
            for row, own in rows:
                for layer in range(config.n_layer):
                    new.keys[layer][i, :, length - own:length] = \
                        cache.keys[layer][row, :, cache.length - own:cache.length]
                    new.values[layer][i, :, length - own:length] = \
                        cache.values[layer][row, :, cache.length - own:cache.length]
                i += 1
        return new

    def _admit(self, job):
        """Prefill the job's prompts together (left-padded), then merge them into the batch."""
        width = max(map(len, job.prompts))
        idx = torch.tensor([[0] * (width - len(p)) + p for p in job.prompts], device=self.device)
        pad = torch.tensor([width - len(p) for p in job.prompts], device=self.device)
        cache = KVCache(self.model.config, len(job.prompts), self.device, self.cache_dtype)
        logits = self.model(idx, cache=cache, pad_lengths=pad, last_only=True)[0][:, -1]
        new_rows = [(job, i, len(p)) for i, p in enumerate(job.prompts)]
        parts = [(cache, [(i, own) for i, (_, _, own) in enumerate(new_rows)])]
        if self.rows:
            parts.insert(0, (self.cache, [(i, own) for i, (_, _, own) in enumerate(self.rows)]))
            logits = torch.cat([self.logits, logits])
        self.cache, self.logits = self._realign(parts), logits
        self.rows += new_rows

    def _step(self):
        with torch.inference_mode():
            while len(self.rows) < self.max_batch:
                try:
                    job = self.inbox.get(block=not self.rows)
                except queue.Empty:
                    break
                if job.cancelled or all(job.done):
                    job.updates.put(None)
                    continue
                try:
                    self._admit(job)  # changes the batch only once the prefill succeeded
                except Exception as e:
                    job.updates.put(RuntimeError(f"prefill failed: {type(e).__name__}: {e}"))
            keep, tokens, jobs = [], [], {}
            for i, (job, index, own) in enumerate(self.rows):
                p = job.params
                token = int(sample(self.logits[i:i + 1], p["temperature"], p["top_k"], p["top_p"],
                                   job.generator)[0])
                jobs[id(job)] = job
                if token == job.eot_id:
                    job.done[index] = True
                    continue
                job.tokens[index].append(token)
                if len(job.tokens[index]) >= p["max_tokens"] or job.cancelled:
                    job.done[index] = True
                    continue
                keep.append((i, own))
                tokens.append(token)
            for job in jobs.values():
                job.updates.put([list(t) for t in job.tokens])
                if all(job.done) or job.cancelled:
                    job.updates.put(None)
            if not keep:
                self.rows, self.cache, self.logits = [], None, None
                return
            if len(keep) < len(self.rows) or self.cache.length >= self.model.config.block_size:
                self.cache = self._realign([(self.cache, keep)])  # drop rows, trim common padding
            self.rows = [(self.rows[i][0], self.rows[i][1], own + 1) for i, own in keep]
            pads = torch.tensor([self.cache.length - (own - 1) for _, _, own in self.rows],
                                device=self.device)
            x = torch.tensor(tokens, device=self.device)[:, None]
            self.logits = self.model(x, cache=self.cache, pad_lengths=pads,
                                     last_only=True)[0][:, -1]

    def _loop(self):
        while True:
            try:
                self._step()
            except Exception as e:  # fail the requests in flight, keep serving
                for job in {id(r[0]): r[0] for r in self.rows}.values():
                    job.updates.put(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
                self.rows, self.cache, self.logits = [], None, None


class Server:
    """The model, its tokenizer and the batching engine; turns requests into token streams."""

    def __init__(self, model, tokenizer, cfg):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.engine = Engine(model, cfg["max_batch"])
        self.metrics = Metrics()

    def parse(self, body, openai=True):
        cfg = self.cfg
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        prompt = body.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) and openai else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("'prompt' must be a string" + (" or a list of strings" if openai else ""),
                             "prompt")
        limit = cfg["max_tokens_limit"]
        params = {
            "max_tokens": _field(body, "max_tokens", int, 16 if openai else 64,
                                 lambda v: 0 <= v <= limit, f"must be an integer in 0..{limit}"),
            "temperature": _field(body, "temperature", (int, float), 1.0,
                                  lambda v: 0 <= v <= 2, "must be a number in 0..2"),
            "top_p": _field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1,
                            "must be a number in (0, 1]"),
            "top_k": _field(body, "top_k", int, None, lambda v: v > 0, "must be a positive integer"),
            "n": _field(body, "n", int, 1, lambda v: 1 <= v <= cfg["max_n"],
                        f"must be an integer in 1..{cfg['max_n']}"),
            "seed": _field(body, "seed", int, None),
            "stream": _field(body, "stream", bool, False),
        }
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                     and all(isinstance(s, str) and s for s in stop)):
            raise BadRequest("'stop' must be a non-empty string or a list of at most 4", "stop")
        params["stop"] = stop or []
        return prompts, params

    def encode(self, text, max_tokens):
        """Prompt tokens, cut from the left so that prompt + max_tokens fits the context."""
        ids = self.tokenizer.encode(text) or [self.tokenizer.eot_id]
        return ids[-max(1, self.model.config.block_size - max_tokens):]

    def run(self, prompts, p):
        """Yield (index, text delta, finish_reason or None) for len(prompts) * n choices; finally
        yields (None, usage dict, None)."""
        p = {**p, "max_tokens": min(p["max_tokens"], self.model.config.block_size - 1)}
        encoded = [self.encode(text, p["max_tokens"]) for text in prompts for _ in range(p["n"])]
        stops, hold = p["stop"], max((len(s) for s in p["stop"]), default=1) - 1
        sent = [0] * len(encoded)
        finished = [None] * len(encoded)
        texts = [""] * len(encoded)
        generated = [0] * len(encoded)
        t0, first = time.time(), None
        job = self.engine.submit(encoded, p, self.tokenizer.eot_id)
        stream = iter(job)
        steps = 0
        try:
            while p["max_tokens"] > 0:
                new_tokens = next(stream, None)
                if new_tokens is None:
                    break
                steps += 1
                if first is None:
                    first = time.time() - t0
                    self.metrics.observe("time_to_first_token_seconds", first)
                done_now = steps >= p["max_tokens"]
                for i, tokens in enumerate(new_tokens):
                    if finished[i]:
                        continue
                    generated[i] = len(tokens)
                    text = self.tokenizer.decode(tokens)
                    cut = min((text.find(s) for s in stops if s in text), default=-1)
                    if cut >= 0:
                        text, finished[i] = text[:cut], "stop"
                    elif len(tokens) < steps:  # the end-of-text token ended it
                        finished[i] = "stop"
                    elif done_now:
                        finished[i] = "length"
                    texts[i] = text
                    # hold back what could still become a stop string, or half a UTF-8 character
                    end = len(text) if finished[i] else max(sent[i], len(text) - hold)
                    while not finished[i] and end > sent[i] and text[end - 1] == "\ufffd":
                        end -= 1
                    if end > sent[i] or finished[i]:
                        yield i, text[sent[i]:end], finished[i]
                        sent[i] = end
                if all(finished):
                    break
        finally:
            job.cancelled = True  # a client that went away frees its batch rows
        for i, reason in enumerate(finished):
            if reason is None:  # max_tokens == 0
                yield i, "", "length"
        completion = sum(generated)
        prompt_tokens = sum(len(e) for e in encoded[::p["n"]])
        self.metrics.count_tokens(prompt_tokens, completion, time.time() - t0)
        yield None, {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}, None


def create_app(model, tokenizer, cfg):
    server = Server(model, tokenizer, cfg)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg["max_body_bytes"]
    app.config["mini_lm_server"] = server
    api_key = cfg["api_key"] or os.environ.get("MINI_LM_API_KEY", "")

    def error(status, message, param=None):
        kind = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed",
                413: "request_too_large", 500: "server_error"}.get(status, "invalid_request_error")
        return jsonify({"error": {"message": message, "type": kind, "param": param}}), status

    @app.before_request
    def authenticate():
        request.start_time = time.time()
        if api_key and (request.path.startswith("/v1/") or request.path == "/generate"):
            if request.headers.get("Authorization", "") != f"Bearer {api_key}":
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.after_request
    def count(response):
        server.metrics.count_request(request.path if request.url_rule else "other",
                                     response.status_code)
        if not response.is_streamed:
            server.metrics.observe("request_seconds", time.time() - request.start_time)
        return response

    @app.errorhandler(BadRequest)
    def bad_request(e):
        return error(e.status, str(e), e.param)

    @app.errorhandler(404)
    def not_found(e):
        return error(404, f"no endpoint {request.path}")

    @app.errorhandler(405)
    def not_allowed(e):
        return error(405, f"{request.method} is not allowed on {request.path}")

    @app.errorhandler(413)
    def too_large(e):
        return error(413, f"the body is larger than {cfg['max_body_bytes']:,} bytes")

    @app.errorhandler(Exception)
    def crashed(e):
        app.logger.exception("request failed")
        return error(500, f"internal error: {type(e).__name__}")

    def json_body():
        body = request.get_json(silent=True)
        if body is None:
            raise BadRequest("the body must be valid JSON with Content-Type: application/json")
        return body

    @app.post("/v1/completions")
    def completions():
        prompts, p = server.parse(json_body())
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": cfg["model_name"]}
        if p["stream"]:
            start = request.start_time

            def events():
                for index, delta, reason in server.run(prompts, p):
                    if index is None:
                        break
                    chunk = {**meta, "choices": [{"text": delta, "index": index, "logprobs": None,
                                                  "finish_reason": reason}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
                server.metrics.observe("request_seconds", time.time() - start)

            return Response(events(), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, reasons, usage = {}, {}, None
        for index, delta, reason in server.run(prompts, p):
            if index is None:
                usage = delta
                continue
            texts[index] = texts.get(index, "") + delta
            reasons[index] = reason or reasons.get(index)
        choices = [{"text": texts[i], "index": i, "logprobs": None, "finish_reason": reasons[i]}
                   for i in sorted(texts)]
        return jsonify({**meta, "choices": choices, "usage": usage})

    @app.post("/generate")
    def generate():
        prompts, p = server.parse(json_body(), openai=False)
        if p["n"] != 1 or p["stream"]:
            raise BadRequest("/generate returns one completion; use /v1/completions for n or stream")
        t0 = time.time()
        text, reason, usage = "", None, None
        for index, delta, finish in server.run(prompts, p):
            if index is None:
                usage = delta
            else:
                text, reason = text + delta, finish or reason
        seconds = time.time() - t0
        return jsonify({"text": text, "finish_reason": reason, "usage": usage,
                        "seconds": round(seconds, 4),
                        "tokens_per_second": round(usage["completion_tokens"] / seconds, 2)
                        if seconds > 0 else None})

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", "model": cfg["model_name"],
                        "parameters": model.parameter_breakdown()["total"],
                        "block_size": model.config.block_size, "vocab_size": model.config.vocab_size})

    @app.get("/metrics")
    def prometheus():
        return Response(server.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/")
    def page():
        return Response(PAGE.replace("{{MODEL}}", cfg["model_name"]), mimetype="text/html")

    return app


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{MODEL}}</title>
<style>body{font:15px system-ui;max-width:46em;margin:2em auto}textarea{width:100%;height:7em}
label{margin-right:1em}#out{white-space:pre-wrap;border:1px solid #ccc;padding:.6em;min-height:6em}</style>
</head><body><h2>{{MODEL}}</h2>
<textarea id="prompt">The river</textarea><p>
<label>max tokens <input id="max" type="number" value="64" min="1" max="1024"></label>
<label>temperature <input id="temp" type="number" value="0.8" step="0.1" min="0" max="2"></label>
<label>top p <input id="topp" type="number" value="0.95" step="0.05" min="0.05" max="1"></label>
<label>API key <input id="key" type="password" size="10"></label>
<button id="go">Generate</button></p><div id="out"></div>
<script>
document.getElementById('go').onclick = async () => {
  const out = document.getElementById('out'); out.textContent = '';
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('key').value; if (key) headers.Authorization = 'Bearer ' + key;
  const res = await fetch('/v1/completions', {method: 'POST', headers, body: JSON.stringify({
    prompt: document.getElementById('prompt').value, stream: true,
    max_tokens: +document.getElementById('max').value,
    temperature: +document.getElementById('temp').value, top_p: +document.getElementById('topp').value})});
  if (!res.ok) { out.textContent = (await res.json()).error.message; return; }
  const reader = res.body.getReader(), decoder = new TextDecoder(); let buffer = '';
  while (true) {
    const {value, done} = await reader.read(); if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split('\\n\\n'); buffer = events.pop();
    for (const e of events) {
      const data = e.replace(/^data: /, ''); if (data === '[DONE]') return;
      out.textContent += JSON.parse(data).choices[0].text;
    }
  }
};
</script></body></html>"""


def load(cfg):
    device = hardware.resolve_device(cfg["device"])
    if cfg["dtype"] not in ("float32", "bfloat16", "float64"):
        raise configurator.ConfigError(f"dtype={cfg['dtype']!r} must be 'float32', 'bfloat16' or "
                                       "'float64'")
    model, tokenizer, _ = checkpoint.load_model(cfg["ckpt"], device)
    model = model.to(getattr(torch, cfg["dtype"])).optimize_for_decoding()
    return model, tokenizer


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="serve.py")
    try:
        # Load in a thread that then ends, so that the engine thread is the only one that has run
        # parallel CPU work. OpenMP (libgomp) gives every such thread its own team of workers, and
        # with more workers than cores it stops spinning between operations: bf16 decoding in the
        # engine ran at ~60% speed once the main thread had loaded the model itself (BENCHMARKS.md).
        with concurrent.futures.ThreadPoolExecutor(1) as loader:
            model, tokenizer = loader.submit(load, cfg).result()
    except (checkpoint.CheckpointError, configurator.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(model, tokenizer, cfg)
    import waitress
    print(f"serving {cfg['ckpt']} ({model.parameter_breakdown()['total'] / 1e6:.1f}M parameters) on "
          f"http://{cfg['host']}:{cfg['port']}", flush=True)
    waitress.serve(app, host=cfg["host"], port=cfg["port"], threads=cfg["threads"],
                   channel_timeout=300, send_bytes=1)


if __name__ == "__main__":
    main()
