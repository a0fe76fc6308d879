"""dedup.py against datasketch: the batched signatures equal datasketch.MinHash fed the same shingle
hash, and the banded index drops exactly what datasketch.MinHashLSH finds."""
import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from curation import dedup

CFG = dict(minhash_threshold=0.8, minhash_num_perm=128, minhash_shingle_words=5, dedup_exact=True)


def reference_hash(data):
    """The shingle hash written out: polynomial in BASE over the bytes, mod 2^64, top 32 bits."""
    h = 0
    for byte in data:
        h = (h * dedup.BASE + byte) % 2 ** 64
    return h >> 32


def reference_shingles(text, n):
    words = text.lower().split()
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def reference_signature(text, num_perm, n):
    minhash = MinHash(num_perm=num_perm, seed=1, scheme="affine32", hashfunc=reference_hash)
    minhash.update_batch([s.encode("utf-8") for s in reference_shingles(text, n)])
    return minhash.hashvalues


def random_texts(rng, count):
    vocabulary = ["the", "river", "Crossed", "old", "town", "é", "naïve", "漢字", "x", "def", "f(x):",
                  "return", "1+1", "--", "a.b.c"]
    texts = ["", "   \n ", "one", "two words", "a b c d e", "A  B\tC\nD E F"]
    for _ in range(count):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 60))]
        texts.append("".join(w + rng.choice([" ", "  ", "\n", "\t"]) for w in words))
    return texts


@pytest.mark.parametrize("num_perm,shingle_words", [(128, 5), (16, 1), (64, 3)])
def test_signatures_equal_datasketch_with_the_same_hash(num_perm, shingle_words, monkeypatch):
    texts = random_texts(random.Random(num_perm), 120)
    monkeypatch.setattr(dedup, "CHUNK_BYTES", 500)  # many groups: every group boundary is crossed
    ours = dedup.signatures([dedup.normalise(t) for t in texts], num_perm, shingle_words)
    assert ours.shape == (len(texts), num_perm) and ours.dtype == np.uint32
    for text, row in zip(texts, ours):
        assert np.array_equal(row, reference_signature(text, num_perm, shingle_words)), repr(text)


def test_signature_does_not_depend_on_its_neighbours():
    texts = random_texts(random.Random(7), 40)
    normalised = [dedup.normalise(t) for t in texts]
    together = dedup.signatures(normalised, 128, 5)
    alone = np.concatenate([dedup.signatures([t], 128, 5) for t in normalised])
    assert np.array_equal(together, alone)


def test_estimated_jaccard_follows_the_true_one():
    rng = random.Random(3)
    base = [f"w{rng.randrange(5000)}" for _ in range(400)]
    for changed in (0, 10, 40, 120, 400):
        other = list(base)
        for i in rng.sample(range(400), changed):
            other[i] = f"new{i}"
        a, b = reference_shingles(" ".join(base), 5), reference_shingles(" ".join(other), 5)
        true = len(a & b) / len(a | b)
        sig = dedup.signatures([" ".join(base), " ".join(other)], 128, 5)
        assert abs((sig[0] == sig[1]).mean() - true) < 0.12, (changed, true)


def documents(rng, count, words=160):
    return [" ".join(f"w{rng.randrange(20000)}" for _ in range(words)) for _ in range(count)]


def test_near_and_exact_duplicates_are_dropped_and_distinct_documents_kept():
    rng = random.Random(11)
    docs = documents(rng, 50)
    edited = []
    for doc in docs[:10]:  # one word changed: Jaccard 152/160, where LSH misses 1 in ~500
        words = doc.split()
        words[90] = "edited"
        edited.append(" ".join(words))
    exact = ["  " + docs[20].upper().replace(" ", "\n ")]
    keys = dedup.dedup_keys(docs + edited + exact, CFG)
    deduplicator = dedup.Deduplicator(CFG)
    verdicts = [deduplicator.check(f"d{i}", k) for i, k in enumerate(keys)]
    assert verdicts[:50] == [None] * 50
    assert [v[0] for v in verdicts[50:60]] == ["near_duplicate"] * 10
    assert verdicts[51][1] == "Jaccard >= ~0.8 with d1"
    assert verdicts[60][0] == "exact_duplicate"
    without_exact = dedup.Deduplicator({**CFG, "dedup_exact": False})
    assert without_exact.check("a", keys[20]) is None
    assert without_exact.check("b", keys[60])[0] == "near_duplicate"


def test_banded_index_drops_what_datasketch_minhashlsh_drops():
    """Same signatures through dedup.Deduplicator and through datasketch's MinHashLSH (query, insert
    when nothing is found): the same documents dropped, with the same candidates."""
    rng = random.Random(5)
    docs = documents(rng, 60, words=200)
    for i in range(60):  # copies with 1..20 of 200 words changed: Jaccard from 0.98 to below 0.6
        words = docs[i % 30].split()
        for j in rng.sample(range(200), 1 + i % 20):
            words[j] = f"x{j}"
        docs.append(" ".join(words))
    cfg = {**CFG, "dedup_exact": False}
    keys = dedup.dedup_keys(docs, cfg)
    signatures = dedup.signatures([dedup.normalise(d) for d in docs], 128, 5)
    assert dedup.lsh_shape(0.8, 128) == (MinHashLSH(threshold=0.8, num_perm=128).b,
                                         MinHashLSH(threshold=0.8, num_perm=128).r)
    deduplicator, lsh = dedup.Deduplicator(cfg), MinHashLSH(threshold=0.8, num_perm=128)
    ours, theirs = [], []
    for i, (k, row) in enumerate(zip(keys, signatures)):
        verdict = deduplicator.check(i, k)
        ours.append(verdict and verdict[1])
        minhash = MinHash(seed=1, scheme="affine32", hashvalues=row)
        similar = lsh.query(minhash)
        theirs.append(f"Jaccard >= ~0.8 with {min(similar)}" if similar else None)
        if not similar:
            lsh.insert(i, minhash)
    assert ours == theirs
    assert 10 < sum(map(bool, ours)) < 60  # some copies caught, some too far changed
