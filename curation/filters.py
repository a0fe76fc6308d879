"""Cleaning and quality filtering of single documents.

``clean`` turns raw bytes or text into normalised text (UTF-8, NFC, no control characters, tidy
whitespace, PII redacted). Each quality rule below is one small function: it reads its thresholds
from the config dict and returns None to keep the document, or a short reason to drop it. Each
rule declares its thresholds, defaults and meaning right above it (``@thresholds``); prepare.py's
settings take them from ``SETTINGS``. Unless noted, the defaults follow Gopher (Rae et al. 2021).
``PROSE_RULES`` and ``CODE_RULES`` list which rules apply to which kind of document, cheapest first;
the first rule that fails is the one counted in the report.
"""

import ipaddress
import re
import unicodedata
from collections import Counter

import regex

# ------------------------------------------------------------------------------------------- cleaning

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n
UNICODE_SPACES = re.compile(r"[^\S\n\t]")  # no-break, thin, ideographic ... spaces
SPACE_RUNS = re.compile(r"[ \t]{2,}")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
PROSE_BLANK_LINES = re.compile(r"\n{3,}")  # at most one empty line in prose
CODE_BLANK_LINES = re.compile(r"\n{4,}")   # at most two in code (PEP 8 spacing)

# An address: local part, @, dotted domain. The plain pattern, `\b[A-Za-z0-9._%+-]+@...`, is tried
# again at every word boundary inside a run of local-part characters and rescans the rest of the
# run each time: quadratic in the run's length (a 64 KB line of "1+1+..." took seconds). This one
# is tried only where such a run starts (the lookbehind) or where the previous match ended (\G),
# at the first word boundary from there, which is where the plain pattern's first try starts:
# that very place, or past the characters before it that are all word or all non-word ones
# (group 1, put back by the replacement: a run after "ü" has no boundary at its start).
# Each run is read a bounded number of times, and what is replaced is what the plain pattern
# replaces (tests/test_filters.py). \G needs the regex package (re has no \G).
EMAIL = regex.compile(r"(?:(?<![A-Za-z0-9._%+-])|\G)(?:\b|([.%+-]+|[A-Za-z0-9_]+)\b)"
                      r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
SECRETS = re.compile("|".join([
    r"\bAKIA[0-9A-Z]{16}\b",                                   # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",                         # GitHub tokens
    r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}\b",                    # OpenAI-style secret keys
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",                       # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{35}\b",                              # Google API keys
]))
# A PEM private key, BEGIN line to END line. Searched only in the text up to the last END line: a
# BEGIN with no END after it made the lazy scan run to the end of the text once per BEGIN
# (quadratic in a text of many BEGIN lines); before the last END, every BEGIN finds its END.
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")
PRIVATE_KEY_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")
# `password = "..."`, `api_key: '...'`: only the quoted value is replaced.
SECRET_ASSIGNMENT = re.compile(
    r"""(?i)\b((?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd)"""
    r"""\s*[:=]\s*["'])([A-Za-z0-9/+_\-.=]{16,})(["'])""")


def _redact_ip(match, counts):
    try:
        ip = ipaddress.ip_address(match.group(0))
    except ValueError:
        return match.group(0)  # 999.1.1.1 is a version string, not an address
    # Loopback, private and documentation addresses identify nobody: keep them (code needs them).
    if not ip.is_global:
        return match.group(0)
    counts["ip_addresses"] += 1
    return "<IP_ADDRESS>"


def _redact_private_keys(text):
    """(text with each PEM private key replaced by <SECRET>, how many)."""
    end = text.rfind("-----END ")
    while end >= 0 and not PRIVATE_KEY_END.match(text, end):
        end = text.rfind("-----END ", 0, end)
    if end < 0:
        return text, 0
    cut = PRIVATE_KEY_END.match(text, end).end()
    head, n = PRIVATE_KEY.subn("<SECRET>", text[:cut])
    return head + text[cut:], n


