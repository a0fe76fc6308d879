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
  GET  /                a page to type a prompt and watch the stream (serving/playground.html)

Requests are decoded together by the continuous-batching engine (serving/engine.py); one request can never
fail another, and a client that disconnects frees its batch rows at once. max_tokens is capped at
block_size - 1 and a prompt keeps its last block_size - max_tokens tokens (usage says what was
used), except that a prompt scored with echo and logprobs must fit whole (a 400 says so).
With --api_key (or MINI_LM_API_KEY), /v1/*, /generate and the tokenizer endpoints need
`Authorization: Bearer <key>`; CORS preflight requests (OPTIONS) never do. --port 0 picks a free
port and prints it.
"""

import concurrent.futures
import contextlib
import hmac
import html
import json
import os
import time
import uuid
from pathlib import Path

import waitress
from flask import Flask, Response, jsonify, request

from core import checkpoint, configurator, inference, tasks
from core.tokenizer import EOT
from serving import completions, engine
from serving.completions import BadRequest
from serving.monitoring import CONTENT_TYPE
from serving.server import Server

SPEC = {
    "ckpt": ("out/best.pt", "checkpoint to serve"),
    "host": ("127.0.0.1", "address to bind (0.0.0.0 exposes the server to the network)"),
    "port": (8000, "port (0: any free port, printed at start)"),
    "api_key": ("", "require this bearer token (default: $MINI_LM_API_KEY, else none)"),
    "model_name": ("mini-lm", "the `model` field of responses"),
    "max_tokens_limit": (1024, "largest max_tokens a request may ask for"),
    "max_n": (8, "largest n (completions per prompt) a request may ask for"),
    "max_body_bytes": (1_000_000, "larger request bodies get 413"),
    **inference.OPTIONS,  # device, dtype, compile (compiled before the server listens)
    "threads": (8, "waitress worker threads (concurrent requests)"),
    "max_batch": (16, "sequences decoded together at most (and per request); more requests wait "
                      "their turn"),
    "max_waiting": (64, "requests that may wait for a place in the batch; more are answered 503 "
                        "(busy, with Retry-After) instead of queueing without end"),
    "cors_origins": ("", "browser origins allowed to call the API: '*' for any, or a comma-separated "
                         "list such as 'http://localhost:3000'; empty: no CORS headers"),
}
PROTECTED = {"/generate", "/tokenize", "/detokenize", "/tokenizer_info"}  # with /v1/*: need the key
PAGE = Path(__file__).resolve().parent / "serving" / "playground.html"


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


def key_matches(authorization, api_key):
    """Whether an Authorization header carries the key, compared in constant time (hmac), so the
    answer's timing tells nothing of how much of a guess was right. Bytes, not str: compare_digest
    refuses non-ASCII str, and a client may send any header."""
    sent = authorization.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, f"Bearer {api_key}".encode("utf-8", "surrogateescape"))


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
            if not key_matches(request.headers.get("Authorization", ""), api_key):
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.after_request
    def count(response):
        endpoint = request.path if request.url_rule else "other"
        server.metrics.requests.labels(endpoint, response.status_code).inc()
        if not response.is_streamed:
            server.metrics.request_seconds.observe(time.time() - request.start_time)
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


def collect(deltas):
    """A whole response from server.run's deltas: ({index: text}, {index: finish_reason}, usage,
    logprobs fields)."""
    texts, reasons, usage, logprobs = {}, {}, None, None
    for index, delta, reason in deltas:
        if index is None:
            usage, logprobs = delta, reason
            continue
        texts[index] = texts.get(index, "") + delta
        reasons[index] = reason or reasons.get(index)
    return texts, reasons, usage, logprobs


def add_completion_endpoints(app, server, cfg, prompt_template):
    """POST /v1/completions (OpenAI's shapes, streamed or whole: prompts as sent) and POST /generate
    (one text; a checkpoint fine-tuned on a task gets its prompt in the task's template)."""
    def parse_request(openai):
        prompts, p, unknown = completions.parse_request(parse_json(request), cfg,
                                                        server.model.config.vocab_size, openai)
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
        texts, reasons, usage, logprobs = collect(server.run(prompts, p, disconnected))
        choices = [{"text": texts[i], "index": i, "logprobs": logprobs[i] if logprobs else None,
                    "finish_reason": reasons[i]} for i in sorted(texts)]
        return jsonify({**meta, "choices": choices, "usage": usage})

    @app.post("/generate")
    def generate():
        prompts, p, disconnected = parse_request(openai=False)
        if p["n"] != 1 or p["stream"] or p["echo"] or p["logprobs"] is not None:
            raise BadRequest("/generate returns one completion; use /v1/completions for n, stream, "
                             "echo or logprobs")
        if prompt_template:
            prompts = [tasks.render_prompt(q, prompt_template) if isinstance(q, str) else q
                       for q in prompts]
        t0 = time.time()
        texts, reasons, usage, _ = collect(server.run(prompts, p, disconnected))
        seconds = time.time() - t0
        return jsonify({"text": texts.get(0, ""), "finish_reason": reasons.get(0), "usage": usage,
                        "seconds": round(seconds, 4),
                        "tokens_per_second": round(usage["completion_tokens"] / seconds, 2)
                        if seconds > 0 else None})


def add_model_endpoints(app, server, cfg, prompt_template):
    """GET /v1/models, /v1/models/<name>, /health, /metrics and the playground page at /."""
    model = server.model
    page = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(cfg["model_name"]))
    model_card = {"id": cfg["model_name"], "object": "model", "created": int(time.time()),
                  "owned_by": "mini-lm"}

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
                        "block_size": model.config.block_size, "vocab_size": model.config.vocab_size,
                        "prompt_template": prompt_template})

    @app.get("/metrics")
    def prometheus():
        return Response(server.metrics.render(), content_type=CONTENT_TYPE)

    @app.get("/")
    def playground():
        return Response(page, mimetype="text/html")


def create_app(model, tokenizer, cfg, prompt_template=None):
    """The Flask app: the checks every request goes through, then the endpoints. prompt_template:
    the task template of a fine-tuned checkpoint, which /generate renders prompts in."""
    app = Flask(__name__)
    server = Server(model, tokenizer, cfg["max_batch"], app.logger)
    app.config["MAX_CONTENT_LENGTH"] = cfg["max_body_bytes"]
    app.config["mini_lm_server"] = server
    install_checks(app, server, cfg)
    add_tokenizer_endpoints(app, model, tokenizer)
    add_completion_endpoints(app, server, cfg, prompt_template)
    add_model_endpoints(app, server, cfg, prompt_template)
    return app


def load(cfg):
    if cfg["max_waiting"] < 1 or cfg["max_batch"] < 1:
        raise configurator.ConfigError(f"max_waiting={cfg['max_waiting']} and max_batch="
                                       f"{cfg['max_batch']} must be at least 1")
    model, tokenizer, ckpt = inference.load_for_inference(cfg["ckpt"], cfg["device"], cfg["dtype"],
                                                           cfg["compile"])
    if cfg["compile"]:  # compile now rather than in the first requests
        engine.warm_up(model)
    return model, tokenizer, ckpt.get("prompt_template")


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="serve.py")
    with configurator.errors_exit(checkpoint.CheckpointError, ValueError):
        # Load in a thread that then ends, so that the engine thread is the only one that has run
        # parallel CPU work. OpenMP (libgomp) gives every such thread its own team of workers, and
        # with more workers than cores it stops spinning between operations: bf16 decoding in the
        # engine ran markedly slower once the main thread had loaded the model itself (BENCHMARKS.md).
        with concurrent.futures.ThreadPoolExecutor(1) as loader:
            model, tokenizer, prompt_template = loader.submit(load, cfg).result()
    app = create_app(model, tokenizer, cfg, prompt_template)
    # channel_request_lookahead: waitress keeps reading the connection while a request runs, so it
    # notices a client that went away (waitress.client_disconnected) and generation stops at once
    http = waitress.create_server(app, host=cfg["host"], port=cfg["port"], threads=cfg["threads"],
                                  channel_timeout=300, send_bytes=1, channel_request_lookahead=1)
    print(f"serving {cfg['ckpt']} ({model.parameter_breakdown()['total'] / 1e6:.1f}M parameters) on "
          f"http://{cfg['host']}:{http.effective_port}", flush=True)
    http.run()


if __name__ == "__main__":
    main()
