"""Evaluation metrics, each implemented here from its definition (eval.py puts them together).

Language modelling: sliding-window negative log-likelihood (perplexity, bits per byte) and the
baselines a model should beat: uniform, unigram and interpolated Kneser-Ney n-grams.
Generated text: diversity, repetition, coherence (BLEU, chrF and ROUGE come from sacrebleu and
rouge-score in eval.py).
"""

import math
from collections import Counter

import numpy as np
import torch


# ---------------------------------------------------------------------------- likelihood of tokens

@torch.no_grad()
def sliding_window_nll(model, tokens, stride, batch_size=8, device="cpu"):
    """Per-target negative log-likelihood (nats) of a token stream under the model.

    Every token after the first is scored exactly once. Windows of block_size tokens start every
    `stride` tokens; the first window scores all its targets, each later one only the targets the
    previous windows did not reach, so each of those sees at least block_size - stride tokens of
    context. stride == block_size gives plain non-overlapping chunks. Returns a float64 array of
    len(tokens) - 1 values (the NLL of tokens[1:]).
    """
    block = model.config.block_size
    if not 0 < stride <= block:
        raise ValueError(f"stride={stride} must be in 1..block_size={block}")
    tokens = np.asarray(tokens, dtype=np.int64)
    n_targets = len(tokens) - 1
    nll = np.full(n_targets, np.nan)
    windows = []  # (begin, end, first target scored): inputs tokens[begin:end], targets [begin+1:end+1]
    scored_until, begin = 0, 0
    while scored_until < n_targets:
        end = min(begin + block, n_targets)
        windows.append((begin, end, scored_until))
        scored_until = end
        begin += stride
    model.eval()
    for i in range(0, len(windows), batch_size):
        group = windows[i:i + batch_size]
        lengths = {e - b for b, e, _ in group}
        for length in sorted(lengths):  # the last window may be shorter: batch equal lengths only
            same = [w for w in group if w[1] - w[0] == length]
            x = torch.from_numpy(np.stack([tokens[b:e] for b, e, _ in same])).to(device)
            y = torch.from_numpy(np.stack([tokens[b + 1:e + 1] for b, e, _ in same])).to(device)
            logits = model(x)[0]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up, fp64 kept
            token_nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, y[..., None])[..., 0]
            token_nll = token_nll.double().cpu().numpy()
            for (b, e, first), row in zip(same, token_nll):
                keep = slice(first - b, e - b)  # targets first..e-1, at window offsets first-b..
                nll[first:e] = row[keep]
    return nll


def perplexity(nll):
    """exp of the mean NLL (nats) over all scored tokens."""
    return float(math.exp(np.mean(nll)))


def scored_bytes(tokens, n_scored, tokenizer):
    """UTF-8 bytes of the scored tokens tokens[1:n_scored + 1] (special tokens count 0)."""
    lengths = np.array([len(t) for t in tokenizer.tokens] + [0] * len(tokenizer.special_tokens))
    return int(lengths[np.asarray(tokens[1:n_scored + 1])].sum())


def bits_per_byte(nll, n_bytes):
    """Total NLL (nats) in bits, over the UTF-8 bytes of the text it scored (n_bytes; for tokens,
    scored_bytes): comparable across tokenizers, and with compressors."""
    return float(np.sum(nll) / math.log(2) / max(1, n_bytes))


# ---------------------------------------------------------------------------------------- baselines

def uniform_nll(n_targets, vocab_size):
    """Every token has probability 1/V: NLL log V, perplexity V."""
    return np.full(n_targets, math.log(vocab_size))


