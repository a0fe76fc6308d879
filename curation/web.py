"""Web text: the `warc` source (WARC / WARC.gz files, Common Crawl's format) and the page-to-text step
it shares with the `web` source: HTTP status and content type checked, the charset found, the main
text extracted with a maintained extractor.

    dict(kind="warc", name="crawl", paths=["CC-MAIN-...warc.gz"], extractor="resiliparse")

A WARC file holds many records; only HTTP responses are read (requests, metadata and the like are
not pages). For each response, in order, a page is skipped and counted when:
  http_status   the status is not 200
  not_html      the Content-Type is not text/html or application/xhtml+xml
  too_large     the body is longer than max_page_bytes
  broken_record the WARC record cannot be parsed or is cut short (reading starts again at the next
                record: the next gzip member, or the next "WARC/1." line of an uncompressed file)
A page that passes goes to the curate workers as raw HTML (doc_type "html"), where html_document
decodes it and extracts its main text; a page without main text is dropped there as `no_text`.
The charset is the first of the HTTP header's, the page's <meta charset> and uchardet's guess that
decodes the page without error (decode_html); if none does, bad bytes become U+FFFD. Each document keeps
{"url", "date", "charset", "language", "language_rank"} as metadata (html_document).

Two extractors (`extractor`): "resiliparse" (its main-content heuristics, in C++) and "trafilatura"
(more careful boilerplate removal, in Python). `python bench.py warc` measures both.
"""

import codecs
import re

HTML_TYPES = {"text/html", "application/xhtml+xml"}
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
EXTRACTORS = ("resiliparse", "trafilatura")


def known_charset(name):
    """The codec name Python knows for a charset label, else None."""
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def decode_html(body, header_charset=None):
    """(text, charset used). Candidates in order: the HTTP header's charset, the page's <meta
    charset>, uchardet's guess (resiliparse); the first that decodes the bytes without error wins
    (a page that declares UTF-8 but holds Latin-1 is read as what it holds). When none does, the
    first candidate decodes with U+FFFD for the bad bytes."""
    from resiliparse.parse.encoding import detect_encoding
    meta = META_CHARSET.search(body[:4096])
    candidates = [known_charset(header_charset),
                  known_charset(meta.group(1).decode("ascii")) if meta else None,
                  known_charset(detect_encoding(body, from_html_meta=False)), "utf-8"]
    candidates = list(dict.fromkeys(c for c in candidates if c))
    for charset in candidates:
        try:
            return body.decode(charset), charset
        except UnicodeDecodeError:
            continue
    return body.decode(candidates[0], errors="replace"), candidates[0]


def extract_text(html, extractor):
    """The main text of one HTML page ("" when there is none): paragraphs kept, boilerplate gone."""
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        return extract_plain_text(html, main_content=True, preserve_formatting=True,
                                  list_bullets=True, alt_texts=False).strip()
    import trafilatura
    return (trafilatura.extract(html, include_comments=False, include_tables=False,
                                deduplicate=False) or "").strip()


def html_response(url, status, content_type, body, spec, warn):
    """Whether an HTTP response is an HTML page to keep (the cheap checks, done while collecting);
    when not, it is counted under its reason."""
    if status != 200:
        warn("http_status", f"{url}: HTTP {status}, skipped")
        return False
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in HTML_TYPES:
        warn("not_html", f"{url}: Content-Type {mime or 'missing'}, skipped")
        return False
    if len(body) > spec["max_page_bytes"]:
        warn("too_large", f"{url}: {len(body):,} bytes > max_page_bytes={spec['max_page_bytes']:,}, "
                          "skipped")
        return False
    return True


def page_metadata(url, header_charset, extractor, **more):
    """What a collector attaches to an HTML page: html_document reads the charset header and the
    extractor, and replaces them with what it found."""
    return {"url": url, **more, "charset_header": header_charset, "extractor": extractor}


def html_document(body, metadata):
    """(main text, metadata) of an HTML page collected with page_metadata: decoded, extracted, and
    tagged with its language by resiliparse's linear-time detector (rank: distance to the closest
    language profile, lower is surer; the prose filter's own py3langid check, which decides what is
    kept, runs after). Runs in the curate workers, so extraction scales with them. Text "" when the
    extractor finds none."""
    from resiliparse.parse.lang import detect_fast
    html, charset = decode_html(body, metadata["charset_header"])
    text = extract_text(html, metadata["extractor"])
    language, rank = detect_fast(text[:4000]) if text else ("unknown", 0)
    found = {k: v for k, v in metadata.items() if k not in ("charset_header", "extractor")}
    return text, {**found, "charset": charset, "language": language, "language_rank": rank}


class _BrokenRecord(Exception):
    pass


def _next_record_start(stream, position, marker):
    """The file offset of the next marker (a gzip member's magic, or b"WARC/1.") after position."""
    stream.seek(position)
    carry = b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            return None
        found = (carry + block).find(marker)
        if found >= 0:
            return position - len(carry) + found
        position += len(block)
        carry = block[-len(marker) + 1:]


def _responses(path, warn):
    """(record, body) for every readable HTTP response in one WARC file. A broken record (bad
    headers, a block shorter than its Content-Length, a gzip member that does not inflate) is
    counted, and reading starts again at the next record: the next gzip member in a .gz file (each
    record is one), the next "WARC/1." line otherwise."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    with open(path, "rb") as stream:
        marker = b"\x1f\x8b\x08" if stream.read(2) == b"\x1f\x8b" else b"WARC/1."
        start = 0
        while start is not None:
            stream.seek(start)
            current, yielded = start, False  # the record being read, and whether it was good
            try:
                for record in ArchiveIterator(stream, record_types=WarcRecordType.response,
                                              parse_http=True):
                    current, yielded = start + record.stream_pos, False
                    body = record.reader.read()
                    if len(body) < record.content_length:
                        raise _BrokenRecord(f"{len(body):,} of {record.content_length:,} bytes")
                    yielded = True
                    yield record, body
                return
            except (OSError, ValueError, _BrokenRecord) as e:
                # a failure while looking for the next record belongs to the record after `current`
                broken = _next_record_start(stream, current + 1, marker) if yielded else current
                start = None if broken is None else _next_record_start(stream, broken + 1, marker)
                where = f"byte {broken:,}" if broken is not None else f"some byte after {current:,}"
                then = f"reading again at byte {start:,}" if start is not None else "nothing after it"
                warn("broken_record", f"{path}: the record at {where} is broken ({e}); {then}")


def iter_warc_files(paths, spec, warn):
    """(url, "html", body, metadata) for the HTML responses of every WARC file in paths; the curate
    workers turn each into its main text (html_document)."""
    for path in paths:
        for record, body in _responses(path, warn):
            url = record.headers.get("WARC-Target-URI", "")
            status = record.http_headers.status_code if record.http_headers else None
            if html_response(url, status, record.http_content_type, body, spec, warn):
                yield url, "html", body, page_metadata(
                    url, record.http_charset, spec["extractor"], date=record.headers.get("WARC-Date", ""))
