"""The web source (crawl.py) against a real HTTP server on 127.0.0.1: robots.txt, redirects,
timeouts, retries, non-HTML, broken encodings, size limits, sitemaps, and a cache that makes a rerun
fetch nothing."""
import http.server
import threading
import time
from collections import Counter

import pytest

from curation import sources
from benchmarks import warc_files as w
from test_warc import html_to_documents

ARTICLE = ["The river crossed the old town near the market, where traders sold grain and cloth.",
           "In the nineteenth century a railway reached the town and its population grew quickly."]
FRENCH = ["Le café était fermé à cause de la grève générale des employés de la ville.",
          "Les élèves ont déjà visité le musée où l'on expose des tableaux très anciens."]
HTML = "text/html; charset=utf-8"


def pages(server):
    port = server.server_address[1]
    return {
        "/robots.txt": (200, "text/plain", getattr(server, "robots", b"User-agent: *\nDisallow: /private\n")),
        "/a.html": (200, HTML, w.html_page("River town", ARTICLE).encode()),
        "/b.html": (200, HTML, w.html_page("Railway", ARTICLE[::-1]).encode()),
        "/moved": (301, None, "/b.html"),
        "/to-private": (302, None, f"http://127.0.0.1:{port}/private/x.html"),
        "/loop": (302, None, "/loop"),
        "/private/x.html": (200, HTML, w.html_page("Secret", ARTICLE).encode()),
        "/report.pdf": (200, "application/pdf", b"%PDF-1.4 " * 100),
        "/missing.html": (404, HTML, b"<html>not found</html>"),
        "/mislabelled.html": (200, HTML, w.html_page("Café", FRENCH, lang="fr").encode("latin-1")),
        "/huge.html": (200, HTML, w.html_page("Huge", ARTICLE * 2000).encode()),
        "/slow.html": ("slow", HTML, w.html_page("Slow", ARTICLE).encode()),
        "/flaky.html": ("flaky", HTML, w.html_page("Flaky", FRENCH, lang="fr").encode()),
        "/sitemap.xml": (200, "application/xml", b'<?xml version="1.0"?><sitemapindex xmlns='
                         b'"http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>/pages.xml'
                         b'</loc></sitemap></sitemapindex>'.replace(
                             b"/pages.xml", f"http://127.0.0.1:{port}/pages.xml".encode())),
        "/pages.xml": (200, "application/xml", (
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>http://127.0.0.1:{port}{p}</loc></url>"
                      for p in ("/a.html", "/moved", "/report.pdf")) + "</urlset>").encode()),
    }


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        server.times.append(time.monotonic())
        status, content_type, body = pages(server).get(self.path, (404, HTML, b"no such page"))
        if status == "slow":
            time.sleep(1.0)  # beyond the client's timeout
            status = 200
        if status == "flaky":  # the first answer of each is a 503
            status = 200 if server.requests.count(self.path) > 1 else 503
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", body)
            body = b""
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def start_server(robots=None):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests, httpd.times = [], []
    if robots is not None:
        httpd.robots = robots
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def stop_server(httpd):
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server():
    httpd = start_server()
    yield httpd
    stop_server(httpd)


def crawl(server, tmp_path, paths=(), sitemaps=(), **fields):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    settings = dict(kind="web", urls=[base + p for p in paths] or None,
                    sitemaps=[base + s for s in sitemaps] or None, cache_dir=str(tmp_path / "cache"),
                    delay_seconds=0.0, timeout=0.5, retries=2, backoff_seconds=0.01,
                    max_page_bytes=100_000)
    spec = sources.resolve_sources([{**settings, **fields}])[0]
    warnings = []
    pages = list(sources.iter_source(spec, lambda kind, message: warnings.append((kind, message))))
    return html_to_documents(pages, warnings), warnings


ALL = ["/a.html", "/moved", "/to-private", "/loop", "/private/x.html", "/report.pdf",
       "/missing.html", "/mislabelled.html", "/huge.html", "/slow.html", "/flaky.html"]


