"""Beam search for a task's responses (evaluation/task_eval.py) against an exhaustive search, greedy
decoding and a plain one-prompt beam search without a cache."""

import itertools

import pytest
import torch

from model import GPT, GPTConfig
from evaluation import task_eval

EOT = 5


def tiny_model(vocab=6, seed=0, scale=1.0):
    """A random model; scale > 1 sharpens its weights so that earlier tokens change its choices
    (at the initial scale a beam whose cache held another beam's tokens would go unnoticed)."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab, block_size=24, n_layer=2, n_head=2, n_embd=16,
                       zero_init=False, value_embeddings=1)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def log_probs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)


def score_of(model, prompt, hypothesis, ended):
    """Length-normalised log probability of hypothesis after prompt (ended: then end-of-text)."""
    tokens = hypothesis + ([EOT] if ended else [])
    logp = log_probs(model, prompt + tokens[:-1])
    total = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens))
    return total / len(tokens)


def test_with_a_beam_per_sequence_it_finds_the_best_of_all_hypotheses():
    """With more beams than sequences, nothing is pruned: the answer is the best, by log probability
    per token, of every hypothesis ending in end-of-text within the limit or running to it."""
    model, new = tiny_model(), 3
    for prompt in ([1, 2, 3], [4], [0, 0, 1, 3, 2]):
        candidates = [(list(h), True) for n in range(new) for h in itertools.product(range(EOT), repeat=n)]
        candidates += [(list(h), False) for h in itertools.product(range(EOT), repeat=new)]
        best = max(candidates, key=lambda c: score_of(model, prompt, *c))
        found = task_eval.beam_search(model, [prompt], new, EOT, beam_size=6 ** new)
        assert found == [best[0]]


def test_one_beam_is_greedy_decoding():
    model = tiny_model(vocab=40, seed=3)
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10], [11, 12]]
    for eot in (5, 39):
        greedy = model.generate(prompts, 12, temperature=0, stop_tokens=(eot,))
        assert task_eval.beam_search(model, prompts, 12, eot, beam_size=1) == greedy


def plain_beam_search(model, prompt, max_new, eot, k):
    """One prompt, every step recomputed from the whole sequence, beams kept as Python lists."""
    beams, finished = [(0.0, [])], []
    for step in range(max_new):
        candidates = []
        for score, tokens in beams:
            logp = log_probs(model, prompt + tokens)[-1]
            candidates += [(score + logp[t].item(), tokens, t) for t in range(len(logp))]
        candidates.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, tokens, t) in enumerate(candidates[:2 * k]):
            if len(beams) == k:
                break
            if t == eot or step == max_new - 1:
                if rank < k:
                    finished.append((score / (step + 1), tokens + ([] if t == eot else [t])))
            else:
                beams.append((score, tokens + [t]))
        if len(finished) >= k:
            break
    return max(finished, key=lambda h: h[0])[1]


@pytest.mark.parametrize("beams", [2, 3, 4])
def test_batched_prompts_of_different_lengths_match_one_at_a_time(beams):
    """Left padding, the cache's rows following their beams and prompts that finish early change
    nothing against searching each prompt alone without a cache."""
    model = tiny_model(vocab=12, seed=0, scale=3.0)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11], [3, 3], [0, 1, 0, 1, 0]]
    eot = 0  # this model ends some of these prompts early and runs others to the limit
    found = task_eval.beam_search(model, prompts, 10, eot, beam_size=beams)
    assert found == [plain_beam_search(model, p, 10, eot, beams) for p in prompts]
    assert any(len(f) < 10 for f in found) and any(len(f) == 10 for f in found)


def test_a_prompt_too_long_keeps_its_last_tokens():
    model = tiny_model(vocab=12, seed=2, scale=3.0)
    long = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] * 2  # 22 tokens; 24 - 5 new leaves room for 19
    assert task_eval.beam_search(model, [long], 5, 0, beam_size=3) == \
        task_eval.beam_search(model, [long[-19:]], 5, 0, beam_size=3)
    with pytest.raises(ValueError, match="no room for a prompt"):
        task_eval.beam_search(model, [[1]], 24, 0, beam_size=2)
