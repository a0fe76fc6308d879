"""serve.py: serve a checkpoint over HTTP (Flask app on the waitress WSGI server).

    python serve.py                                         # out/best.pt on http://127.0.0.1:8000
    python serve.py --ckpt out/best.pt --port 8080 --cors_origins '*'
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "The river", "max_tokens": 32, "temperature": 0}'

Endpoints:
  POST /v1/completions  OpenAI-compatible completions (prompt as a string, a list of strings, token
                        ids or lists of them; max_tokens or max_completion_tokens, temperature,
                        top_p, top_k, stop, n, seed, stream with server-sent events and
                        stream_options.include_usage; echo, and logprobs with the log-probability
                        of every generated token, and of every prompt token with echo, as
                        lm-evaluation-harness scores them); other fields are ignored and logged
  GET  /v1/models       the served model, as OpenAI clients and chat front-ends discover it
  POST /generate        {"prompt": "...", "max_tokens": 64, ...} -> {"text": ..., ...}
  POST /tokenize, POST /detokenize, GET /tokenizer_info
                        the model's tokenizer, in vLLM's shapes (lm-evaluation-harness uses them)
  GET  /health          model name, size and context length
  GET  /metrics         Prometheus text: requests by status, time to first token and request
                        latency histograms, token counters, tokens/s, active and waiting sequences
  GET  /                a page to type a prompt and watch the stream (static/playground.html)

Requests are decoded together by the continuous-batching engine (engine.py); one request can never
fail another, and a client that disconnects frees its batch rows at once. max_tokens is capped at
block_size - 1 and a prompt keeps its last block_size - max_tokens tokens (usage says what was
used), except that a prompt scored with echo and logprobs must fit whole (a 400 says so).
With --api_key (or MINI_LM_API_KEY), /v1/*, /generate and the tokenizer endpoints need
`Authorization: Bearer <key>`; CORS preflight requests (OPTIONS) never do. --port 0 picks a free
port and prints it.
"""

import concurrent.futures
import contextlib
import html
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request

import checkpoint
import completions
from completions import BadRequest
import configurator
import hardware
from engine import Engine
from tokenizer import EOT

SPEC = {
    "ckpt": ("out/best.pt", "checkpoint to serve"),
    "host": ("127.0.0.1", "address to bind (0.0.0.0 exposes the server to the network)"),
    "port": (8000, "port (0: any free port, printed at start)"),
    "api_key": ("", "require this bearer token (default: $MINI_LM_API_KEY, else none)"),
    "model_name": ("mini-lm", "the `model` field of responses"),
    "max_tokens_limit": (1024, "largest max_tokens a request may ask for"),
    "max_n": (8, "largest n (completions per prompt) a request may ask for"),
    "max_body_bytes": (1_000_000, "larger request bodies get 413"),
    "device": ("auto", "'auto', 'cpu', 'cuda' ..."),
    "dtype": ("float32", "weights: 'float32', 'bfloat16' (half the bytes) or 'float64' (tests)"),
    "threads": (8, "waitress worker threads (concurrent requests)"),
    "max_batch": (16, "sequences decoded together at most (and per request); more requests wait "
                      "their turn"),
    "max_waiting": (64, "requests that may wait for a place in the batch; more are answered 503 "
                        "(busy, with Retry-After) instead of queueing without end"),
    "cors_origins": ("", "browser origins allowed to call the API: '*' for any, or a comma-separated "
                         "list such as 'http://localhost:3000'; empty: no CORS headers"),
}
PROTECTED = {"/generate", "/tokenize", "/detokenize", "/tokenizer_info"}  # with /v1/*: need the key
PAGE = Path(__file__).resolve().parent / "static" / "playground.html"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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

    def render(self, engine):
        gauges = {"active_sequences": engine.active_sequences(),
                  "waiting_requests": engine.waiting_requests()}
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
                    f"mini_lm_tokens_per_second {rate:.3f}",
                    "# TYPE mini_lm_cancelled_sequences_total counter",
                    f"mini_lm_cancelled_sequences_total {engine.cancelled_sequences}"]
            for name, value in gauges.items():
                out += [f"# TYPE mini_lm_{name} gauge", f"mini_lm_{name} {value}"]
            return "\n".join(out) + "\n"


