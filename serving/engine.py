"""engine.py: continuous batching for serve.py, usable without Flask.

One thread owns the model and advances every active sequence of every request by one token per
forward pass. Sequences sit right-aligned in one KV cache (left padding masked, positions counted
from each sequence's own start), so a request that arrives joins at the next step after its
prompt's prefill, and a finished or cancelled one leaves at once.

    engine = Engine(model, max_batch=16)
    job = engine.submit([prompt_ids], params, eot_id)   # params: max_tokens, temperature, top_k,
    for token_lists in job.stream():                    #   top_p, seed; logprobs (k), echo
        ...                                             # the new tokens of each sequence so far

With params["logprobs"] = k (not None), every generated token is scored (job.token_scores), and
with params["echo"] too, every prompt token after the first (job.prompt_scores, from the prefill):
its log-probability under the model and the k likeliest tokens there, as OpenAI's legacy
completions return them. These are the model's own probabilities, before temperature, top_k or
top_p reshape the sampling distribution.

Isolation: a sampling error ends only its own sequence (job.errors says why; the request's other
sequences and every other request keep decoding), a prefill error only its own request (its stream
raises it). Only an error in the shared forward pass, which no request can be blamed for, fails
every request in flight.
"""

import collections
import queue
import threading

import torch

from model import KVCache, left_pad, sample


def warm_up(model):
    """Run prefill and the decoding step as the engine runs them (one row, then several; padding
    lengths always given; new tensors, as _step makes them), so that a compiled step compiles
    before the first request. The sizes differ from each other: a compiler that saw two equal
    sizes may assume they always are, and compile again at the first request where they are not."""
    device = model.lm_head.weight.device
    with torch.inference_mode():
        for rows in (1, 3):
            cache = KVCache.for_model(model, rows)
            pads = torch.zeros(rows, dtype=torch.long, device=device)
            model(torch.zeros(rows, 5, dtype=torch.long, device=device), cache=cache, pad_lengths=pads)
            model.decode_step(torch.zeros(rows, 1, dtype=torch.long, device=device), cache,
                              torch.zeros(rows, dtype=torch.long, device=device))


