"""What serve.py's endpoints call: a request's prompts in, its choices' text deltas out.

Server holds the model, its tokenizer, the batching engine (engine.py) and the metrics; run() encodes
a request's prompts, submits them to the engine as one job, and turns each step's tokens into text
deltas per choice (a Choice: its TextStream, why it ended, how many tokens it generated), then the
usage and, when asked, the logprobs field of each choice.
"""

import threading
import time
from dataclasses import dataclass

from serving import completions
from serving.completions import BadRequest
from serving.engine import Engine
from serving.monitoring import ServerMetrics
from core.streaming import TextStream


@dataclass
class Choice:
    """One completion of a request as it is generated."""
    text: TextStream           # its text so far, stop strings and half characters held back
    finished: str = None       # why it ended: "stop", "length" or "error"; None while it runs
    generated: int = 0         # tokens generated
    ended_by_eot: bool = False  # the end-of-text token ended it

    def advance(self, tokens, steps, last_step, error):
        """Take the choice's tokens after `steps` decoding steps, and note why it ends, if it does."""
        self.generated = len(tokens)
        self.text.update(tokens)
        if error:  # this sequence failed; the request's others go on
            self.finished = "error"
        elif self.text.stopped:
            self.finished = "stop"
        elif len(tokens) < steps:  # the end-of-text token ended it
            self.finished, self.ended_by_eot = "stop", True
        elif last_step:
            self.finished = "length"


class Server:
    """The model, its tokenizer and the batching engine; turns requests into text deltas."""

    def __init__(self, model, tokenizer, max_batch, log):
        self.model, self.tokenizer, self.log = model, tokenizer, log
        self.engine = Engine(model, max_batch)
        self.metrics = ServerMetrics(self.engine)
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
        choices = [Choice(TextStream(self.tokenizer.decode, p["stop"])) for _ in encoded]
        t0 = time.time()
        job = self.engine.submit(encoded, p, self.tokenizer.eot_id)
        yield from self.decode(job, choices, p["max_tokens"], t0, disconnected)
        if all(choice.finished == "error" for choice in choices):
            raise RuntimeError(job.errors[0])
        for i, choice in enumerate(choices):
            if choice.finished is None:  # max_tokens == 0: the job ended after the prefill
                yield i, "", "length"
        completion = sum(choice.generated for choice in choices)
        prompt_tokens = sum(len(ids) for ids in encoded[::p["n"]])
        self.metrics.count_tokens(prompt_tokens, completion, time.time() - t0)
        logprobs = None
        if p["logprobs"] is not None:
            logprobs = [self.choice_logprobs(job, i, encoded[i] if p["echo"] else [], choice,
                                             prompt_texts[i]) for i, choice in enumerate(choices)]
        yield None, {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}, logprobs

    def decode(self, job, choices, max_tokens, t0, disconnected):
        """Yield (index, text delta, finish_reason or None) as the job's steps arrive, until every
        choice has ended. However this ends, the job is cancelled: a client that went away frees
        its batch rows at once."""
        steps = 0
        try:
            for new_tokens in job.stream(disconnected):
                steps += 1
                if steps == 1:
                    self.metrics.time_to_first_token.observe(time.time() - t0)
                for i, (choice, tokens) in enumerate(zip(choices, new_tokens)):
                    if choice.finished:
                        continue
                    choice.advance(tokens, steps, steps >= max_tokens, job.errors[i])
                    if choice.finished == "error":
                        self.log.error("sequence %d of a request failed: %s", i, job.errors[i])
                    delta = choice.text.release(final=choice.finished is not None)
                    if delta or choice.finished:
                        yield i, delta, choice.finished
                if all(choice.finished for choice in choices):
                    break
        finally:
            job.cancelled = True

    def choice_logprobs(self, job, i, echoed, choice, prompt_text):
        """The logprobs field of choice i: the echoed prompt tokens, the generated tokens the
        choice's text holds, and the end-of-text token last when it ended the choice, as vLLM
        does (lm-evaluation-harness drops the last entry, taking it for the generated one)."""
        eot = [self.tokenizer.eot_id] if choice.ended_by_eot else []
        generated = choice.generated
        return completions.logprobs_field(
            self.tokenizer, echoed, job.prompt_scores[i], job.tokens[i][:generated] + eot,
            job.token_scores[i][:generated + len(eot)],
            text_end=len(prompt_text) + len(choice.text.text),
            offset=0 if echoed else len(prompt_text))