def redact_pii(text, counts):
    """Replace emails, public IP addresses and key-like secrets; add what was replaced to counts."""
    text, n = EMAIL.subn(r"\1<EMAIL>", text)
    counts["emails"] += n
    for pattern in (IPV4, IPV6):
        text = pattern.sub(lambda m: _redact_ip(m, counts), text)
    text, n = _redact_private_keys(text)  # first: a key block is one secret, whatever it holds
    counts["secrets"] += n
    text, n = SECRETS.subn("<SECRET>", text)
    counts["secrets"] += n
    text, n = SECRET_ASSIGNMENT.subn(r"\1<SECRET>\3", text)
    counts["secrets"] += n
    return text


class BinaryFile(ValueError):
    pass


def decode(raw, counts):
    """UTF-8 text from bytes; invalid sequences become U+FFFD and are counted. NUL bytes mean binary."""
    if isinstance(raw, str):
        return raw
    if b"\x00" in raw[:8192]:
        raise BinaryFile("NUL bytes in the first 8 KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        counts["invalid_utf8_docs"] += 1
        counts["invalid_utf8_sequences"] += bad
        return text


def clean(raw, doc_type, pii=True, counts=None):
    """Normalised text of one document (bytes or str). doc_type 'code' keeps indentation."""
    counts = Counter() if counts is None else counts
    text = decode(raw, counts)
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = CONTROL_CHARS.sub("", text)
    if doc_type == "code":
        text = TRAILING_SPACE.sub("\n", text + "\n")
        text = CODE_BLANK_LINES.sub("\n\n\n", text)
    else:
        text = UNICODE_SPACES.sub(" ", text)
        text = SPACE_RUNS.sub(" ", text)
        text = TRAILING_SPACE.sub("\n", text + "\n")
        text = "\n".join(line.lstrip(" ") for line in text.split("\n"))
        text = PROSE_BLANK_LINES.sub("\n\n", text)
    text = text.strip("\n")
    if pii:
        text = redact_pii(text, counts)
    return text


# ------------------------------------------------------------------------------------- quality rules

def thresholds(**settings):
    """Declare a rule's settings, {key: (default, meaning)}, on the rule itself."""
    def declare(rule):
        rule.settings = settings
        return rule
    return declare


@thresholds(max_raw_chars=(5_000_000, "too_large (every kind): longest raw document (bytes or "
                                      "characters) that is cleaned at all; checked first, so one huge "
                                      "document costs no cleaning time"))
def too_large(raw, cfg):
    """The size guard that runs before clean(): cleaning is linear, but a corpus that holds a 1 GB
    log file should not spend a minute on it only to drop it for max_chars."""
    if len(raw) > cfg["max_raw_chars"]:
        unit = "bytes" if isinstance(raw, bytes) else "characters"
        return f"{len(raw):,} raw {unit} > max_raw_chars={cfg['max_raw_chars']:,}"


@thresholds(min_chars=(100, "length: shortest document kept, in characters"),
            max_chars=(1_000_000, "length: longest document kept, in characters"))
def length(text, cfg):
    if len(text) < cfg["min_chars"]:
        return f"{len(text)} chars < min_chars={cfg['min_chars']}"
    if len(text) > cfg["max_chars"]:
        return f"{len(text)} chars > max_chars={cfg['max_chars']}"


def _words(text):
    return text.split()


@thresholds(min_words=(20, "word_count (prose): Gopher uses 50; Wikipedia summaries are shorter"),
            max_words=(100_000, "word_count (prose): most words"))
def word_count(text, cfg):
    n = len(_words(text))
    if not cfg["min_words"] <= n <= cfg["max_words"]:
        return f"{n} words outside [{cfg['min_words']}, {cfg['max_words']}]"


@thresholds(mean_word_length=([3, 10], "mean_word_length (prose): allowed range"))
def mean_word_length(text, cfg):
    words = _words(text)
    mean = sum(map(len, words)) / max(1, len(words))
    lo, hi = cfg["mean_word_length"]
    if not lo <= mean <= hi:
        return f"mean word length {mean:.1f} outside [{lo}, {hi}]"


@thresholds(max_symbol_word_ratio=(0.1, "symbol_ratio (prose): '#' and ellipses per word"))
def symbol_ratio(text, cfg):
    """Gopher: hash signs and ellipses per word (tag clouds, lists of links)."""
    symbols = text.count("#") + text.count("...") + text.count("\u2026")
    ratio = symbols / max(1, len(_words(text)))
    if ratio > cfg["max_symbol_word_ratio"]:
        return f"symbol/word ratio {ratio:.3f} > {cfg['max_symbol_word_ratio']}"


@thresholds(min_alpha_word_fraction=(0.8, "alpha_words (prose): words with a letter"))
def alpha_words(text, cfg):
    words = _words(text)
    alpha = sum(1 for w in words if any(c.isalpha() for c in w)) / max(1, len(words))
    if alpha < cfg["min_alpha_word_fraction"]:
        return f"alphabetic word fraction {alpha:.2f} < {cfg['min_alpha_word_fraction']}"


@thresholds(
    stop_words=(["the", "be", "to", "of", "and", "that", "have", "with", "a", "in", "is", "for",
                 "de", "la", "que", "el", "en", "y", "los", "del", "se", "por", "con", "es", "una",
                 "le", "et", "les", "des", "un", "une", "du", "est", "il", "dans"],
                "stop_words (prose): Gopher's English set plus a, in, is, for (short Wikipedia "
                "summaries) and common Spanish and French function words"),
    min_stop_words=(2, "stop_words (prose): fewest stop words"))
def stop_words(text, cfg):
    """Gopher: real sentences contain function words ('the', 'and', 'de', 'et' ...)."""
    stop = set(cfg["stop_words"])
    found = sum(1 for w in _words(text.lower()) if w.strip(".,;:!?\"'()[]") in stop)
    if found < cfg["min_stop_words"]:
        return f"{found} stop words < {cfg['min_stop_words']}"


def _lines(text):
    return [line for line in text.split("\n") if line.strip()]


@thresholds(max_bullet_line_fraction=(0.9, "bullet_lines (prose)"))
def bullet_lines(text, cfg):
    lines = _lines(text)
    bullets = sum(1 for line in lines if line.lstrip()[:1] in "\u2022\u2023\u25cf\u25aa\u25e6-*\u2013")
    frac = bullets / max(1, len(lines))
    if frac > cfg["max_bullet_line_fraction"]:
        return f"bullet line fraction {frac:.2f} > {cfg['max_bullet_line_fraction']}"


@thresholds(max_ellipsis_line_fraction=(0.3, "ellipsis_lines (prose)"))
def ellipsis_lines(text, cfg):
    lines = _lines(text)
    frac = sum(1 for line in lines if line.rstrip().endswith(("...", "\u2026"))) / max(1, len(lines))
    if frac > cfg["max_ellipsis_line_fraction"]:
        return f"ellipsis line fraction {frac:.2f} > {cfg['max_ellipsis_line_fraction']}"


def _duplicate_fractions(parts):
    """(fraction of parts that repeat an earlier one, fraction of characters in those parts)."""
    seen, dup_count, dup_chars = set(), 0, 0
    for part in parts:
        if part in seen:
            dup_count += 1
            dup_chars += len(part)
        seen.add(part)
    total_chars = sum(map(len, parts))
    return dup_count / max(1, len(parts)), dup_chars / max(1, total_chars)


@thresholds(
    max_duplicate_line_fraction=(0.3, "duplicate_lines (prose): share of lines"),
    max_duplicate_line_char_fraction=(0.2, "duplicate_lines (prose): share of characters"))
def duplicate_lines(text, cfg):
    count, chars = _duplicate_fractions(_lines(text))
    if count > cfg["max_duplicate_line_fraction"] or chars > cfg["max_duplicate_line_char_fraction"]:
        return f"duplicate lines {count:.2f} of lines, {chars:.2f} of chars"


@thresholds(
    max_duplicate_paragraph_fraction=(0.3, "duplicate_paragraphs (prose): share of paragraphs"),
    max_duplicate_paragraph_char_fraction=(0.2, "duplicate_paragraphs (prose): share of chars"))
def duplicate_paragraphs(text, cfg):
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    count, chars = _duplicate_fractions(paragraphs)
    if (count > cfg["max_duplicate_paragraph_fraction"]
            or chars > cfg["max_duplicate_paragraph_char_fraction"]):
        return f"duplicate paragraphs {count:.2f} of paragraphs, {chars:.2f} of chars"


@thresholds(
    max_top_ngram_char_fraction=({2: 0.2, 3: 0.18, 4: 0.16}, "top_ngrams (prose): n -> limit"),
    repetition_min_words=(50, "top_ngrams, duplicate_ngrams (prose): judge only documents with at "
                              "least this many words (Gopher's minimum document length)"))
def top_ngrams(text, cfg):
    """Gopher: the characters in the most frequent word n-gram, as a fraction of all word characters."""
    words = _words(text)
    if len(words) < cfg["repetition_min_words"]:
        return None  # a short text repeats its subject by nature; n-gram shares are noise there
    total = sum(map(len, words))
    for n, limit in sorted(cfg["max_top_ngram_char_fraction"].items()):
        grams = Counter(zip(*(words[i:] for i in range(n))))
        if not grams:
            continue
        gram, count = grams.most_common(1)[0]
        frac = sum(map(len, gram)) * count / max(1, total) if count > 1 else 0.0
        if frac > limit:
            return f"top {n}-gram {' '.join(gram)!r} covers {frac:.2f} of chars > {limit}"


@thresholds(max_duplicate_ngram_char_fraction=(
    {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}, "duplicate_ngrams (prose): n -> limit"))
def duplicate_ngrams(text, cfg):  # also reads repetition_min_words, declared with top_ngrams
    """Gopher: characters of words covered by word n-grams that occur more than once."""
    words = _words(text)
    if len(words) < cfg["repetition_min_words"]:
        return None
    total = sum(map(len, words))
    for n, limit in sorted(cfg["max_duplicate_ngram_char_fraction"].items()):
        grams = list(zip(*(words[i:] for i in range(n))))
        counts = Counter(grams)
        covered = [False] * len(words)
        for i, gram in enumerate(grams):
            if counts[gram] > 1:
                covered[i:i + n] = [True] * n
        frac = sum(len(w) for w, c in zip(words, covered) if c) / max(1, total)
        if frac > limit:
            return f"duplicate {n}-grams cover {frac:.2f} of chars > {limit}"


_language_identifier = None


def detect_language(text, sample_chars=2000):
    """(ISO 639-1 code, probability) from py3langid's naive Bayes model, on the first sample_chars."""
    global _language_identifier
    if _language_identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        _language_identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _language_identifier.classify(text[:sample_chars])


@thresholds(
    languages=(["en", "es", "fr"], "language (prose): ISO 639-1 codes kept (py3langid)"),
    min_language_score=(0.5, "language (prose): lowest probability of the detected language"))
def language(text, cfg):
    lang, prob = detect_language(text)
    if lang not in cfg["languages"] or prob < cfg["min_language_score"]:
        return f"language {lang} (p={prob:.2f}) not in {cfg['languages']} at p>={cfg['min_language_score']}"


def toxicity_scores(texts):
    """Probability of offensive language per text, from alt-profanity-check's linear SVM (0..1).

    One call scores a whole batch: the per-call overhead (~2 ms) dwarfs the per-text cost.
    """
    if not texts:
        return []
    from profanity_check import predict_prob
    return [float(p) for p in predict_prob(list(texts))]


@thresholds(max_toxicity=(0.995, "toxicity: highest alt-profanity-check probability kept (1.0 = "
                                "off); it scores vocabulary, not intent (docs/prepare.md)"))
def toxicity(text, cfg):
    if cfg["max_toxicity"] >= 1.0:
        return None
    score = toxicity_scores([text])[0]
    if score > cfg["max_toxicity"]:
        return f"toxicity {score:.4f} > {cfg['max_toxicity']}"


@thresholds(max_line_length=(1000, "max_line_length (code): longest line, in characters"))
def max_line_length(text, cfg):
    longest = max(map(len, text.split("\n")))
    if longest > cfg["max_line_length"]:
        return f"longest line {longest} chars > {cfg['max_line_length']}"


@thresholds(max_mean_line_length=(100, "mean_line_length (code)"))
def mean_line_length(text, cfg):
    lines = text.split("\n")
    mean = sum(map(len, lines)) / len(lines)
    if mean > cfg["max_mean_line_length"]:
        return f"mean line length {mean:.0f} > {cfg['max_mean_line_length']}"


@thresholds(min_alnum_fraction=(0.25, "alnum_fraction (code): letters and digits among all "
                                      "characters"))
def alnum_fraction(text, cfg):
    frac = sum(c.isalnum() for c in text) / max(1, len(text))
    if frac < cfg["min_alnum_fraction"]:
        return f"alphanumeric fraction {frac:.2f} < {cfg['min_alnum_fraction']}"


@thresholds(
    autogenerated_markers=(["auto-generated", "autogenerated", "automatically generated",
                            "generated by", "generated from", "do not edit"],
                           "autogenerated (code): phrases that mark generated files"),
    autogenerated_header_chars=(1000, "autogenerated (code): how far from the top to look"))
def autogenerated(text, cfg):
    head = text[:cfg["autogenerated_header_chars"]].lower()
    for marker in cfg["autogenerated_markers"]:
        if marker in head:
            return f"header says {marker!r}"


LITERAL = re.compile(r"""(?:[rbuRBU]{0,2}"(?:[^"\\]|\\.)*"|[rbuRBU]{0,2}'(?:[^'\\]|\\.)*'"""
                     r"""|\b0[xXoObB][0-9a-fA-F_]+\b|\b\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?[jJlL]?\b)""")


@thresholds(max_literal_line_fraction=(0.5, "data_heavy (code): lines holding only literals"))
def data_heavy(text, cfg):
    """Code files that are mostly data: lines holding only literals (tables, embedded blobs)."""
    lines = _lines(text)
    literal_only = 0
    for line in lines:
        rest, n = LITERAL.subn("", line)
        if n and not re.search(r"[A-Za-z_]", rest):
            literal_only += 1
    frac = literal_only / max(1, len(lines))
    if frac > cfg["max_literal_line_fraction"]:
        return f"literal-only line fraction {frac:.2f} > {cfg['max_literal_line_fraction']}"


PROSE_RULES = {rule.__name__: rule for rule in (
    length, word_count, mean_word_length, symbol_ratio, alpha_words, stop_words, bullet_lines,
    ellipsis_lines, duplicate_lines, duplicate_paragraphs, top_ngrams, duplicate_ngrams, language,
    toxicity)}
CODE_RULES = {rule.__name__: rule for rule in (
    length, max_line_length, mean_line_length, alnum_fraction, autogenerated, data_heavy, toxicity)}
RULES = {"prose": PROSE_RULES, "code": CODE_RULES}
# every rule's thresholds, {key: (default, meaning)}: part of prepare.py's settings
SETTINGS = {key: setting
            for rule in dict.fromkeys([too_large, *PROSE_RULES.values(), *CODE_RULES.values()])
            for key, setting in rule.settings.items()}


def first_failing_rule(text, doc_type, cfg, skip=()):
    """(rule name, reason) of the first rule that drops text, or None if every rule keeps it."""
    for name, rule in RULES[doc_type].items():
        if name in cfg["disabled_filters"] or name in skip:
            continue
        reason = rule(text, cfg)
        if reason is not None:
            return name, reason
    return None


def filter_batch(texts, doc_types, cfg):
    """first_failing_rule for many documents; toxicity (every kind's last rule) is scored in one call
    for the documents that passed all the others."""
    results = [first_failing_rule(t, d, cfg, skip=("toxicity",)) for t, d in zip(texts, doc_types)]
    if "toxicity" in cfg["disabled_filters"] or cfg["max_toxicity"] >= 1.0:
        return results
    survivors = [i for i, r in enumerate(results) if r is None]
    for i, score in zip(survivors, toxicity_scores([texts[i] for i in survivors])):
        if score > cfg["max_toxicity"]:
            results[i] = ("toxicity", f"toxicity {score:.4f} > {cfg['max_toxicity']}")
    return results