def score_tokens(logits, tokens, k):
    """[(log-probability of token j under logits[j], [(id, log-probability)] of the k likeliest
    tokens there)] for each j: rows of logits are the model's predictions where each token came."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    if not k:
        return [(c, []) for c in chosen]
    top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    return [(c, list(zip(ids, values)))
            for c, ids, values in zip(chosen, top.indices.tolist(), top.values.tolist())]


class Job:
    """One request's sequences (prompts x n). The engine thread writes `updates`; the request's
    thread reads them through stream() and may set `cancelled` (the client went away)."""

    def __init__(self, prompts, params, eot_id, device):
        self.prompts, self.params, self.eot_id = prompts, params, eot_id
        self.tokens = [[] for _ in prompts]
        self.done = [params["max_tokens"] == 0] * len(prompts)
        self.errors = [None] * len(prompts)  # why a sequence ended early, when it failed
        self.score_prompts = bool(params.get("echo")) and params.get("logprobs") is not None
        self.prompt_scores = [None] * len(prompts)    # with score_prompts: score_tokens(prompt)
        self.token_scores = [[] for _ in prompts]     # with logprobs: one per generated token, and
                                                      # one for an end-of-text token that ended it
        self.updates = queue.Queue()
        self.cancelled = False  # set by the request's thread: client gone, or a stop string matched
        self.ended = False      # set by the engine once it sent the end (None) or an error
        self.generator = None
        if params.get("seed") is not None:
            self.generator = torch.Generator(device=device).manual_seed(params["seed"])

    def finish(self, error=None):
        """Engine side: end the stream, with an error or normally (once)."""
        if not self.ended:
            self.ended = True
            self.updates.put(error)

    def stream(self, disconnected=None, poll_seconds=0.1):
        """The token lists after every step. disconnected: a callable polled while waiting; once it
        says True the job is cancelled and the stream ends (the client went away)."""
        while True:
            try:
                update = self.updates.get(timeout=poll_seconds if disconnected else None)
            except queue.Empty:
                update = ()  # nothing new: only check the client
            if disconnected is not None and disconnected():
                self.cancelled = True
                return
            if update == ():
                continue
            if update is None:
                return
            if isinstance(update, BaseException):
                raise update
            yield update

    __iter__ = stream


class Engine:
    def __init__(self, model, max_batch):
        self.model, self.max_batch = model, max_batch
        self.inbox = queue.Queue()           # jobs submitted by request threads
        self.waiting = collections.deque()   # jobs taken from the inbox, not yet in the batch
        self.rows = []  # (job, index in job, own length) per batch row
        self.cache, self.logits = None, None
        self.cancelled_sequences = 0  # freed before they finished (cancelled jobs' unfinished rows)
        self.device = model.lm_head.weight.device
        threading.Thread(target=self._loop, name="engine", daemon=True).start()

    def submit(self, prompts, params, eot_id):
        if len(prompts) > self.max_batch:
            raise ValueError(f"{len(prompts)} sequences do not fit a batch of {self.max_batch}")
        job = Job(prompts, params, eot_id, self.device)
        self.inbox.put(job)
        return job

    def active_sequences(self):
        return len(self.rows)

    def waiting_requests(self):
        return len(self.waiting) + self.inbox.qsize()

    # ------------------------------------------------------------------------------ the batch

    def _realign(self, parts):
        """A new cache with the given rows right-aligned; parts: [(cache, [(row, own length)])].
        The masked gap left of a shorter row is zeroed: attention multiplies it by zero weights,
        and uninitialised memory there could be NaN (0 x NaN = NaN, for the whole row)."""
        config = self.model.config
        count = sum(len(rows) for _, rows in parts)
        length = max(own for _, rows in parts for _, own in rows)
        new = KVCache.for_model(self.model, count)
        new.length = length
        i = 0
        for cache, rows in parts:
            for row, own in rows:
                for layer in range(config.n_layer):
                    for new_part, old_part in ((new.keys[layer], cache.keys[layer]),
                                               (new.values[layer], cache.values[layer])):
                        new_part[i, :, :length - own] = 0
                        new_part[i, :, length - own:length] = \
                            old_part[row, :, cache.length - own:cache.length]
                i += 1
        return new

    def _keep_rows(self, keep, trim=False):
        """Keep only the rows at the indices in keep (their pending logits too); trim: realign even
        if all stay, to drop the padding every row shares."""
        if not keep:
            self.rows, self.cache, self.logits = [], None, None
        elif len(keep) < len(self.rows) or trim:
            self.cache = self._realign([(self.cache, [(i, self.rows[i][2]) for i in keep])])
            self.logits = self.logits[keep]
            self.rows = [self.rows[i] for i in keep]

    def _drop_cancelled(self):
        """Free the rows of requests whose client went away, before anything else this step."""
        cancelled = {id(job): job for job, _, _ in self.rows if job.cancelled}
        if cancelled:
            self._keep_rows([i for i, (job, _, _) in enumerate(self.rows) if id(job) not in cancelled])
            for job in cancelled.values():
                self.cancelled_sequences += sum(not d for d in job.done)
                job.finish()

    def _prefill(self, job):
        """Run the job's prompts together (left-padded): (their cache, their last logits). With
        logprobs and echo, every prompt token after the first is scored from the same pass."""
        idx, pad = left_pad(job.prompts, self.device)
        cache = KVCache.for_model(self.model, len(job.prompts))
        logits = self.model(idx, cache=cache, pad_lengths=pad, last_only=not job.score_prompts)[0]
        if job.score_prompts:
            width = idx.shape[1]
            for i, prompt in enumerate(job.prompts):
                job.prompt_scores[i] = score_tokens(logits[i, width - len(prompt):width - 1],
                                                    prompt[1:], job.params["logprobs"])
        return cache, logits[:, -1]

    def _admit(self, job):
        """Prefill the job's prompts, then merge them into the batch."""
        cache, logits = self._prefill(job)
        new_rows = [(job, i, len(p)) for i, p in enumerate(job.prompts)]
        parts = [(cache, [(i, own) for i, (_, _, own) in enumerate(new_rows)])]
        if self.rows:
            parts.insert(0, (self.cache, [(i, own) for i, (_, _, own) in enumerate(self.rows)]))
            logits = torch.cat([self.logits, logits])
        self.cache, self.logits = self._realign(parts), logits
        self.rows += new_rows

    def _admit_waiting(self):
        """Move submitted jobs into the batch, first come first served, while their rows fit."""
        while True:
            try:  # wait for work only when there is nothing to decode
                self.waiting.append(self.inbox.get(block=not self.rows and not self.waiting))
            except queue.Empty:
                break
        while self.waiting and len(self.rows) + len(self.waiting[0].prompts) <= self.max_batch:
            job = self.waiting.popleft()
            try:
                if all(job.done) and not job.cancelled and job.score_prompts:
                    self._prefill(job)  # max_tokens 0: only the prompt's scores were asked for
                if job.cancelled or all(job.done):
                    job.finish()
                    continue
                self._admit(job)  # changes the batch only once the prefill succeeded
            except Exception as e:
                job.finish(RuntimeError(f"prefill failed: {type(e).__name__}: {e}"))

    def _sample_rows(self):
        """One token per row. Returns the indices of the rows that go on and their tokens."""
        keep, jobs = [], {}
        for i, (job, index, own) in enumerate(self.rows):
            jobs[id(job)] = job
            p = job.params
            try:
                token = int(sample(self.logits[i:i + 1], p["temperature"], p["top_k"], p["top_p"],
                                   job.generator)[0])
            except Exception as e:  # ends this sequence only
                job.errors[index] = f"sampling failed: {type(e).__name__}: {e}"
                job.done[index] = True
                continue
            if p.get("logprobs") is not None:  # the end-of-text token too, as vLLM and OpenAI
                job.token_scores[index] += score_tokens(self.logits[i:i + 1], [token], p["logprobs"])
            if token == job.eot_id:
                job.done[index] = True
                continue
            job.tokens[index].append(token)
            if len(job.tokens[index]) >= p["max_tokens"]:
                job.done[index] = True
                continue
            keep.append((i, token))
        for job in jobs.values():
            job.updates.put([list(t) for t in job.tokens])
            if all(job.done):
                job.finish()
        return [i for i, _ in keep], [token for _, token in keep]

    def _step(self):
        with torch.inference_mode():
            self._drop_cancelled()
            self._admit_waiting()
            if not self.rows:
                return
            keep, tokens = self._sample_rows()
            self._keep_rows(keep, trim=self.cache.length >= self.model.config.block_size)
            if not self.rows:
                return
            self.rows = [(job, index, own + 1) for job, index, own in self.rows]
            pads = torch.tensor([self.cache.length - (own - 1) for _, _, own in self.rows],
                                device=self.device)
            x = torch.tensor(tokens, device=self.device)[:, None]
            self.logits = self.model.decode_step(x, self.cache, pads)

    def _loop(self):
        while True:
            try:
                self._step()
            except Exception as e:  # the shared forward failed: fail the requests in flight
                for job in {id(r[0]): r[0] for r in self.rows}.values():
                    job.finish(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
                self.rows, self.cache, self.logits = [], None, None
