"""The built-in translation task: English and Spanish verses of two public-domain Bibles, the King
James Version and the Reina-Valera 1909, as Debian ships them (sword-text-kjv, sword-text-sparv) and
pysword reads them, paired into prompt/response pairs for core/tasks.py's template.

The two Bibles share verse numbering. The split is by whole book, never by verse (near-identical
verses recur across books: Kings and Chronicles, the Gospels): Acts is the test set; Ruth, Jonah,
Philippians and 1 John the validation set; Mark and Hebrews stay out of every set.
"""

import math

from core.tasks import TaskError

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
BOOK_SPLIT = {"Acts": "test", "Ruth": "val", "Jonah": "val", "Phil": "val", "1John": "val",
              "Mark": None, "Heb": None}  # OSIS names; None: in no set; any other book: train


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


def split_by_book(rows):
    """{"train": rows, "val": rows, "test": rows}: each row in its book's set (BOOK_SPLIT)."""
    splits = {"train": [], "val": [], "test": []}
    for row in rows:
        split = BOOK_SPLIT.get(row[0][0], "train")
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


def translation_task(root):
    """{split: [(prompt, response, meta)]} of the translation task, and what reading it counted."""
    english, spanish = (read_bible(root, SWORD_MODULES[lang]) for lang in ("en", "es"))
    rows, dropped = aligned_verses(english, spanish)
    splits = split_by_book(rows)
    counts = {"aligned_verses": len(rows), **{f"dropped_{k}": v for k, v in dropped.items()},
              **{f"{split}_verses": len(r) for split, r in splits.items()}}
    return {split: translation_pairs(r) for split, r in splits.items()}, counts
