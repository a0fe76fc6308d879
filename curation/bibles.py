"""The built-in translation task: English and Spanish verses of two public-domain Bibles, the King
James Version and the Reina-Valera 1909, as Debian ships them (sword-text-kjv, sword-text-sparv) and
pysword reads them, paired into prompt/response pairs for core/tasks.py's template.

The two Bibles share verse numbering. The split is by whole book, never by verse (near-identical
verses recur across books: Kings and Chronicles, the Gospels): Acts is the test set; Ruth, Jonah,
Philippians and 1 John the validation set; Mark and Hebrews stay out of every set.
"""

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np

from core.tasks import TaskError
from core.tokenizer import EOT, Tokenizer

SWORD_MODULES = {"en": "engKJV2006eb", "es": "spaRV1909eb"}
DROP_CAPS = {"spaRV1909eb"}  # prints a chapter's first word in capitals ("EN el principio")
LANGUAGE_NAMES = {"en": "English", "es": "Spanish"}
INSTALL = ("apt-get install sword-text-kjv sword-text-sparv (Debian's packages) and pip install -r "
           "requirements-extra.txt -c requirements.lock (pysword)")
# Pairs that are not translations of each other, though numbered alike, are left out:
SHIFT_MARGIN = 0.8          # a chapter the two editions number differently (the Reina-Valera's
                            # Jonah 2:1 is the KJV's 1:17): pairing each verse with the other
                            # edition's next or previous one matches their lengths this much better
LENGTH_RATIO = (0.5, 2.0)   # a pair whose Spanish/English length ratio falls outside (1% and 99%
                            # of pairs: 0.65 and 1.32)
WORD = re.compile(r"\w+")
LEAK_MIN_WORDS = 6          # a held-out verse of fewer words ("Jesus wept.") is a common phrase, not
                            # a leak, and is not looked for
BOOK_SPLIT = {"Acts": "test", "Ruth": "val", "Jonah": "val", "Phil": "val", "1John": "val",
              "Mark": None, "Heb": None}  # OSIS names; None: in no set; any other book: train
SPLITS = ("train", "val", "test", None)


def clean_verse(text, drop_cap=False):
    """One verse as plain text: the KJV's paragraph marks gone, whitespace collapsed, and with
    drop_cap (a chapter's first verse in an edition that prints its first word in capitals: "EN el
    principio", "Y ACONTECIÓ en", "¿POR qué") that word written as a word ("En el principio",
    "Y aconteció en", "¿Por qué")."""
    words = " ".join(text.replace("\u00b6", " ").split()).split(" ")
    for i, word in enumerate(words[:2]):
        letters = [c for c in word if c.isalpha()]
        if len(letters) >= 2:  # the first word longer than a letter: "Y" is a word of its own
            if drop_cap and all(c.isupper() for c in letters):
                keep = next(j for j, c in enumerate(word) if c.isalpha()) if i == 0 else -1
                words[i] = "".join(c if j == keep else c.lower() for j, c in enumerate(word))
            break
    return " ".join(words)


def read_bible(root, module, books=None):
    """{(book, chapter, verse): text} of a SWORD Bible module under root (OSIS book names), of
    every book or of those named."""
    try:
        from pysword.modules import SwordModules  # optional (requirements-extra.txt)
    except ImportError:
        raise TaskError(f"the translation task needs pysword: {INSTALL}") from None
    modules = SwordModules(root)
    try:
        found = modules.parse_modules()
    except (OSError, FileNotFoundError):
        found = {}
    if module not in found:
        raise TaskError(f"the SWORD module {module} is not in {root}: {INSTALL}")
    bible = modules.get_bible_from_module(module)
    structure = bible.get_structure().get_books()
    verses = {}
    for book in structure["ot"] + structure["nt"]:
        if books is not None and book.osis_name not in books:
            continue
        texts = iter(bible.get_iter(books=[book.osis_name], clean=True))
        for chapter, length in enumerate(book.chapter_lengths, 1):
            for verse in range(1, length + 1):
                verses[book.osis_name, chapter, verse] = clean_verse(
                    next(texts), drop_cap=verse == 1 and module in DROP_CAPS)
    return verses


