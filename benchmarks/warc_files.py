"""WARC files written by hand, for the warc source's tests and `bench.py warc`: records in the
WARC/1.0 layout (headers, a block of Content-Length bytes, two CRLFs), each gzip member on its own
in .warc.gz files, as Common Crawl writes them."""

import gzip
import uuid

WARCINFO = b"software: mini-lm tests\r\nformat: WARC File Format 1.0\r\n"


def warc_record(warc_type, url, block, content_type, record_id=None):
    record_id = record_id or uuid.uuid5(uuid.NAMESPACE_URL, f"{warc_type}:{url}:{len(block)}")
    head = (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\n"
            + (f"WARC-Target-URI: {url}\r\n" if url else "")
            + f"WARC-Date: 2026-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{record_id}>\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def response(url, body, content_type="text/html; charset=utf-8", status="200 OK"):
    """A WARC response record holding an HTTP response with this body."""
    http = (f"HTTP/1.1 {status}\r\n"
            + (f"Content-Type: {content_type}\r\n" if content_type else "")
            + f"Content-Length: {len(body)}\r\n\r\n").encode()
    return warc_record("response", url, http + body, "application/http; msgtype=response")


def request(url):
    return warc_record("request", url, f"GET / HTTP/1.1\r\nHost: {url}\r\n\r\n".encode(),
                       "application/http; msgtype=request")


def write_warc(path, records, compress=None):
    """Write records (bytes each) to path; gzip each record as its own member for .gz names."""
    compress = str(path).endswith(".gz") if compress is None else compress
    with open(path, "wb") as f:
        for record in [warc_record("warcinfo", None, WARCINFO, "application/warc-fields"), *records]:
            f.write(gzip.compress(record, mtime=0) if compress else record)


def html_page(title, paragraphs, lang="en", charset_meta=None):
    """An HTML page with the paragraphs as its article and the boilerplate of a real site around it."""
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    article = "".join(f"<p>{p}</p>" for p in paragraphs)
    nav = "".join(f'<li><a href="/{w}">{w.title()}</a></li>' for w in
                  ("home", "news", "sport", "weather", "contact", "about", "privacy", "login"))
    return (f'<!DOCTYPE html><html lang="{lang}"><head>{meta}<title>{title}</title>'
            '<script>var tracker = {"id": 42}; function track() { return tracker; }</script>'
            '<style>body { font-family: sans-serif }</style></head><body>'
            f'<header><nav><ul>{nav}</ul></nav></header>'
            f'<main><article><h1>{title}</h1>{article}</article></main>'
            '<aside class="sidebar"><h3>Related</h3><ul><li><a href="/a">Ten tricks</a></li>'
            '<li><a href="/b">You will not believe</a></li></ul></aside>'
            '<footer><p>Copyright 2026 Example Media. All rights reserved.</p>'
            '<a href="/cookies">Cookie settings</a></footer></body></html>')
