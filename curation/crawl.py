"""The `web` source: pages fetched from a list of URLs and/or sitemaps, politely, through an on-disk
cache, and turned into text by the same step as the warc source (web.page_text).

    dict(kind="web", name="blog", sitemaps=["https://example.org/sitemap.xml"], delay_seconds=2)

Politeness and limits, in the order a fetch meets them:
- robots.txt (urllib.robotparser, RFC 9309): a URL its host's robots.txt disallows for our
  user_agent is skipped (`disallowed`); a robots.txt that answers 4xx allows everything, one that
  cannot be fetched (5xx, network) disallows the host for this run. Its Crawl-delay is obeyed.
- one request per `delay_seconds` per host (the larger of it and Crawl-delay);
- redirects followed by hand, at most 5, each hop checked against robots.txt again;
- `timeout` seconds per request, `retries` attempts with exponential backoff on network errors
  and 5xx/429 answers (`fetch_failed` when all fail; not cached, so a rerun tries again);
- at most `max_page_bytes` read (`too_large`).
Every definite answer (a page, a 404, a non-HTML type, a page too large) is cached under cache_dir,
written whole or not at all, so a rerun fetches nothing twice. Pages go to the curate workers as
HTML, as in the warc source; each document keeps {"url", "final_url", "date", "charset",
"language", "language_rank"} as metadata.
"""

import gzip
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from core import atomic
from curation import web

MAX_REDIRECTS = 5
RETRY_STATUSES = {429, 500, 502, 503, 504}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx comes back as an HTTPError, and fetch() follows it itself


OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass
class Response:
    status: int                  # HTTP status, or 0 when no answer came (network error, timeout)
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str = ""              # what went wrong, in words, when status is 0 or the body was cut


@dataclass
class Crawler:
    """What one web source's crawl keeps between requests: the last request time of each host and
    each host's robots.txt."""
    spec: dict
    last_request: dict = field(default_factory=dict)   # host -> time.monotonic() of the last request
    robots: dict = field(default_factory=dict)         # host -> RobotFileParser, or None: disallowed


def _host(url):
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _wait_for_host(crawler, url, delay):
    host = _host(url)
    wait = crawler.last_request.get(host, -1e9) + delay - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    crawler.last_request[host] = time.monotonic()


def _request_once(url, spec):
    request = urllib.request.Request(url, headers={"User-Agent": spec["user_agent"]})
    try:
        with OPENER.open(request, timeout=spec["timeout"]) as answer:
            body = answer.read(spec["max_page_bytes"] + 1)
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, body)
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in (e.headers or {}).items()})
    except (urllib.error.URLError, OSError, ValueError) as e:
        return Response(0, error=str(getattr(e, "reason", None) or e) or type(e).__name__)


def request(crawler, url, delay):
    """One URL, with the host's delay before each attempt and backoff between retries."""
    spec = crawler.spec
    for attempt in range(spec["retries"]):
        if attempt:
            time.sleep(spec["backoff_seconds"] * 2 ** (attempt - 1))
        _wait_for_host(crawler, url, delay)
        response = _request_once(url, spec)
        if response.status and response.status not in RETRY_STATUSES:
            return response
    return response


def robots_for(crawler, url):
    """The host's RobotFileParser (fetched once), or None when the host is off limits this run."""
    host = _host(url)
    if host not in crawler.robots:
        response = cached_request(crawler, f"{host}/robots.txt", crawler.spec["delay_seconds"])
        parser = urllib.robotparser.RobotFileParser()
        if response.status == 200:
            parser.parse(response.body.decode("utf-8", errors="replace").splitlines())
            crawler.robots[host] = parser
        elif 400 <= response.status < 500:
            parser.parse([])  # no robots.txt: everything allowed
            crawler.robots[host] = parser
        else:
            crawler.robots[host] = None
    return crawler.robots[host]


def _cache_path(spec, url):
    key = hashlib.sha1(url.encode("utf-8")).hexdigest()
    return Path(spec["cache_dir"]) / key[:2] / f"{key}.json.gz"


def cached_request(crawler, url, delay):
    """request(), answered from the cache when this URL was fetched before; definite answers are
    stored (not network failures, 5xx or 429: a rerun tries those again)."""
    path = _cache_path(crawler.spec, url)
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            stored = json.load(f)
        return Response(stored["status"], stored["headers"], bytes.fromhex(stored["body"]))
    response = request(crawler, url, delay)
    if response.status and response.status not in RETRY_STATUSES:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path, "wb") as f:
            f.write(gzip.compress(json.dumps({"url": url, "status": response.status,
                                              "headers": response.headers,
                                              "body": response.body.hex()}).encode(), mtime=0))
    return response


def fetch(crawler, url, warn):
    """(final URL, Response) for a page, following redirects; None when skipped (counted)."""
    for _ in range(MAX_REDIRECTS + 1):
        robots = robots_for(crawler, url)
        ua = crawler.spec["user_agent"]
        if robots is None or not robots.can_fetch(ua, url):
            warn("disallowed", f"{url}: " + ("robots.txt could not be fetched" if robots is None
                                             else "disallowed by robots.txt") + ", skipped")
            return None
        delay = max(crawler.spec["delay_seconds"], float(robots.crawl_delay(ua) or 0))
        response = cached_request(crawler, url, delay)
        if response.status in (301, 302, 303, 307, 308) and response.headers.get("location"):
            url = urllib.parse.urljoin(url, response.headers["location"])
            continue
        if response.status == 0 or response.status in RETRY_STATUSES:
            warn("fetch_failed", f"{url}: {response.error or f'HTTP {response.status}'} after "
                                 f"{crawler.spec['retries']} attempts, skipped (a rerun tries again)")
            return None
        return url, response
    warn("too_many_redirects", f"{url}: more than {MAX_REDIRECTS} redirects, skipped")
    return None


def sitemap_urls(crawler, url, warn, depth=0):
    """The page URLs a sitemap lists (<urlset>), following sitemap indexes (<sitemapindex>)."""
    found = fetch(crawler, url, warn)
    if not found or found[1].status != 200:
        if found:
            warn("bad_sitemap", f"{url}: HTTP {found[1].status}, skipped")
        return []
    body = found[1].body
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        warn("bad_sitemap", f"{url}: not valid XML ({e}), skipped")
        return []
    locations = [el.text.strip() for el in root.iter() if el.tag.endswith("loc") and el.text]
    if root.tag.endswith("sitemapindex") and depth < 3:
        return [u for loc in locations for u in sitemap_urls(crawler, loc, warn, depth + 1)]
    return locations


def iter_web(spec, warn):
    """(url, "html", body, metadata) for every page of the source's urls and sitemaps (the curate
    workers turn each into text: web.html_document)."""
    crawler = Crawler(spec)
    urls = list(spec["urls"] or [])
    for sitemap in spec["sitemaps"] or []:
        urls += sitemap_urls(crawler, sitemap, warn)
    for url in dict.fromkeys(urls):
        found = fetch(crawler, url, warn)
        if not found:
            continue
        final_url, response = found
        content_type = response.headers.get("content-type", "")
        charset = next((p.split("=", 1)[1].strip(" \"'") for p in content_type.split(";")[1:]
                        if p.strip().lower().startswith("charset=")), None)
        if web.html_response(url, response.status, content_type, response.body, spec, warn):
            yield url, "html", response.body, web.page_metadata(
                url, charset, spec["extractor"], final_url=final_url,
                date=response.headers.get("date", ""))