def length_mismatch(english, spanish):
    """|log| of the length ratio of two nonempty verses: 0 for equal lengths."""
    return abs(math.log(len(spanish) / len(english)))


def renumbered_chapters(english, spanish):
    """{(book, chapter)} where pairing each verse with the other edition's verse one before or
    after matches their lengths clearly better than pairing them by number (SHIFT_MARGIN)."""
    chapters = {}
    for book, chapter, verse in english:
        chapters.setdefault((book, chapter), []).append(verse)
    renumbered = set()
    for (book, chapter), verses in chapters.items():
        costs = {}
        for shift in (0, 1, -1):
            pairs = [(english[book, chapter, v], spanish.get((book, chapter, v + shift), ""))
                     for v in verses]
            pairs = [(en, es) for en, es in pairs if en and es]
            if len(pairs) >= 3:
                costs[shift] = sum(length_mismatch(en, es) for en, es in pairs) / len(pairs)
        shifted = [cost for shift, cost in costs.items() if shift]
        if 0 in costs and shifted and min(shifted) < SHIFT_MARGIN * costs[0]:
            renumbered.add((book, chapter))
    return renumbered


def aligned_verses(english, spanish):
    """([(key, English text, Spanish text)] in the English Bible's order, {reason: verses left
    out}): a verse one edition lacks or leaves empty, the verses of a chapter the two number
    differently, and a pair whose lengths are too far apart to be one verse translated."""
    renumbered = renumbered_chapters(english, spanish)
    rows, dropped = [], {"missing_or_empty": len(set(spanish) - set(english)),
                         "renumbered_chapter": 0, "length_ratio": 0}
    low, high = LENGTH_RATIO
    for key, en in english.items():
        es = spanish.get(key, "")
        if not (en and es):
            dropped["missing_or_empty"] += 1
        elif key[:2] in renumbered:
            dropped["renumbered_chapter"] += 1
        elif not low <= len(es) / len(en) <= high:
            dropped["length_ratio"] += 1
        else:
            rows.append((key, en, es))
    return rows, dropped


def book_split(changes=None):
    """BOOK_SPLIT with changes laid over it ({OSIS book name: "train", "val", "test" or None}): a
    check of one's own, such as a Gospel held out as the test book ({"Luke": "test", "Acts": None})."""
    changes = dict(changes or {})
    wrong = {book: split for book, split in changes.items() if split not in SPLITS}
    if wrong:
        raise TaskError(f"book_split: {wrong}: each book's set must be 'train', 'val', 'test' or None")
    return {**BOOK_SPLIT, **changes}


def split_by_book(rows, split_of=BOOK_SPLIT):
    """{"train": rows, "val": rows, "test": rows}: each row in its book's set (split_of, a
    book_split(); any book it does not name trains)."""
    splits = {"train": [], "val": [], "test": []}
    for row in rows:
        split = split_of.get(row[0][0], "train")
        if split:
            splits[split].append(row)
    return splits


def translation_pairs(rows):
    """Both directions of each aligned verse: [(prompt, response, meta)]."""
    pairs = []
    for (book, chapter, verse), english, spanish in rows:
        for source, target, src, tgt in (("en", "es", english, spanish), ("es", "en", spanish, english)):
            prompt = f"Translate {LANGUAGE_NAMES[source]} to {LANGUAGE_NAMES[target]}:\n{src}"
            pairs.append((prompt, tgt, {"direction": f"{source}-{target}", "book": book,
                                        "chapter": chapter, "verse": verse, "source": src}))
    return pairs


def translation_task(root, split_of=BOOK_SPLIT):
    """{split: [(prompt, response, meta)]} of the translation task, and what reading it counted."""
    english, spanish = (read_bible(root, SWORD_MODULES[lang]) for lang in ("en", "es"))
    unknown = set(split_of) - set(BOOK_SPLIT) - {book for book, _, _ in english}  # a changed name
    if unknown:
        raise TaskError(f"book_split names book(s) the Bible does not have: {sorted(unknown)} (OSIS "
                        "names: Gen, Exod, ..., Matt, Mark, Luke, John, Acts, ...)")
    rows, dropped = aligned_verses(english, spanish)
    splits = split_by_book(rows, split_of)
    counts = {"aligned_verses": len(rows), **{f"dropped_{k}": v for k, v in dropped.items()},
              **{f"{split}_verses": len(r) for split, r in splits.items()}}
    return {split: translation_pairs(r) for split, r in splits.items()}, counts


