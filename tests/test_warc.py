"""The warc source (web.py): HTML responses from WARC files, main text extracted, charsets found,
everything else skipped and counted, broken records skipped without losing the records around
them; WARC files by URL from a server on 127.0.0.1."""
import functools
import gzip
import http.server
import json
import threading
from collections import Counter

import pytest

from curation import curate
from curation import sources
from curation import web
from benchmarks import warc_files as w

ARTICLE = ["The river crossed the old town near the market, where traders sold grain and cloth.",
           "In the nineteenth century a railway reached the town and its population grew quickly."]
FRENCH = ["Le café était fermé à cause de la grève générale des employés de la ville.",
          "Les élèves ont déjà visité le musée où l'on expose des tableaux très anciens."]
BOILERPLATE = ["Cookie settings", "Ten tricks", "tracker", "All rights reserved", "Weather"]


def page(paragraphs=ARTICLE, **kwargs):
    return w.html_page("River town", paragraphs, **kwargs)


def records():
    return [
        w.request("http://a.example/river"),
        w.response("http://a.example/river", page().encode()),
        w.response("http://b.example/cafe", page(FRENCH, lang="fr", charset_meta="iso-8859-1")
                   .encode("latin-1"), content_type="text/html"),  # charset from <meta>
        w.response("http://b.example/guess", page(FRENCH, lang="fr").encode("cp1252"),
                   content_type="text/html"),  # no charset anywhere: detected
        w.response("http://b.example/bogus", page().encode(), content_type="text/html; charset=nope"),
        w.response("http://c.example/report.pdf", b"%PDF-1.4 ...", content_type="application/pdf"),
        w.response("http://c.example/gone", b"<html>gone</html>", status="404 Not Found"),
        w.response("http://c.example/empty", b"<html><body><script>var a = 1;</script></body></html>"),
        w.response("http://c.example/huge", page(ARTICLE * 400).encode()),
    ]


def collect(paths=None, urls=None, cache_dir=None, extractor="resiliparse"):
    spec = sources.resolve_sources([dict(kind="warc", paths=paths, urls=urls, extractor=extractor,
                                         max_page_bytes=50_000, cache_dir=str(cache_dir or "x"))])[0]
    warnings = []
    pages = list(sources.iter_source(spec, lambda kind, message: warnings.append((kind, message))))
    return html_to_documents(pages, warnings), warnings


def html_to_documents(pages, warnings):
    """What the curate workers make of the collected pages: (url, "prose", text, metadata), and a
    no_text entry for a page without main text."""
    docs = []
    for url, doc_type, body, meta in pages:
        assert doc_type == "html" and isinstance(body, bytes)
        text, found = web.html_document(body, meta)
        if text:
            docs.append((url, "prose", text, found))
        else:
            warnings.append(("no_text", url))
    return docs


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz"])
@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_html_responses_become_documents(tmp_path, name, extractor):
    w.write_warc(tmp_path / name, records())
    docs, warnings = collect([str(tmp_path / name)], extractor=extractor)
    by_url = {d[0]: d for d in docs}
    assert list(by_url) == ["http://a.example/river", "http://b.example/cafe", "http://b.example/guess",
                            "http://b.example/bogus"]
    url, doc_type, text, meta = by_url["http://a.example/river"]
    assert doc_type == "prose" and all(p in text for p in ARTICLE)
    if extractor == "resiliparse":  # trafilatura keeps the menu on some pages this short
        assert not any(b in text for b in BOILERPLATE), text
    assert meta == {"url": url, "date": "2026-01-01T00:00:00Z", "charset": "utf-8", "language": "en",
                    "language_rank": meta["language_rank"]}
    for french in ("http://b.example/cafe", "http://b.example/guess"):
        assert all(p in by_url[french][2] for p in FRENCH), by_url[french][2]
        assert by_url[french][3]["language"] == "fr"
    assert by_url["http://b.example/cafe"][3]["charset"] == "iso8859-1"
    assert Counter(k for k, _ in warnings) == {"not_html": 1, "http_status": 1, "no_text": 1,
                                               "too_large": 1}
    assert "http://c.example/huge: " in dict(warnings)["too_large"]
    assert dict(warnings)["no_text"] == "http://c.example/empty"