def unigram_nll(train, targets, vocab_size):
    """Unigram model of train with add-one smoothing, scored on targets. train may be a memmap of
    any size: it is counted in chunks, never copied whole."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for start in range(0, len(train), 1 << 24):
        counts += np.bincount(train[start:start + (1 << 24)], minlength=vocab_size)
    return -np.log(counts / counts.sum())[np.asarray(targets)]


def _ngram_keys(tokens, n, vocab_size):
    tokens = np.asarray(tokens, dtype=np.int64)
    key = np.zeros(len(tokens) - n + 1, dtype=np.int64)
    for i in range(n):
        key = key * vocab_size + tokens[i:len(tokens) - n + 1 + i]
    return key


def _lookup(keys, values, query):
    """values[i] where keys[i] == query, else 0 (keys sorted and unique)."""
    if len(keys) == 0:
        return np.zeros(len(query), dtype=values.dtype)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


class KneserNey:
    """Interpolated Kneser-Ney n-gram model (Chen & Goodman 1998) with one absolute discount D.

    The highest order uses raw counts; each lower order uses continuation counts (the number of
    distinct tokens seen before an n-gram), and the lowest order is interpolated with the uniform
    distribution so unseen tokens keep a small probability:
        P_k(w | h) = max(c_k(h w) - D, 0) / c_k(h) + D * N1+(h .) / c_k(h) * P_{k-1}(w | h')
    where h' drops the oldest token of h, and a history never seen falls back to P_{k-1}.
    N-grams are packed into int64 keys, so order * log2(vocab_size) must stay below 63.
    """

    def __init__(self, train, vocab_size, order=3, discount=0.75):
        if order < 1 or order * math.log2(vocab_size) >= 63:
            raise ValueError(f"order={order} with vocab_size={vocab_size} does not fit int64 keys")
        self.v, self.order, self.d = vocab_size, order, discount
        self.levels = {}
        keys, counts = np.unique(_ngram_keys(train, order, vocab_size), return_counts=True)
        self.levels[order] = (keys, counts)
        for k in range(order - 1, 0, -1):  # continuation counts from the unique (k+1)-grams
            keys, counts = np.unique(self.levels[k + 1][0] % vocab_size ** k, return_counts=True)
            self.levels[k] = (keys, counts)
        self.history = {}
        for k in range(2, order + 1):
            keys, counts = self.levels[k]
            hist, start = np.unique(keys // vocab_size, return_index=True)
            totals = np.add.reduceat(counts, start)
            types = np.diff(np.append(start, len(keys)))
            self.history[k] = (hist, totals, types)

    def nll(self, tokens):
        """NLL of tokens[1:], each token conditioned on up to order-1 tokens before it."""
        tokens = np.asarray(tokens, dtype=np.int64)
        targets = tokens[1:]
        keys, counts = self.levels[1]
        total = counts.sum()
        p = (np.maximum(_lookup(keys, counts, targets) - self.d, 0) / total
             + self.d * len(keys) / total / self.v)
        for k in range(2, self.order + 1):
            # targets at index >= k-1 of tokens have a full history of k-1 tokens
            hist = _ngram_keys(tokens[:-1], k - 1, self.v)  # history of targets[k-2:]
            positions = np.arange(k - 2, len(targets))
            full = hist * self.v + targets[positions]
            keys, counts = self.levels[k]
            c = _lookup(keys, counts, full).astype(np.float64)
            h_keys, h_totals, h_types = self.history[k]
            s = _lookup(h_keys, h_totals, hist).astype(np.float64)
            n = _lookup(h_keys, h_types, hist).astype(np.float64)
            lower = p[positions]
            safe = np.maximum(s, 1)
            p[positions] = np.where(s > 0, np.maximum(c - self.d, 0) / safe + self.d * n / safe * lower,
                                    lower)
        return -np.log(p)


# ------------------------------------------------------------------------------- generated text

def distinct_n(texts, n):
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over all texts.
    Range 0..1; higher means more varied wording; 0 when there are no n-grams."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts, n=4):
    """Share of word n-grams in each text that repeat an earlier n-gram of the same text, averaged
    over texts. Range 0..1; 0 means no n-gram repeats (degenerate loops push it towards 1)."""
    rates = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def self_bleu(texts):
    """Self-BLEU (Zhu et al. 2018): mean sentence BLEU of each text against all the others.
    Range 0..100; higher means the texts resemble each other (less diverse)."""
    import sacrebleu
    if len(texts) < 2:
        return 0.0
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    return float(np.mean(scores))


def coherence(prompts, continuations):
    """Lexical coherence: cosine similarity between the word-count vectors of each prompt and its
    continuation, averaged. Range 0..1; 0 means no shared words, 1 identical word distributions.
    It measures staying on topic, not fluency; compare with the same figure for the references."""
    sims = []
    for a, b in zip(prompts, continuations):
        ca, cb = Counter(a.lower().split()), Counter(b.lower().split())
        dot = sum(ca[w] * cb[w] for w in ca)
        norm = math.sqrt(sum(v * v for v in ca.values())) * math.sqrt(sum(v * v for v in cb.values()))
        sims.append(dot / norm if norm else 0.0)
    return float(np.mean(sims)) if sims else 0.0


def one_line(text):
    """text with its line breaks as spaces. references.txt and hypotheses.txt hold one case per
    line, as sacrebleu's and rouge-score's command lines read them, and eval.py scores these same
    one-line texts, so those commands give its numbers exactly."""
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