# ------------------------------------------------------------------ the held-out books, by content

def verse_words(text):
    """A text's lower-case words: what two copies of a verse share, whatever the spacing and case."""
    return tuple(WORD.findall(text.lower()))


def find_leaks(held_out, documents):
    """[(verse key, document name)] for each held-out verse ({key: words}) whose words stand in a
    document in order and together; documents: (name, text) pairs."""
    index = {}
    for key, words in held_out.items():
        index.setdefault(words[:LEAK_MIN_WORDS], []).append((key, words))
    leaks = []
    for name, text in documents:
        words = verse_words(text)
        for i in range(len(words) - LEAK_MIN_WORDS + 1):
            for key, verse in index.get(words[i:i + LEAK_MIN_WORDS], ()):
                if words[i:i + len(verse)] == verse:
                    leaks.append((key, name))
    return leaks


def held_out_verses(verses_of, split_of=BOOK_SPLIT):
    """{(language, book, chapter, verse): words} of the verses no training text may hold: those of
    the test, validation and held-out books (split_of) in each language ({language: verses}) of
    LEAK_MIN_WORDS words or more, less any that the training books' own text holds (the Gospels
    and Kings repeat verses word for word: such a verse is training text whatever its book)."""
    candidates, training = {}, []
    for language, verses in verses_of.items():
        chapters = {}
        for (book, chapter, verse), text in verses.items():
            if split_of.get(book, "train") == "train":
                chapters.setdefault((book, chapter), []).append(text)
            elif len(verse_words(text)) >= LEAK_MIN_WORDS:
                candidates[(language, book, chapter, verse)] = verse_words(text)
        training += [(f"{language}:{book}.{chapter}", "\n".join(texts))
                     for (book, chapter), texts in chapters.items()]
    shared = {key for key, _ in find_leaks(candidates, training)}
    return {key: words for key, words in candidates.items() if key not in shared}


def training_texts(folder):
    """(name, text) of everything a prepared folder trains on: a corpus's curated shards (the
    tokenizer's corpus) and its train.bin and val.bin decoded, or a task's train.bin decoded and
    its train.jsonl pairs (a task's val.bin and val.jsonl hold the validation books by design)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    for shard in sorted((folder / "curated").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                yield f"{shard.relative_to(folder.parent)}:{number}", json.loads(line)["text"]
    tokenizer = Tokenizer.load(folder / meta.get("tokenizer", "tokenizer.json"))
    for split in ("train",) if "task" in meta else ("train", "val"):
        ids = np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]).tolist()
        for number, text in enumerate(tokenizer.decode(ids).split(EOT)):
            yield f"{folder.name}/{split}.bin, document {number}", text
    if (folder / "train.jsonl").exists():
        for number, line in enumerate((folder / "train.jsonl").read_text(encoding="utf-8").splitlines(), 1):
            pair = json.loads(line)
            yield f"{folder.name}/train.jsonl:{number}", pair["prompt"] + "\n" + pair["response"]


def check_held_out(root, folders, split_of=BOOK_SPLIT):
    """Raise a TaskError naming the first leaks if any test, validation or held-out verse of the
    Bibles under root (split_of) stands in what the prepared folders train on."""
    verses_of = {lang: read_bible(root, module) for lang, module in SWORD_MODULES.items()}
    held_out = held_out_verses(verses_of, split_of)
    leaks = [leak for folder in folders for leak in find_leaks(held_out, training_texts(folder))]
    if leaks:
        shown = "; ".join(f"{' '.join(map(str, key))} in {name}" for key, name in leaks[:5])
        raise TaskError(f"{len(leaks)} held-out verse(s) found in training text: {shown}")
    return len(held_out)
