"""serve.py's scoring side, as lm-evaluation-harness uses it: echo and logprobs against eval.py's
token log-likelihoods, token-id prompts, the end-of-text token listed last, bad input, and the
tokenizer endpoints."""
import numpy as np
import pytest

from core import checkpoint
from core import metrics
from test_serve import app, make_app  # noqa: F401  (a fixture and a helper)


def test_echoed_prompt_logprobs_equal_eval_token_log_likelihoods(ckpt):
    """echo + logprobs + max_tokens 0 scores the prompt: each token's log-probability is minus the
    NLL eval.py's sliding window gives it (the whole text fits one window here)."""
    flask_app, model, tokenizer = make_app(ckpt, "--dtype=float64")
    text = "The old river crossed the quiet town."
    ids = tokenizer.encode(text)
    assert len(ids) < model.config.block_size
    out = flask_app.test_client().post("/v1/completions", json={
        "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2}).get_json()
    choice = out["choices"][0]
    assert choice["text"] == text and out["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert lp["tokens"] == [tokenizer.token_str(t) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    reference, _, _ = checkpoint.load_model(ckpt)
    nll = metrics.sliding_window_nll(reference.double(), np.array(ids), model.config.block_size)
    np.testing.assert_allclose(lp["token_logprobs"][1:], -nll, rtol=0, atol=1e-9)
    for chosen, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert len(top) == 2 and max(top.values()) >= chosen - 1e-12
    assert lp["text_offset"] == [len(tokenizer.decode(ids[:j])) for j in range(len(ids))]


def test_lm_evaluation_harness_requests(app):
    """What lm-evaluation-harness's local-completions model sends for loglikelihood: token ids,
    max_tokens 1, echo, logprobs 1, several prompts at once; it reads token_logprobs[ctxlen:-1]."""
    flask_app, model, tokenizer = app
    client = flask_app.test_client()
    context, continuation = tokenizer.encode("The old town"), tokenizer.encode(" had a river")
    prompts = [context + continuation, tokenizer.encode("def step(value):")]
    out = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 1, "echo": True,
                                               "logprobs": 1, "temperature": 0, "seed": 1234})
    assert out.status_code == 200, out.get_json()
    choices = sorted(out.get_json()["choices"], key=lambda c: c["index"])
    for prompt, choice in zip(prompts, choices):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(prompt) + 1  # the prompt and one generated token
        assert choice["text"].startswith(tokenizer.decode(prompt))
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
    alone = client.post("/v1/completions", json={"prompt": prompts[0], "max_tokens": 0, "echo": True,
                                                 "logprobs": 1}).get_json()["choices"][0]["logprobs"]
    np.testing.assert_allclose(choices[0]["logprobs"]["token_logprobs"][1:-1],
                               alone["token_logprobs"][1:], rtol=0, atol=1e-5)  # batched == alone
    continuation_logprob = sum(alone["token_logprobs"][len(context):])
    assert continuation_logprob < 0


def test_generated_token_logprobs_are_the_greedy_choices(app):
    flask_app, model, tokenizer = app
    out = flask_app.test_client().post("/v1/completions", json={
        "prompt": "The river", "max_tokens": 8, "temperature": 0, "logprobs": 3}).get_json()
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == out["usage"]["completion_tokens"]
    assert lp["text_offset"][0] == len("The river")  # offsets count from the prompt's start
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and chosen == pytest.approx(max(top.values()), abs=1e-6)  # greedy


def test_logprobs_and_token_prompts_bad_input(app):
    flask_app, model, tokenizer = app
    client = flask_app.test_client()
    block, vocab = model.config.block_size, model.config.vocab_size
    for body, param, words in [
        ({"prompt": "The", "logprobs": 6}, "logprobs", "0..5"),
        ({"prompt": "The", "logprobs": 1, "stream": True}, "logprobs", "without 'stream'"),
        ({"prompt": [1, vocab]}, "prompt", f"token id {vocab}"),
        ({"prompt": [[1, 2], [-1]]}, "prompt", "token id -1"),
        ({"prompt": [[1, 2], ["text"]]}, "prompt", "list of token ids"),
        ({"prompt": [5] * block, "echo": True, "logprobs": 0, "max_tokens": 1}, "prompt",
         f"max_length={block - 1}"),
    ]:
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 400 and r.get_json()["error"]["param"] == param, (body, r.get_json())
        assert words in r.get_json()["error"]["message"], r.get_json()
    r = client.post("/generate", json={"prompt": "The", "logprobs": 1})
    assert r.status_code == 400 and "logprobs" in r.get_json()["error"]["message"]
    # without logprobs a long prompt is still cut from the left to fit, as before
    r = client.post("/v1/completions", json={"prompt": [5] * block, "echo": True, "max_tokens": 1})
    assert r.status_code == 200 and r.get_json()["usage"]["prompt_tokens"] == block - 1


def test_tokenizer_endpoints(app, ckpt):
    flask_app, model, tokenizer = app
    client = flask_app.test_client()
    info = client.get("/tokenizer_info").get_json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == model.config.block_size
    ids = client.post("/tokenize", json={"prompt": "The river", "add_special_tokens": False}).get_json()
    assert ids["tokens"] == tokenizer.encode("The river") and ids["count"] == len(ids["tokens"])
    eos = client.post("/tokenize", json={"prompt": "<|endoftext|>"}).get_json()["tokens"]
    assert eos == [tokenizer.eot_id]  # how the harness finds the end-of-text id
    text = client.post("/detokenize", json={"tokens": ids["tokens"]}).get_json()["prompt"]
    assert text == "The river"
    for path, body in (("/tokenize", {}), ("/tokenize", {"prompt": 5}),
                       ("/detokenize", {"tokens": [model.config.vocab_size]}),
                       ("/detokenize", {"tokens": "abc"})):
        assert client.post(path, json=body).status_code == 400, (path, body)
    keyed = make_app(ckpt, "--api_key=secret")[0].test_client()
    assert keyed.post("/tokenize", json={"prompt": "a"}).status_code == 401
    assert keyed.get("/tokenizer_info").status_code == 401
    assert keyed.post("/tokenize", json={"prompt": "a"},
                      headers={"Authorization": "Bearer secret"}).status_code == 200


def test_an_end_of_text_token_that_ends_a_choice_is_listed_last(app):
    """As vLLM does, and as lm-evaluation-harness counts on: with echo and max_tokens 1 it drops the
    last logprobs entry, taking it for the generated token, even when that token ended the text.
    The tiny model has not learnt where texts end, so sampling at temperature 2 draws the
    end-of-text token now and then: the first seed that ends a choice with it is used."""
    flask_app, model, tokenizer = app
    client = flask_app.test_client()
    body = {"prompt": "The", "max_tokens": 20, "n": 8, "temperature": 2.0, "logprobs": 2, "echo": True}
    ended = None
    for seed in range(40):
        out = client.post("/v1/completions", json={**body, "seed": seed}).get_json()
        ended = next((c for c in out["choices"] if c["finish_reason"] == "stop"), None)
        if ended:
            break
    assert ended, "premise: some seed ends a choice with the end-of-text token"
    lp, prompt = ended["logprobs"], tokenizer.encode("The")
    assert lp["tokens"][-1] == "<|endoftext|>" and lp["tokens"].count("<|endoftext|>") == 1
    assert lp["text_offset"][-1] == len(ended["text"])  # it starts where the text ends
    assert lp["token_logprobs"][-1] < 0 and len(lp["top_logprobs"][-1]) == 2
    # every generated token has its entry, and each ended choice one more
    n_ended = sum(c["finish_reason"] == "stop" for c in out["choices"])
    assert sum(len(c["logprobs"]["tokens"]) - len(prompt) for c in out["choices"]) == \
        out["usage"]["completion_tokens"] + n_ended
    others = [c for c in out["choices"] if c["finish_reason"] == "length"]
    assert all(c["logprobs"]["tokens"][-1] != "<|endoftext|>" for c in others)


@pytest.mark.parametrize("as_ids", [False, True])
def test_a_long_prompt_keeps_its_end(app, as_ids):
    """The tokens cut are the prompt's first ones: echo returns the kept prompt, and the completion
    is the model's greedy continuation of exactly those tokens."""
    flask_app, model, tokenizer = app
    ids = tokenizer.encode(" ".join(f"w{i}" for i in range(400)))  # no two windows alike
    room = model.config.block_size - 3
    assert len(ids) > 2 * room
    out = flask_app.test_client().post("/v1/completions", json={
        "prompt": ids if as_ids else tokenizer.decode(ids), "max_tokens": 3, "temperature": 0,
        "echo": True}).get_json()
    kept = tokenizer.decode(ids[-room:])
    expected = tokenizer.decode(model.generate([ids[-room:]], 3, temperature=0)[0])
    assert out["choices"][0]["text"] == kept + expected and out["usage"]["prompt_tokens"] == room
