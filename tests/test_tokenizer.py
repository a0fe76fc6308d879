import json
import random
from collections import Counter

import pytest

from core.tokenizer import (EOT, GPT4_SPLIT_PATTERN, Tokenizer, count_chunks, count_chunks_parallel,
                       train_bpe, train_bpe_reference)

TEXT = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!
def add(a, b):
    return a + b  # 1234567 numbers, numbers, numbers
El zorro marrón salta sobre el perro perezoso. Le renard brun saute par-dessus le chien.
aaaaaaaaaaaa abababab abcabcabc 日本語のテキスト 😀😀 don't we'll they're
""" * 3


def test_trainer_matches_naive_reference():
    counts = count_chunks([TEXT])
    fast = train_bpe(counts, vocab_size=420)
    slow = train_bpe_reference(counts, vocab_size=420)
    assert fast == slow
    assert len(fast) == 419  # one id left for <|endoftext|>
    assert fast[:256] == [bytes([i]) for i in range(256)]


def test_trainer_matches_reference_on_random_corpora():
    # Small alphabets make long runs and many ties: the cases where incremental counting can slip.
    rng = random.Random(0)
    for _ in range(200):
        counts = {bytes(rng.choice(b"abc ") for _ in range(rng.randint(1, 12))): rng.randint(1, 9)
                  for _ in range(rng.randint(1, 8))}
        fast = train_bpe(counts, vocab_size=290)
        assert fast == train_bpe_reference(counts, vocab_size=290), counts
        assert len(fast) == len(set(fast))  # tiktoken needs every token's bytes to be unique


def test_training_stops_when_pairs_run_out():
    tokens = train_bpe(count_chunks(["ab ab ab"]), vocab_size=1000)
    assert len(tokens) < 999 and b"ab" in tokens


def test_parallel_chunk_counting_equals_serial():
    texts = [TEXT[i:i + 50] for i in range(0, len(TEXT), 50)]
    assert count_chunks_parallel(texts, workers=2, batch_chars=100) == count_chunks(texts)


def test_pre_split_is_gpt4_style():
    import regex
    assert regex.findall(GPT4_SPLIT_PATTERN, "Hello world's 12345 !!\n\n  x") == \
        ["Hello", " world", "'s", " ", "123", "45", " !!\n\n", " ", " x"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(train_bpe(count_chunks([TEXT]), vocab_size=400))


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    alphabets = [range(0x20, 0x7f), range(0xa0, 0x250), range(0x400, 0x4ff), range(0x3040, 0x30ff),
                 range(0x4e00, 0x4f00), range(0x1f600, 0x1f64f), [0x0a, 0x09, 0x20, 0x200d, 0xfeff]]
    for _ in range(200):
        s = "".join(chr(rng.choice(rng.choice(alphabets))) for _ in range(rng.randint(0, 60)))
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert tok.decode_bytes(ids) == s.encode("utf-8")
    # every code point outside the surrogates, in one string
    s = "".join(chr(c) for c in range(0, 0x110000, 97) if not 0xd800 <= c <= 0xdfff)
    assert tok.decode(tok.encode(s)) == s


def test_round_trip_random_bytes(tok):
    rng = random.Random(1)
    for _ in range(200):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        text = raw.decode("utf-8", errors="replace")  # how prepare.py reads bytes
        assert tok.decode(tok.encode(text)) == text
    # decode_bytes is exact for any id sequence, even one that cuts a character in half
    ids = [rng.randrange(tok.vocab_size - 1) for _ in range(500)]
    assert tok.decode_bytes(ids) == b"".join(tok.tokens[i] for i in ids)


def test_special_token_text_is_not_special(tok):
    ids = tok.encode(f"a{EOT}b")
    assert tok.eot_id not in ids and tok.decode(ids) == f"a{EOT}b"
    assert tok.eot_id == tok.vocab_size - 1 and tok.decode([tok.eot_id]) == EOT


def test_lone_surrogate_becomes_replacement_char(tok):
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"


def test_batch_encoding_equals_single(tok):
    texts = TEXT.split("\n")
    assert tok.encode_batch(texts, workers=2) == [tok.encode(t) for t in texts]


def test_merges_compress_the_training_text(tok):
    assert len(tok.encode(TEXT)) < 0.5 * len(TEXT.encode("utf-8"))


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.tokens == tok.tokens and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert Tokenizer.from_dict(tok.to_dict()).encode("héllo") == tok.encode("héllo")


def test_bad_tokenizer_files_get_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        Tokenizer.load(bad)
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a tokenizer of format"):
        Tokenizer.load(bad)
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe({b"ab": 1}, vocab_size=100)


def byte_level_alphabet():
    """GPT-2's printable stand-in for each byte, as Hugging Face's ByteLevel pre-tokenizer uses
    (written out here, not imported, to keep the comparison independent)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in kept else chr(next(shifted)) for b in range(256)}


def merges_before_the_first_tie(counts, n):
    """How many of the first n merges have a single most frequent pair (train_bpe_reference's
    algorithm, stopped at the first step whose best count two pairs share: trainers break ties
    differently, so only the steps before it are comparable)."""
    words = [(list(chunk), f) for chunk, f in counts.items()]
    for step in range(n):
        pairs = Counter()
        for word, f in words:
            for pair in zip(word, word[1:]):
                pairs[pair] += f
        top = pairs.most_common(2)
        if len(top) < 2 or top[0][1] == top[1][1]:
            return step
        (a, b), _ = top[0]
        words = [(merge_pair(word, a, b), f) for word, f in words]
    return n


def merge_pair(word, a, b):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
            out.append((a, b))
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def test_trainer_agrees_with_hugging_face_tokenizers_until_merges_tie():
    """An independent BPE: Hugging Face's Rust BpeTrainer, trained on the same pre-split chunks
    with the same counts, learns the same merges in the same order up to the first tie."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers comes with transformers "
                                                          "(requirements-extra.txt)")
    rng = random.Random(0)  # 200 words with counts up to 1,000: ties come late
    counts = {}
    while len(counts) < 200:
        word = " " + "".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(2, 9)))
        counts[word.encode()] = rng.randint(1, 1000)
    ours = train_bpe(counts, vocab_size=256 + 300 + 1)[256:]
    comparable = merges_before_the_first_tie(counts, 300)
    assert comparable >= 30, comparable  # enough merges to compare (64 with this seed)

    alphabet = byte_level_alphabet()
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=256 + 300, show_progress=False,
                                             initial_alphabet=list(alphabet.values()))
    hf.train_from_iterator((chunk.decode("utf-8") for chunk, f in counts.items() for _ in range(f)),
                           trainer)
    unicode_to_byte = {c: b for b, c in alphabet.items()}
    merges = json.loads(hf.to_str())["model"]["merges"]
    theirs = [bytes(unicode_to_byte[c] for c in "".join(m if isinstance(m, list) else m.split(" ")))
              for m in merges]
    assert ours[:comparable] == theirs[:comparable]
