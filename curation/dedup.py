"""Exact and near-duplicate detection for curate.py: MinHash signatures of word shingles, computed
for many documents at once with numpy, and an LSH index (datasketch's) over every kept document.

A document's shingles are its runs of `shingle_words` consecutive words (lower-cased, split on
whitespace; a document with fewer words is one shingle). Each shingle is hashed as the UTF-8 bytes
of its words joined by single spaces:

    h(shingle) = (sum_j byte_j * BASE^(len-1-j) mod 2^64) >> 32        (a polynomial hash, top bits)

and the signature is datasketch's "affine32" MinHash of those 32-bit hashes: a MurmurHash3
finaliser, then num_perm maps h -> a_k * h + b_k mod 2^32, and the minimum of each over the shingles.
tests/test_dedup.py checks every signature against datasketch.MinHash fed the same hash function.

Why not datasketch's MinHash.update_batch: it hashes each shingle string with SHA-1 in a Python
call, which cost more than everything else in near-dedup together (BENCHMARKS.md). Here the text of
a whole batch of documents is one byte array, and every shingle's polynomial hash is read off prefix
sums of that array:

    S[i] = sum_{j<i} byte_j * BASE^-j,   h(bytes l..r-1) = BASE^(r-1) * (S[r] - S[l])   (mod 2^64)

(BASE is odd, so it has an inverse mod 2^64, and numpy's uint64 arithmetic wraps mod 2^64).
"""

import functools
import hashlib

import numpy as np

BASE = 0x9E3779B97F4A7C15  # odd: invertible mod 2^64
BASE_INVERSE = pow(BASE, -1, 2 ** 64)
CHUNK_BYTES = 1 << 22  # documents are hashed in groups of about this many bytes (bounds memory)
_powers = {}  # (base, length) -> uint64 powers base^0 .. base^(length-1), grown as needed


def normalise(text):
    """Lower-cased words joined by single spaces: what shingles and the exact-duplicate key read."""
    return " ".join(text.lower().split())


def exact_key(normalised):
    return hashlib.sha1(normalised.encode("utf-8")).digest()


def _power_table(base, length):
    """base^0 .. base^(length-1) mod 2^64, cached and grown by doubling."""
    table = _powers.get(base)
    if table is None or len(table) < length:
        size = max(length, 2 * len(table) if table is not None else 1 << 16)
        table = np.empty(size, dtype=np.uint64)
        table[0] = 1
        table[1:] = np.full(size - 1, base, dtype=np.uint64)
        np.cumprod(table, out=table)  # wraps mod 2^64
        _powers[base] = table
    return table[:length]


@functools.lru_cache(maxsize=None)
def permutations(num_perm, seed=1):
    """datasketch's affine32 permutation parameters (a, b) for this seed, as uint32 arrays."""
    # datasketch is imported where it is used: the GPU machine lacks it, and its benchmarks import
    # this module without deduplicating anything
    from datasketch import MinHash
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def shingle_hashes(normalised_texts, shingle_words):
    """(32-bit hash of every shingle of every text, index of each text's first shingle). The texts
    must not be empty: then every space or newline in the joined text sits between two words."""
    data = np.frombuffer("\n".join(normalised_texts).encode("utf-8"), dtype=np.uint8)
    separators = np.flatnonzero((data == 32) | (data == 10))
    starts = np.concatenate(([0], separators + 1))            # word i is bytes starts[i]..ends[i]-1
    ends = np.concatenate((separators, [len(data)]))
    last_word = np.concatenate((np.flatnonzero(data[separators] == 10), [len(starts) - 1]))
    first_word = np.concatenate(([0], last_word[:-1] + 1))
    words = last_word - first_word + 1
    per_text = np.maximum(1, words - shingle_words + 1)  # fewer words: the whole text, one shingle
    first_shingle = np.cumsum(per_text) - per_text
    text = np.repeat(np.arange(len(normalised_texts)), per_text)
    i = np.arange(len(text)) - first_shingle[text]
    left = starts[first_word[text] + i]
    right = ends[first_word[text] + np.minimum(i + shingle_words, words[text]) - 1]
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.multiply(data, _power_table(BASE_INVERSE, len(data)), out=prefix[1:])
    np.cumsum(prefix, out=prefix)
    hashes = _power_table(BASE, len(data))[right - 1] * (prefix[right] - prefix[left])
    return (hashes >> np.uint64(32)).astype(np.uint32), first_shingle