class Server:
    """The model, its tokenizer and the batching engine; turns requests into token streams."""

    def __init__(self, model, tokenizer, cfg):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.engine = Engine(model, cfg["max_batch"])
        self.metrics = Metrics()
        self.log = None  # the app's logger, set by create_app
        self.unknown_seen, self.unknown_lock = set(), threading.Lock()

    def note_unknown_fields(self, names):
        """Log each request field this server ignores, once per name (clients send the same ones
        with every request)."""
        with self.unknown_lock:  # bounded: a hostile client may send any number of names
            new = [n[:64] for n in names if n[:64] not in self.unknown_seen][:1000 - len(self.unknown_seen)]
            self.unknown_seen.update(new)
        if new:
            self.log.warning("ignoring request field(s) this server does not implement: %s",
                             ", ".join(map(repr, new)))

    def encode(self, prompt, max_tokens, whole=False):
        """Prompt tokens (a text is encoded, token ids are kept), cut from the left so that prompt +
        max_tokens fits the context. whole: a prompt that does not fit is refused instead (its
        tokens are being scored, and a cut would shift every score the client lines up)."""
        ids = list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt)
        ids = ids or [self.tokenizer.eot_id]
        room = max(1, self.model.config.block_size - max_tokens)
        if whole and len(ids) > room:
            block = self.model.config.block_size
            raise BadRequest(f"with 'echo' and 'logprobs' the whole prompt is scored, and its "
                             f"{len(ids)} tokens + max_tokens {max_tokens} exceed this model's "
                             f"context of {block} tokens: send at most {room} prompt tokens "
                             f"(lm-evaluation-harness: max_length={block - 1})", "prompt")
        return ids[-room:]

    def run(self, prompts, p, disconnected=None):
        """Yield (index, text delta, finish_reason or None) for len(prompts) * n choices (with echo,
        each choice's first delta is its prompt); finally yields (None, usage dict, the choices'
        logprobs fields or None). disconnected: a callable that says the client went away (the
        request then ends and its batch rows are freed)."""
        p = {**p, "max_tokens": min(p["max_tokens"], self.model.config.block_size - 1)}
        scored = p["echo"] and p["logprobs"] is not None
        encoded = [self.encode(prompt, p["max_tokens"], whole=scored)
                   for prompt in prompts for _ in range(p["n"])]
        prompt_texts = [self.tokenizer.decode(ids) for ids in encoded]
        if p["echo"]:
            for i, text in enumerate(prompt_texts):
                yield i, text, None
        stops, hold = p["stop"], max((len(s) for s in p["stop"]), default=1) - 1
        sent = [0] * len(encoded)
        finished = [None] * len(encoded)
        texts = [""] * len(encoded)
        generated = [0] * len(encoded)
        ended_by_eot = [False] * len(encoded)
        t0, first = time.time(), None
        job = self.engine.submit(encoded, p, self.tokenizer.eot_id)
        stream = job.stream(disconnected)
        steps = 0
        try:
            while True:  # with max_tokens 0 the job ends at once (after the prefill, with echo)
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
                    if job.errors[i]:  # this sequence failed; the others go on
                        finished[i] = "error"
                        self.log.error("sequence %d of a request failed: %s", i, job.errors[i])
                    elif cut >= 0:
                        text, finished[i] = text[:cut], "stop"
                    elif len(tokens) < steps:  # the end-of-text token ended it
                        finished[i], ended_by_eot[i] = "stop", True
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
        if all(reason == "error" for reason in finished):
            raise RuntimeError(job.errors[0])
        for i, reason in enumerate(finished):
            if reason is None:  # max_tokens == 0
                yield i, "", "length"
        completion = sum(generated)
        prompt_tokens = sum(len(e) for e in encoded[::p["n"]])
        self.metrics.count_tokens(prompt_tokens, completion, time.time() - t0)
        logprobs = None
        if p["logprobs"] is not None:
            logprobs = [self.choice_logprobs(job, i, encoded[i] if p["echo"] else [],
                                             generated[i], ended_by_eot[i], prompt_texts[i], texts[i])
                        for i in range(len(encoded))]
        yield None, {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}, logprobs

    def choice_logprobs(self, job, i, echoed, generated, ended_by_eot, prompt_text, text):
        """The logprobs field of choice i: the echoed prompt tokens, the generated tokens the
        choice's text holds, and the end-of-text token last when it ended the choice, as vLLM
        does (lm-evaluation-harness drops the last entry, taking it for the generated one)."""
        eot = [self.tokenizer.eot_id] if ended_by_eot else []
        return completions.logprobs_field(
            self.tokenizer, echoed, job.prompt_scores[i], job.tokens[i][:generated] + eot,
            job.token_scores[i][:generated + len(eot)], text_end=len(prompt_text) + len(text),
            offset=0 if echoed else len(prompt_text))


