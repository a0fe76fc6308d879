"""Byte-level BPE: a trainer you can read, and fast encoding through tiktoken.

Training (``train_bpe``) works like GPT-2/GPT-4 tokenizers: the text is pre-split with a regex into
chunks (words, numbers, punctuation runs, whitespace), each chunk becomes its UTF-8 bytes, and the
most frequent adjacent pair of tokens is merged into a new token, again and again, until the vocabulary
is full. Merges never cross chunk boundaries. Ties between equally frequent pairs go to the pair with
the smaller token ids, so training is deterministic.

Token ids 0..255 are the single bytes; merged tokens follow in merge order; special tokens
(``<|endoftext|>``) come last. Encoding uses a ``tiktoken.Encoding`` built from these ranks, so any
string encodes and decodes back exactly (strings containing lone surrogates, which UTF-8 cannot hold,
come back with U+FFFD in their place).
"""

import base64
import heapq
import json
from collections import Counter
from multiprocessing import Pool

import regex
import tiktoken

from core import atomic

# GPT-4's (cl100k) pre-split pattern: contractions, letter runs with one leading non-letter, numbers of
# at most 3 digits, punctuation runs, newlines, and whitespace (kept in front of the next word).
GPT4_SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                      r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"
FORMAT = "bpe-bytes-v1"


# ----------------------------------------------------------------------------------------- training

def count_chunks(texts, pattern=GPT4_SPLIT_PATTERN):
    """Counter of pre-split chunks (as UTF-8 bytes) over an iterable of strings."""
    compiled = regex.compile(pattern)
    counts = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return Counter({chunk.encode("utf-8", errors="replace"): n for chunk, n in counts.items()})


def _count_chunks_job(args):
    return count_chunks(*args)


def count_chunks_parallel(texts, pattern=GPT4_SPLIT_PATTERN, workers=1, batch_chars=1 << 20):
    """count_chunks over many texts, in batches of about batch_chars on `workers` processes."""
    def batches():
        batch, size = [], 0
        for text in texts:
            batch.append(text)
            size += len(text)
            if size >= batch_chars:
                yield (batch, pattern)
                batch, size = [], 0
        if batch:
            yield (batch, pattern)

    total = Counter()
    if workers <= 1:
        for job in batches():
            total.update(_count_chunks_job(job))
        return total
    with Pool(workers) as pool:
        for counts in pool.imap(_count_chunks_job, batches()):
            total.update(counts)
        # let the workers finish and exit; leaving the block would otherwise stop them with SIGTERM
        pool.close()
        pool.join()
    return total


def _merge_word(word, a, b, new_id):
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(chunk_counts, vocab_size, n_special=1, progress=None):
    """Learn merges from {chunk bytes: count}; returns the token byte strings in id order.

    The result has at most vocab_size - n_special tokens (fewer when the text runs out of pairs).
    Pair counts are kept up to date incrementally: a merge only revisits the chunks that contain the
    merged pair (``where``), and a max-heap with lazy invalidation finds the next best pair.
    """
    if vocab_size - n_special < 256:
        raise ValueError(f"vocab_size={vocab_size} must be at least 256 + {n_special} special tokens")
    tokens = [bytes([i]) for i in range(256)]
    token_ids = {t: i for i, t in enumerate(tokens)}
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())

    pair_counts = Counter()
    where = {}  # pair -> indices of words that contain (or once contained) it
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where.setdefault(pair, set()).add(w)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    n_merges = vocab_size - n_special - 256
    while len(tokens) < vocab_size - n_special and heap:
        neg, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current <= 0:
            continue
        if current != -neg:  # stale entry: the count fell since it was pushed
            heapq.heappush(heap, (-current, a, b))
            continue
        merged = tokens[a] + tokens[b]
        new_id = token_ids.get(merged)
        if new_id is None:  # guard: tiktoken needs unique byte strings, so never add one twice
            new_id = len(tokens)
            tokens.append(merged)
            token_ids[merged] = new_id
        increased = set()
        for w in where.pop((a, b)):
            word = words[w]
            new_word = _merge_word(word, a, b, new_id)
            if len(new_word) == len(word):
                continue  # the pair left this word in an earlier merge
            f = freqs[w]
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= f
            for pair in zip(new_word, new_word[1:]):
                pair_counts[pair] += f
                if new_id in pair:
                    increased.add(pair)
                    where.setdefault(pair, set()).add(w)
            words[w] = new_word
        del pair_counts[(a, b)]
        for pair in increased:
            heapq.heappush(heap, (-pair_counts[pair], *pair))
        if progress is not None:
            progress(len(tokens) - 256, n_merges)
    return tokens


