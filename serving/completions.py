"""completions.py: the shapes of OpenAI's completions API for serve.py: a request body read into
prompts and sampling parameters (or a BadRequest that names the field), and the legacy `logprobs`
object of one choice."""

import codecs

# Request fields the completions endpoint reads; any other is ignored and logged once per name.
KNOWN_FIELDS = {"model", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                "top_k", "n", "seed", "stream", "stream_options", "stop", "user", "logprobs",
                "echo"}
MAX_LOGPROBS = 5  # alternatives per token with `logprobs`, as OpenAI's legacy completions allowed


class BadRequest(ValueError):
    def __init__(self, message, param=None, status=400):
        super().__init__(message)
        self.param, self.status = param, status


def _is_token_list(value):
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def field(body, name, kind, default, check=None, message="has the wrong type"):
    """body[name] if it has the right type and passes check, default if absent, else a 400."""
    value = body.get(name)
    if value is None:
        return default
    wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if wrong_type or (check and not check(value)):
        raise BadRequest(f"'{name}' {message} (got {value!r})", name)
    return value


def parse_prompts(body, vocab_size, openai):
    """The request's prompts: texts, or lists of token ids (OpenAI's API takes both: a string, a
    list of strings, a list of token ids or a list of such lists); /generate takes one text."""
    prompt = body.get("prompt", "")
    if openai and _is_token_list(prompt):
        prompts = [prompt]
    else:
        prompts = prompt if isinstance(prompt, list) and openai else [prompt]
    if not prompts or not all(isinstance(p, str) or (openai and _is_token_list(p))
                              for p in prompts):
        raise BadRequest("'prompt' must be a string" + (
            ", a list of strings, a list of token ids or a list of such lists" if openai else ""),
            "prompt")
    bad = next((t for p in prompts if isinstance(p, list) for t in p if not 0 <= t < vocab_size),
               None)
    if bad is not None:
        raise BadRequest(f"'prompt' holds token id {bad}, outside this model's vocabulary "
                         f"0..{vocab_size - 1}", "prompt")
    check_unicode("prompt", [p for p in prompts if isinstance(p, str)])
    return prompts


def check_unicode(name, texts):
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadRequest(f"'{name}' is not valid Unicode: {e.reason} at position {e.start}",
                             name) from None


def parse_request(body, cfg, vocab_size, openai=True):
    """(prompts, params, unknown field names) of a request body, or a BadRequest naming the
    field. cfg: serve.py's limits (max_tokens_limit, max_n, max_batch). Every accepted value is
    safe to sample with (model.sample). openai=False: /generate's body (one text prompt)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    prompts = parse_prompts(body, vocab_size, openai)
    limit = cfg["max_tokens_limit"]
    in_range = (lambda v: 0 <= v <= limit, f"must be an integer in 0..{limit}")
    max_tokens = field(body, "max_tokens", int, None, *in_range)
    max_completion = field(body, "max_completion_tokens", int, None, *in_range)
    if None not in (max_tokens, max_completion) and max_tokens != max_completion:
        raise BadRequest("'max_completion_tokens' and 'max_tokens' differ: give one of them",
                         "max_completion_tokens")
    params = {
        "max_tokens": next((v for v in (max_tokens, max_completion) if v is not None),
                           16 if openai else 64),
        "temperature": field(body, "temperature", (int, float), 1.0,
                             lambda v: 0 <= v <= 2, "must be a number in 0..2"),
        "top_p": field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1,
                       "must be a number in (0, 1]"),
        "top_k": field(body, "top_k", int, None, lambda v: v > 0, "must be a positive integer"),
        "n": field(body, "n", int, 1, lambda v: 1 <= v <= cfg["max_n"],
                   f"must be an integer in 1..{cfg['max_n']}"),
        "seed": field(body, "seed", int, None, lambda v: -2**63 <= v < 2**64,
                      "must be an integer in -2**63..2**64-1"),
        "stream": field(body, "stream", bool, False),
        "echo": field(body, "echo", bool, False),
        "logprobs": field(body, "logprobs", int, None, lambda v: 0 <= v <= MAX_LOGPROBS,
                          f"must be an integer in 0..{MAX_LOGPROBS}"),
    }
    if params["logprobs"] is not None and params["stream"]:
        raise BadRequest("'logprobs' is answered without 'stream' only", "logprobs")
    options = field(body, "stream_options", dict, {}, message="must be an object")
    params["include_usage"] = field(options, "include_usage", bool, False)
    if len(prompts) * params["n"] > cfg["max_batch"]:
        raise BadRequest(f"'n' x prompts asks for {len(prompts) * params['n']} sequences; this "
                         f"server decodes at most {cfg['max_batch']} per request", "n")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("'stop' must be a non-empty string or a list of at most 4", "stop")
    params["stop"] = stop or []
    check_unicode("stop", params["stop"])
    return prompts, params, sorted(set(body) - KNOWN_FIELDS)


def logprobs_field(tokenizer, prompt, prompt_scores, tokens, token_scores, text_end, offset):
    """OpenAI's legacy `logprobs` of one choice: its tokens (the prompt's first when echoed),
    the log-probability of each (None for the first prompt token: nothing predicts it), the
    likeliest alternatives at each, and where each starts in prompt + completion text (the
    offset of the first). Tokens that start at or after text_end (cut by a stop string) are
    left out; an end-of-text token that ended the choice is kept, last."""
    ids = list(prompt) + list(tokens)
    scores = ([None] + (prompt_scores or []) if prompt else []) + list(token_scores)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets = []
    for token in ids:
        offsets.append(offset)
        offset += len(decoder.decode(tokenizer.decode_bytes([token])))
    last_is_eot = bool(tokens) and tokens[-1] == tokenizer.eot_id
    keep = [j for j, start in enumerate(offsets)
            if start < text_end or j < len(prompt) or (last_is_eot and j == len(ids) - 1)]
    name = tokenizer.token_str
    return {"tokens": [name(ids[j]) for j in keep],
            "token_logprobs": [None if scores[j] is None else scores[j][0] for j in keep],
            "top_logprobs": [None if scores[j] is None else {name(t): v for t, v in scores[j][1]}
                             for j in keep],
            "text_offset": [offsets[j] for j in keep]}