def stream_events(server, prompts, p, meta, disconnected):
    """Server-sent events of one streamed completion: a chunk per text delta, then (with
    include_usage) a chunk with the usage and no choices, then [DONE]. A failure after the headers
    went out is sent as an error event, since the status can no longer change."""
    usage_field = {"usage": None} if p["include_usage"] else {}
    try:
        with contextlib.closing(server.run(prompts, p, disconnected)) as deltas:
            for index, delta, reason in deltas:
                if index is None:
                    if p["include_usage"]:
                        yield f"data: {json.dumps({**meta, 'choices': [], 'usage': delta})}\n\n"
                    break
                chunk = {**meta, "choices": [{"text": delta, "index": index, "logprobs": None,
                                              "finish_reason": reason}], **usage_field}
                yield f"data: {json.dumps(chunk)}\n\n"
    except Exception as e:
        server.log.exception("stream failed")
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def cors_headers(allowed, origin, preflight):
    """CORS response headers for a request from origin, or none if it is not allowed."""
    if not origin or not ("*" in allowed or origin in allowed):
        return {}
    headers = {"Access-Control-Allow-Origin": "*" if "*" in allowed else origin, "Vary": "Origin"}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600"})
    return headers


def parse_json(request):
    """The request's JSON body, or a BadRequest (never a 500: deep nesting is refused too)."""
    if not request.is_json:
        raise BadRequest("the body must be JSON with Content-Type: application/json")
    try:
        return json.loads(request.get_data())
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not valid JSON ({type(e).__name__})") from None


def error(status, message, param=None):
    """An OpenAI-style JSON error response."""
    kind = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed",
            413: "request_too_large", 500: "server_error", 503: "server_busy"}.get(
                status, "invalid_request_error")
    response = jsonify({"error": {"message": message, "type": kind, "param": param}})
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response, status


def install_checks(app, server, cfg):
    """What every request goes through: the API key (never for CORS preflights), CORS headers,
    request counting and latency, and JSON errors for every failure."""
    api_key = cfg["api_key"] or os.environ.get("MINI_LM_API_KEY", "")
    allowed_origins = {o.strip() for o in cfg["cors_origins"].split(",") if o.strip()}

    @app.before_request
    def authenticate():
        request.start_time = time.time()
        if request.method == "OPTIONS":  # a CORS preflight carries no credentials
            return Response(status=204, headers=cors_headers(allowed_origins,
                                                             request.headers.get("Origin"), True))
        if api_key and (request.path.startswith("/v1/") or request.path in PROTECTED):
            if request.headers.get("Authorization", "") != f"Bearer {api_key}":
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.after_request
    def count(response):
        server.metrics.count_request(request.path if request.url_rule else "other",
                                     response.status_code)
        if not response.is_streamed:
            server.metrics.observe("request_seconds", time.time() - request.start_time)
        response.headers.extend(cors_headers(allowed_origins, request.headers.get("Origin"), False))
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