def test_broken_records_are_counted_and_the_rest_is_read(tmp_path):
    good = [w.response(f"http://a.example/{i}", page().encode()) for i in range(4)]
    w.write_warc(tmp_path / "ok.warc.gz", good)
    data = (tmp_path / "ok.warc.gz").read_bytes()
    members = [i for i in range(len(data)) if data[i:i + 3] == b"\x1f\x8b\x08"]
    # the second response's gzip member damaged in its middle, and the file cut inside the last one
    damaged = data[:members[2] + 40] + b"\x00" * 40 + data[members[2] + 80:len(data) - 60]
    (tmp_path / "damaged.warc.gz").write_bytes(damaged)
    docs, warnings = collect([str(tmp_path / "damaged.warc.gz")])
    assert [d[0] for d in docs] == ["http://a.example/0", "http://a.example/2"]
    assert [k for k, _ in warnings] == ["broken_record", "broken_record"]
    assert f"the record at byte {members[2]:,} is broken" in warnings[0][1]
    assert "nothing after it" in warnings[1][1]

    w.write_warc(tmp_path / "ok.warc", good)
    plain = (tmp_path / "ok.warc").read_bytes()
    second = plain.index(b"WARC/1.0", plain.index(b"http://a.example/0"))
    length = plain.index(b"Content-Length: ", second)
    lying = plain[:length] + b"Content-Length: 99999999" + plain[plain.index(b"\r\n", length):]
    (tmp_path / "lying.warc").write_bytes(b"not a warc header\r\n" + lying)
    docs, warnings = collect([str(tmp_path / "lying.warc")])
    assert [d[0] for d in docs] == ["http://a.example/0", "http://a.example/2", "http://a.example/3"]
    assert [k for k, _ in warnings] == ["broken_record", "broken_record"]
    assert "Invalid WARC header" in warnings[0][1] and "of 99,999,9" in warnings[1][1]


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_warc_by_url_is_downloaded_once(tmp_path):
    (tmp_path / "site").mkdir()
    w.write_warc(tmp_path / "site" / "crawl.warc.gz", records()[:2])
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "site")))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/crawl.warc.gz"
        docs, _ = collect(urls=[url], cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert [d[0] for d in docs] == ["http://a.example/river"]
    assert (tmp_path / "cache" / "crawl.warc.gz").read_bytes() == \
        (tmp_path / "site" / "crawl.warc.gz").read_bytes()
    again, _ = collect(urls=[url], cache_dir=tmp_path / "cache")  # the server is gone: the cache
    assert [d[:3] for d in again] == [d[:3] for d in docs]


def test_curated_web_documents_keep_url_and_language(tmp_path):
    w.write_warc(tmp_path / "crawl.warc.gz", records())
    cfg = {key: default for key, (default, _) in __import__("prepare").SPEC.items()}
    cfg.update(workers=1, disabled_filters=["toxicity"], min_words=10, target_tokens=10 ** 9,
               sources=[dict(kind="warc", name="crawl", paths=[str(tmp_path / "crawl.warc.gz")])])
    stats = curate.curate(cfg, sources.resolve_sources(cfg["sources"]), tmp_path)
    with gzip.open(tmp_path / "curated" / "crawl-00000.jsonl.gz", "rt") as f:
        kept = [json.loads(line) for line in f]
    assert kept and all(r["meta"]["url"] == r["id"] for r in kept)
    assert {r["meta"]["language"] for r in kept} == {"en", "fr"}
    assert all(set(r["meta"]) == {"url", "date", "charset", "language", "language_rank"} for r in kept)
    assert stats["crawl"]["skipped"]["not_html"] == 1 and stats["crawl"]["dropped"]["no_text"] == 1


def test_bad_warc_specs_are_named():
    with pytest.raises(sources.SourceError, match="paths= .* or urls="):
        sources.resolve_sources([dict(kind="warc")])
    with pytest.raises(sources.SourceError, match="extractor must be"):
        sources.resolve_sources([dict(kind="warc", paths=["a"], extractor="regex")])
    spec = sources.resolve_sources([dict(kind="warc", paths=["/no/such.warc"])])[0]
    with pytest.raises(sources.SourceError, match="/no/such.warc does not exist"):
        list(sources.iter_source(spec, lambda *a: None))


def test_a_missing_optional_package_is_named_before_anything_runs(monkeypatch):
    """A source whose package is not installed stops at the config check, naming the package and
    the requirements file, never half-way through collecting."""
    monkeypatch.setitem(sources.PACKAGES, "warc", ["fastwarc", "no_such_package_here"])
    with pytest.raises(sources.SourceError, match=r"sources\[0\] \(warc\) needs no_such_package_here, "
                                                  r"not installed: pip install -r requirements-extra"):
        sources.resolve_sources([dict(kind="warc", paths=["a.warc"])])
    assert sources.missing_packages(dict(kind="web", extractor="trafilatura")) == []