def train_bpe_reference(chunk_counts, vocab_size, n_special=1):
    """The same algorithm done naively (recount every pair after every merge), for tests."""
    tokens = [bytes([i]) for i in range(256)]
    words = {bytes(c): (list(c), f) for c, f in chunk_counts.items()}
    while len(tokens) < vocab_size - n_special:
        counts = Counter()
        for word, f in words.values():
            for pair in zip(word, word[1:]):
                counts[pair] += f
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        merged = tokens[a] + tokens[b]
        if merged in tokens:
            new_id = tokens.index(merged)
        else:
            new_id = len(tokens)
            tokens.append(merged)
        words = {k: (_merge_word(word, a, b, new_id), f) for k, (word, f) in words.items()}
    return tokens


# ---------------------------------------------------------------------------------------- the tokenizer

class Tokenizer:
    """Encodes and decodes with tiktoken; saves to and loads from a small JSON file or dict."""

    def __init__(self, tokens, pattern=GPT4_SPLIT_PATTERN, special_tokens=(EOT,)):
        self.tokens = list(tokens)
        self.pattern = pattern
        self.special_tokens = {s: len(self.tokens) + i for i, s in enumerate(special_tokens)}
        self.vocab_size = len(self.tokens) + len(self.special_tokens)
        self.eot_id = self.special_tokens.get(EOT)
        self._encoding = tiktoken.Encoding(
            name="project-bpe", pat_str=pattern,
            mergeable_ranks={t: i for i, t in enumerate(self.tokens)},
            special_tokens=self.special_tokens)

    def encode(self, text):
        """Token ids of text; special-token strings inside text are encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_with_special_tokens(self, text):
        """Token ids of text, where each special-token string (<|endoftext|>) becomes its id."""
        return self._encoding.encode(text, allowed_special="all")

    def encode_batch(self, texts, workers=1):
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=max(1, workers))

    def decode_bytes(self, ids):
        return self._encoding.decode_bytes(ids)

    def decode(self, ids):
        """Text of ids; a sequence cut inside a UTF-8 character shows U+FFFD there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, i):
        """A readable form of one token, for reports."""
        if i in self.special_tokens.values():
            return next(s for s, j in self.special_tokens.items() if j == i)
        return self.tokens[i].decode("utf-8", errors="backslashreplace")

    def to_dict(self):
        return {"format": FORMAT, "pattern": self.pattern,
                "special_tokens": list(self.special_tokens),
                "tokens": [base64.b64encode(t).decode("ascii") for t in self.tokens]}

    @classmethod
    def from_dict(cls, d, origin="tokenizer"):
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{origin}: not a tokenizer of format {FORMAT!r} "
                             f"(got {d.get('format') if isinstance(d, dict) else type(d).__name__!r})")
        try:
            tokens = [base64.b64decode(t, validate=True) for t in d["tokens"]]
            return cls(tokens, d["pattern"], d["special_tokens"])
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{origin}: malformed tokenizer ({type(e).__name__}: {e})") from None

    def save(self, path):
        atomic.write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except OSError as e:
            raise ValueError(f"cannot read tokenizer {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, origin=str(path))
