"""eval.py on a fine-tuning task's folder (prepare.py with `task`): every test pair's response
generated (greedy, or by beam search) from core/tasks.py's template and scored with sacrebleu's corpus BLEU and chrF
per direction (or per task, when the pairs have none), beside two baselines on the same pairs:
copying the source, and retrieval, the response of the training pair whose source shares the most
words with the test pair's (a model that only recalls training pairs scores about that)."""

import json
import re

import numpy as np
import sacrebleu
import torch

from core import tasks
from model import KVCache, left_pad
from core import atomic, metrics

WORD = re.compile(r"\w+")


def read_pairs(path):
    """The pairs of a task's train.jsonl or test.jsonl, as dicts (prompt, response, and source and
    direction where the task has them)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def source_of(pair):
    return pair.get("source", pair["prompt"])


def generate_responses(model, tokenizer, prompts, batch_size, beam_size=1, length_penalty=1.0):
    """The model's response to each prompt, rendered in the template, up to its end-of-text token:
    greedy, or the best of beam_size beams. A batch answers in at most as many new tokens as the
    context leaves after its longest prompt (and twice its length plus 8), so prompts are batched
    in order of length: each one's room to answer is then about its own, whatever the others."""
    encoded = [tokenizer.encode(tasks.render_prompt(p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    responses = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [encoded[i] for i in rows]
        longest = max(len(ids) for ids in batch)
        new = max(1, min(model.config.block_size - longest, 2 * longest + 8))
        if beam_size > 1:
            outputs = beam_search(model, batch, new, tokenizer.eot_id, beam_size, length_penalty)
        else:
            outputs = model.generate(batch, new, temperature=0, stop_tokens=(tokenizer.eot_id,))
        for i, ids in zip(rows, outputs):
            responses[i] = tokenizer.decode(ids)
    return responses


def best_continuations(step_scores, parents, finished, step, last, eot_id, length_penalty):
    """One step of beam search for one prompt. step_scores: the 2k best (score, parent beam, token)
    over all its beams and the vocabulary, best first. A candidate ending in end-of-text (or any
    candidate on the last step) among the k best is a finished hypothesis, scored by its log
    probability / length ** length_penalty (GNMT's normalisation: at 0 the shortest tends to win,
    above 1 longer ones gain); the k best others live on.
    Returns [(score, parent beam, token)] of the live beams, k of them or fewer."""
    k = len(step_scores) // 2
    live = []
    for rank, (score, beam, token) in enumerate(step_scores):
        if score == float("-inf") or len(live) == k:
            break
        if token == eot_id or last:
            if rank < k:
                hypothesis = parents[beam] + ([] if token == eot_id else [token])
                finished.append((score / (step + 1) ** length_penalty, hypothesis))
        else:
            live.append((score, beam, token))
    return live


@torch.inference_mode()
def beam_search(model, prompts, max_new_tokens, eot_id, beam_size=4, length_penalty=1.0):
    """The new tokens of each prompt's best hypothesis by beam search (length-normalised log
    probability; a prompt stops once beam_size hypotheses have ended), all prompts' beams decoded
    together through one KV cache whose rows follow their beams. A prompt too long to leave room
    for max_new_tokens keeps its last tokens, as generation's sliding window would."""
    model.eval()
    device, k, room = model.lm_head.weight.device, beam_size, model.config.block_size - max_new_tokens
    if room < 1:
        raise ValueError(f"{max_new_tokens} new tokens leave no room for a prompt in "
                         f"block_size={model.config.block_size}")
    rows = torch.arange(len(prompts), device=device).repeat_interleave(k)
    idx, pad = left_pad([p[-room:] for p in prompts], device)
    idx, pad = idx[rows], (pad[rows] if bool(pad.any()) else None)
    cache = KVCache.for_model(model, len(rows))
    logits = model(idx, cache=cache, pad_lengths=pad, last_only=True)[0][:, -1]
    scores = torch.full((len(prompts), k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # every beam starts as the prompt: expand only the first
    sequences = [[] for _ in rows]
    finished = [[] for _ in prompts]
    for step in range(max_new_tokens):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        total = (scores.reshape(-1, 1) + log_probs).reshape(len(prompts), k * vocab)
        top_scores, top_ids = total.topk(2 * k, dim=1)
        parent_rows, tokens, new_scores = [], [], []
        for p, (row_scores, row_ids) in enumerate(zip(top_scores.tolist(), top_ids.tolist())):
            live = []
            if len(finished[p]) < k:
                candidates = [(s, i // vocab, i % vocab) for s, i in zip(row_scores, row_ids)]
                live = best_continuations(candidates, sequences[p * k:(p + 1) * k],
                                          finished[p], step, step == max_new_tokens - 1, eot_id,
                                          length_penalty)
            live += [(float("-inf"), 0, eot_id)] * (k - len(live))  # finished: idle rows
            parent_rows += [p * k + beam for _, beam, _ in live]
            tokens += [token for _, _, token in live]
            new_scores += [score for score, _, _ in live]
        if all(len(f) >= k for f in finished) or step == max_new_tokens - 1:
            break
        sequences = [sequences[r] + [t] for r, t in zip(parent_rows, tokens)]
        scores = torch.tensor(new_scores, device=device).reshape(len(prompts), k)
        cache.select(torch.tensor(parent_rows, device=device))
        logits = model.decode_step(torch.tensor(tokens, device=device)[:, None], cache, pad)
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


def retrieve(train_sources, train_responses, sources, chunk=256):
    """For each source, the response of the training pair whose source has the highest word
    overlap with it (Dice coefficient of the two sets of lower-case words); ties: the first."""
    if not train_sources:
        return [""] * len(sources)
    vocab = {}
    rows = [sorted({vocab.setdefault(w, len(vocab)) for w in WORD.findall(s.lower())})
            for s in train_sources]
    index = torch.tensor([[r, w] for r, words in enumerate(rows) for w in words],
                         dtype=torch.long).reshape(-1, 2)
    train = torch.sparse_coo_tensor(index.t(), torch.ones(len(index)), (len(rows), len(vocab)),
                                    check_invariants=True)
    train_sizes = torch.tensor([len(words) for words in rows], dtype=torch.float32)
    found = []
    for start in range(0, len(sources), chunk):
        queries = [{vocab[w] for w in WORD.findall(s.lower()) if w in vocab}
                   for s in sources[start:start + chunk]]
        dense = torch.zeros(len(vocab), len(queries))
        for j, words in enumerate(queries):
            dense[list(words), j] = 1.0
        overlap = torch.sparse.mm(train, dense)  # (train pairs, queries)
        sizes = torch.tensor([len(set(WORD.findall(s.lower()))) for s in sources[start:start + chunk]],
                             dtype=torch.float32)
        dice = 2 * overlap / (train_sizes[:, None] + sizes[None, :]).clamp(min=1)
        found += [train_responses[i] for i in dice.argmax(dim=0).tolist()]
    return found


# sacrebleu's bootstrap: the pairs resampled with replacement this many times from its seed, so the
# same hypotheses give the same interval; the 95% interval runs from the 2.5th to the 97.5th percentile
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 1000, 12345


def bootstrap_ci95(metric, hypotheses, references):
    """Half the width of the 95% bootstrap interval of metric's corpus score: sacrebleu's own
    procedure (its resamples of the pairs' statistics, its percentiles), done here because
    sacrebleu 2.6's fails on small sets (its mean mixes float and float32 scores); the metric's
    signature then records the resampling as sacrebleu's would."""
    stats = np.array(metric._extract_corpus_statistics(hypotheses, [references]), dtype="float32")
    rows = np.random.default_rng(BOOTSTRAP_SEED).choice(len(stats), size=(BOOTSTRAP_RESAMPLES, len(stats)))
    scores = sorted(float(metric._compute_score_from_stats(s.sum(0)).score) for s in stats[rows])
    metric.n_bootstrap, metric.seed = BOOTSTRAP_RESAMPLES, str(BOOTSTRAP_SEED)
    low = len(scores) // 40
    return 0.5 * (scores[len(scores) - low - 1] - scores[low])


def corpus_scores(hypotheses, references):
    """Corpus BLEU and chrF with their signatures, and each one's 95% bootstrap interval (the
    score is the corpus score itself, not the resamples' mean)."""
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    result = {}
    for name, metric in (("bleu", bleu), ("chrf", chrf)):
        result[name] = metric.corpus_score(hypotheses, [references]).score
        result[f"{name}_ci95"] = bootstrap_ci95(metric, hypotheses, references)
    return {**result, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def evaluate_task(model, tokenizer, folder, pairs_file, out_dir, batch_size, beam_size=1,
                  length_penalty=1.0):
    """{group: {"pairs", "model", "copy", "retrieval"}} for pairs_file's pairs (the folder's
    test.jsonl or val.jsonl), each system's
    BLEU and chrF; the references and every system's hypotheses are written to out_dir, one pair
    per line, for `sacrebleu references.txt -i hypotheses.txt -m bleu chrf`."""
    train, test = read_pairs(folder / "train.jsonl"), read_pairs(pairs_file)
    results = {}
    for group in sorted({p.get("direction", "all") for p in test}):
        pairs = [p for p in test if p.get("direction", "all") == group]
        known = [p for p in train if p.get("direction", "all") == group]
        references = [metrics.one_line(p["response"]) for p in pairs]
        systems = {
            "model": generate_responses(model, tokenizer, [p["prompt"] for p in pairs], batch_size,
                                        beam_size, length_penalty),
            "copy": [source_of(p) for p in pairs],
            "retrieval": retrieve([source_of(p) for p in known], [p["response"] for p in known],
                                  [source_of(p) for p in pairs])}
        atomic.write_text(out_dir / f"{group}.references.txt", "".join(r + "\n" for r in references))
        results[group] = {"pairs": len(pairs)}
        for name, hypotheses in systems.items():
            hypotheses = [metrics.one_line(h) for h in hypotheses]
            atomic.write_text(out_dir / f"{group}.{name}.txt", "".join(h + "\n" for h in hypotheses))
            results[group][name] = corpus_scores(hypotheses, references)
        results[group]["samples"] = [{"prompt": p["prompt"], "reference": p["response"],
                                      "model": m} for p, m in list(zip(pairs, systems["model"]))[:3]]
    return results
