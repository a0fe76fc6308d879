"""The resumable downloader against a real HTTP server on 127.0.0.1."""
import bz2
import hashlib
import http.server
import threading

import pytest

from curation import sources
from curation.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file with Range support; the server's `cut_after` makes the next responses
    stop after that many bytes (a connection that fails mid-download)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path == "/dump.xml.bz2":
            body, start = server.dump, 0
        elif self.path != "/file":
            self.send_error(404, "Not Found")
            return
        else:
            body, start = PAYLOAD, 0
        status = 200
        if self.headers.get("Range") and server.ranges:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        chunk = body[start:]
        if server.cuts:
            chunk = chunk[: server.cuts.pop(0)]
        self.wfile.write(chunk)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests, httpd.cuts, httpd.ranges, httpd.dump = [], [], True, b""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, path="/file"):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_plain_download_with_checksum(server, tmp_path):
    dest = download(url(server), tmp_path / "f.bin",
                            expected={"sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert server.requests == [None]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cuts = [300_000]  # the first response dies after 300 kB
    dest = download(url(server), tmp_path / "f.bin", retries=3)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=300000-"]


def test_rerun_resumes_a_part_file_left_by_an_earlier_run(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:123_456])
    dest = download(url(server), tmp_path / "f.bin")
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=123456-"]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 100)
    assert download(url(server), tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_persistent_failure_names_url_and_position(server, tmp_path):
    server.cuts = [100_000, 50_000, 25_000]
    with pytest.raises(DownloadError) as info:
        download(url(server), tmp_path / "f.bin", retries=3)
    message = str(info.value)
    assert url(server) in message and "failed at byte 175,000 of 1,048,576" in message
    assert "run again to resume" in message
    assert (tmp_path / "f.bin.part").stat().st_size == 175_000 and not (tmp_path / "f.bin").exists()
    # and the next run picks up where it stopped
    assert download(url(server), tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests[-1] == "bytes=175000-"


def test_checksum_mismatch_is_an_error_and_keeps_nothing_that_looks_complete(server, tmp_path):
    with pytest.raises(DownloadError, match="md5 is .* expected"):
        download(url(server), tmp_path / "f.bin", expected={"md5": "0" * 32})
    assert not (tmp_path / "f.bin").exists() and (tmp_path / "f.bin.corrupt").exists()


def test_http_errors_are_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(url(server, "/missing"), tmp_path / "m.bin")


def test_wiki_dump_source_downloads_then_parses(server, tmp_path):
    from test_wikitext import DUMP
    server.dump = bz2.compress(DUMP.encode())
    spec = sources.resolve_sources([dict(kind="wiki_dump", url=url(server, "/dump.xml.bz2"),
                                         cache_dir=str(tmp_path / "dl"))])[0]
    docs = list(sources.iter_source(spec, lambda *a: None))
    assert len(docs) == 2 and (tmp_path / "dl" / "dump.xml.bz2").exists()