def add_tokenizer_endpoints(app, model, tokenizer):
    """vLLM's tokenizer endpoints, through which lm-evaluation-harness (its `local-completions`
    model) counts context tokens with this model's own tokenizer: no export needed."""
    @app.get("/tokenizer_info")
    def tokenizer_info():
        return jsonify({"tokenizer_class": "mini-lm byte-level BPE", "eos_token": EOT,
                        "bos_token": None, "pad_token": None,
                        "model_max_length": model.config.block_size,
                        "vocab_size": model.config.vocab_size})

    @app.post("/tokenize")
    def tokenize():
        body = parse_json(request)
        text = completions.field(body if isinstance(body, dict) else {}, "prompt", str, None)
        if text is None:
            raise BadRequest("'prompt' (a string) is required", "prompt")
        completions.check_unicode("prompt", [text])
        ids = tokenizer.encode_with_special_tokens(text)  # "<|endoftext|>" is the end-of-text id
        return jsonify({"tokens": ids, "count": len(ids), "max_model_len": model.config.block_size})

    @app.post("/detokenize")
    def detokenize():
        body = parse_json(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        vocab = model.config.vocab_size
        if not (isinstance(tokens, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                                 and 0 <= t < vocab for t in tokens)):
            raise BadRequest(f"'tokens' must be a list of token ids in 0..{vocab - 1}", "tokens")
        return jsonify({"prompt": tokenizer.decode(tokens)})


def create_app(model, tokenizer, cfg):
    """The Flask app: the checks above, then one function per endpoint."""
    server = Server(model, tokenizer, cfg)
    app = Flask(__name__)
    server.log = app.logger
    app.config["MAX_CONTENT_LENGTH"] = cfg["max_body_bytes"]
    app.config["mini_lm_server"] = server
    install_checks(app, server, cfg)
    add_tokenizer_endpoints(app, model, tokenizer)
    page = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(cfg["model_name"]))
    model_card = {"id": cfg["model_name"], "object": "model", "created": int(time.time()),
                  "owned_by": "mini-lm"}

    def parse_request(openai):
        prompts, p, unknown = completions.parse_request(parse_json(request), cfg,
                                                        model.config.vocab_size, openai)
        waiting = server.engine.waiting_requests()
        if waiting >= cfg["max_waiting"]:  # shed load: a client can retry, a queue only grows
            raise BadRequest(f"the server is busy: {waiting} requests wait for a place in the batch "
                             "already; try again shortly", status=503)
        server.note_unknown_fields(unknown)
        return prompts, p, request.environ.get("waitress.client_disconnected")

    @app.post("/v1/completions")
    def complete():
        prompts, p, disconnected = parse_request(openai=True)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": cfg["model_name"]}
        if p["stream"]:
            return Response(stream_events(server, prompts, p, meta, disconnected),
                            mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, reasons, usage, logprobs = {}, {}, None, None
        for index, delta, reason in server.run(prompts, p, disconnected):
            if index is None:
                usage, logprobs = delta, reason
                continue
            texts[index] = texts.get(index, "") + delta
            reasons[index] = reason or reasons.get(index)
        choices = [{"text": texts[i], "index": i, "logprobs": logprobs[i] if logprobs else None,
                    "finish_reason": reasons[i]} for i in sorted(texts)]
        return jsonify({**meta, "choices": choices, "usage": usage})

    @app.post("/generate")
    def generate():
        prompts, p, disconnected = parse_request(openai=False)
        if p["n"] != 1 or p["stream"] or p["echo"] or p["logprobs"] is not None:
            raise BadRequest("/generate returns one completion; use /v1/completions for n, stream, "
                             "echo or logprobs")
        t0 = time.time()
        text, reason, usage = "", None, None
        for index, delta, finish in server.run(prompts, p, disconnected):
            if index is None:
                usage = delta
            else:
                text, reason = text + delta, finish or reason
        seconds = time.time() - t0
        return jsonify({"text": text, "finish_reason": reason, "usage": usage,
                        "seconds": round(seconds, 4),
                        "tokens_per_second": round(usage["completion_tokens"] / seconds, 2)
                        if seconds > 0 else None})

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [model_card]})

    @app.get("/v1/models/<path:name>")
    def model_info(name):
        if name != cfg["model_name"]:
            return error(404, f"no model {name!r}; this server serves {cfg['model_name']!r}", "model")
        return jsonify(model_card)

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", "model": cfg["model_name"],
                        "parameters": model.parameter_breakdown()["total"],
                        "block_size": model.config.block_size, "vocab_size": model.config.vocab_size})

    @app.get("/metrics")
    def prometheus():
        return Response(server.metrics.render(server.engine), mimetype="text/plain; version=0.0.4")

    @app.get("/")
    def playground():
        return Response(page, mimetype="text/html")

    return app


def load(cfg):
    device = hardware.resolve_device(cfg["device"])
    if cfg["max_waiting"] < 1 or cfg["max_batch"] < 1:
        raise configurator.ConfigError(f"max_waiting={cfg['max_waiting']} and max_batch="
                                       f"{cfg['max_batch']} must be at least 1")
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
        # engine ran markedly slower once the main thread had loaded the model itself (BENCHMARKS.md).
        with concurrent.futures.ThreadPoolExecutor(1) as loader:
            model, tokenizer = loader.submit(load, cfg).result()
    except (checkpoint.CheckpointError, configurator.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(model, tokenizer, cfg)
    import waitress
    # channel_request_lookahead: waitress keeps reading the connection while a request runs, so it
    # notices a client that went away (waitress.client_disconnected) and generation stops at once
    http = waitress.create_server(app, host=cfg["host"], port=cfg["port"], threads=cfg["threads"],
                                  channel_timeout=300, send_bytes=1, channel_request_lookahead=1)
    print(f"serving {cfg['ckpt']} ({model.parameter_breakdown()['total'] / 1e6:.1f}M parameters) on "
          f"http://{cfg['host']}:{http.effective_port}", flush=True)
    http.run()


if __name__ == "__main__":
    main()