def fmix32(h):
    """MurmurHash3's 32-bit finaliser (what datasketch's affine32 applies to each input hash)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _signature_group(normalised_texts, shingle_words, a, b):
    out = np.empty((len(normalised_texts), len(a)), dtype=np.uint32)
    out[:] = b  # an empty text's one shingle is empty: hash 0, fmix32(0) = 0, so a_k * 0 + b_k
    filled = [i for i, text in enumerate(normalised_texts) if text]
    if not filled:
        return out
    hashes, first_shingle = shingle_hashes([normalised_texts[i] for i in filled], shingle_words)
    mixed, permuted = fmix32(hashes), np.empty(len(hashes), dtype=np.uint32)
    minima = np.empty((len(a), len(filled)), dtype=np.uint32)
    for k in range(len(a)):  # one permutation at a time, in place: stays in cache, no allocations
        np.multiply(mixed, a[k], out=permuted)
        permuted += b[k]
        np.minimum.reduceat(permuted, first_shingle, out=minima[k])
    out[filled] = minima.T
    return out


def signatures(normalised_texts, num_perm, shingle_words, seed=1):
    """MinHash signatures, one uint32 row of num_perm values per text, in groups of ~CHUNK_BYTES."""
    a, b = permutations(num_perm, seed)
    rows, group, size = [], [], 0
    for text in normalised_texts:
        group.append(text)
        size += len(text) + 1
        if size >= CHUNK_BYTES:
            rows.append(_signature_group(group, shingle_words, a, b))
            group, size = [], 0
    if group:
        rows.append(_signature_group(group, shingle_words, a, b))
    return np.concatenate(rows) if rows else np.zeros((0, num_perm), dtype=np.uint32)


@functools.lru_cache(maxsize=None)
def lsh_shape(threshold, num_perm):
    """(bands, rows) for LSH banding at this Jaccard threshold: datasketch's MinHashLSH choice, which
    weighs false positives and false negatives equally."""
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def band_keys(signature, bands, rows):
    """The signature's first bands * rows values cut into `bands` byte strings of `rows` values."""
    data, size = signature[:bands * rows].tobytes(), rows * signature.itemsize
    return [data[i:i + size] for i in range(0, len(data), size)]


def dedup_keys(texts, cfg):
    """For each text: {"exact_key": SHA-1 of its normalised text, "bands": its LSH band keys}."""
    normalised = [normalise(text) for text in texts]
    rows = signatures(normalised, cfg["minhash_num_perm"], cfg["minhash_shingle_words"])
    shape = lsh_shape(cfg["minhash_threshold"], cfg["minhash_num_perm"])
    return [{"exact_key": exact_key(n), "bands": band_keys(row, *shape)}
            for n, row in zip(normalised, rows)]


class Deduplicator:
    """Exact (hash of normalised text) and near-duplicate checks against every document kept so far,
    across all sources. Near-duplicates by LSH banding: the signature is cut into bands (lsh_shape),
    and a document whose band equals a kept document's same band is a near-duplicate of it. The index
    is one dict per band (band bytes -> keys of kept documents): a few dict operations a document."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.exact_seen = set()
        self.tables = [{} for _ in range(lsh_shape(cfg["minhash_threshold"], cfg["minhash_num_perm"])[0])]

    def check(self, key, result):
        """(rule, reason) if the processed document duplicates a kept one; else remember it, None."""
        if self.cfg["dedup_exact"]:
            if result["exact_key"] in self.exact_seen:
                return "exact_duplicate", "same normalised text as an earlier document"
            self.exact_seen.add(result["exact_key"])
        similar = [k for table, band in zip(self.tables, result["bands"]) for k in table.get(band, ())]
        if similar:
            return "near_duplicate", f"Jaccard >= ~{self.cfg['minhash_threshold']} with {min(similar)}"
        for table, band in zip(self.tables, result["bands"]):
            table.setdefault(band, []).append(key)
        return None