def test_every_kind_of_page_is_kept_or_counted(server, tmp_path):
    docs, warnings = crawl(server, tmp_path, ALL)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    by_url = {d[0][len(base):]: d for d in docs}
    assert list(by_url) == ["/a.html", "/moved", "/mislabelled.html", "/flaky.html"]
    assert all(p in by_url["/a.html"][2] for p in ARTICLE) and "Cookie" not in by_url["/a.html"][2]
    assert by_url["/moved"][3]["final_url"] == base + "/b.html"
    mislabelled = by_url["/mislabelled.html"]  # says UTF-8, holds Latin-1: read as what it holds
    assert all(p in mislabelled[2] for p in FRENCH) and mislabelled[3]["language"] == "fr"
    assert mislabelled[3]["charset"] != "utf-8"
    assert Counter(k for k, _ in warnings) == {"disallowed": 2, "too_many_redirects": 1,
                                               "not_html": 1, "http_status": 1, "too_large": 1,
                                               "fetch_failed": 1}
    messages = dict(warnings)
    assert messages["fetch_failed"].startswith(base + "/slow.html: ") and "after 2 attempts" in \
        messages["fetch_failed"]
    assert "disallowed by robots.txt" in messages["disallowed"]
    assert server.requests.count("/flaky.html") == 2  # a 503, then the retry's 200
    assert server.requests.count("/robots.txt") == 1


def test_a_rerun_fetches_nothing_twice(server, tmp_path):
    first, _ = crawl(server, tmp_path, ALL)
    before = list(server.requests)
    again, warnings = crawl(server, tmp_path, ALL)
    assert [d[:3] for d in again] == [d[:3] for d in first]
    assert server.requests[len(before):] == ["/slow.html", "/slow.html"]  # failures only: not cached
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_sitemap_index_lists_the_pages(server, tmp_path):
    docs, warnings = crawl(server, tmp_path, sitemaps=["/sitemap.xml"])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    assert [d[0] for d in docs] == [base + "/a.html", base + "/moved"]
    assert [k for k, _ in warnings] == ["not_html"]


def test_per_host_delay_is_kept(server, tmp_path):
    start = time.monotonic()
    crawl(server, tmp_path, ["/a.html", "/b.html"], delay_seconds=0.3)
    assert time.monotonic() - start >= 0.6  # robots.txt, a.html, b.html: two waits between three


def test_each_host_keeps_its_own_crawl_delay(tmp_path):
    """Host A's robots.txt asks for 1 s between requests, host B's for nothing (delay_seconds 0.05):
    A's requests are 1 s apart, B's are not held back by A's delay."""
    slow, fast = start_server(b"User-agent: *\nCrawl-delay: 1\n"), start_server(b"User-agent: *\n")
    try:
        urls = [f"http://127.0.0.1:{httpd.server_address[1]}{path}"
                for httpd, path in ((slow, "/a.html"), (fast, "/a.html"), (fast, "/b.html"), (slow, "/b.html"))]
        spec = sources.resolve_sources([dict(kind="web", urls=urls, cache_dir=str(tmp_path), delay_seconds=0.05,
                                             timeout=2.0, retries=1)])[0]
        pages = list(sources.iter_source(spec, lambda kind, message: None))
    finally:
        stop_server(slow)
        stop_server(fast)
    assert len(pages) == 4
    assert slow.requests == fast.requests == ["/robots.txt", "/a.html", "/b.html"]
    gaps = {name: [b - a for a, b in zip(httpd.times, httpd.times[1:])]
            for name, httpd in (("slow", slow), ("fast", fast))}
    # robots.txt, then each page a whole Crawl-delay later (as the server sees it: a little jitter)
    assert min(gaps["slow"]) >= 0.95
    assert 0.04 <= min(gaps["fast"]) and max(gaps["fast"]) < 0.5


def test_unreachable_robots_disallows_the_host(tmp_path):
    with socket_closed_port() as port:
        spec = sources.resolve_sources([dict(kind="web", urls=[f"http://127.0.0.1:{port}/a.html"],
                                             cache_dir=str(tmp_path), retries=1, timeout=0.5)])[0]
        warnings = []
        assert list(sources.iter_source(spec, lambda k, m: warnings.append((k, m)))) == []
    assert [k for k, _ in warnings] == ["disallowed"]
    assert "robots.txt could not be fetched" in warnings[0][1]


class socket_closed_port:
    """A port on 127.0.0.1 where nothing listens."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_bad_web_specs_are_named():
    with pytest.raises(sources.SourceError, match="urls= .* or sitemaps="):
        sources.resolve_sources([dict(kind="web")])
    with pytest.raises(sources.SourceError, match="retries must be >= 1"):
        sources.resolve_sources([dict(kind="web", urls=["http://x"], retries=0)])
