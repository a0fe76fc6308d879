"""config/prepare_web_mix.py end to end, with each remote place swapped for a local one: the WARC
file, the web pages and the Wikipedia dump served over HTTP on 127.0.0.1, the repository a bare one
over file://. Every source reaches train.bin, and each document keeps its metadata."""
import bz2
import functools
import gzip
import http.server
import json
import random
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from core import configurator
import prepare
from curation import sources
from benchmarks import warc_files
from test_wikitext import make_dump, page

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("river town bridge market church school harbour mill railway council museum farmer "
         "merchant winter summer valley mountain forest village castle road garden library "
         "teacher doctor painter builder sailor story letter century history famous ancient quiet "
         "busy narrow green golden heavy bright built opened closed crossed painted carried "
         "visited wrote sold grew moved").split()
STOP = "the of and to in a is was for on with by at from that it as".split()


def essay(rng, sentences=8):
    """English-looking sentences of random words (a third of them stop words): distinct enough
    to pass the quality filters and dedup."""
    out = []
    for _ in range(sentences):
        words = [rng.choice(STOP) if rng.random() < 0.35 else rng.choice(WORDS) for _ in range(14)]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def code_file(i):
    return "".join(f"def function_{i}_{j}(value):\n    \"\"\"Return value plus {j}.\"\"\"\n"
                   f"    return value + {j}\n\n\n" for j in range(8))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The local stand-ins: a folder served over HTTP, and a bare git repository."""
    root = tmp_path_factory.mktemp("site")
    rng = random.Random(0)
    serve = root / "www"
    serve.mkdir()
    warc_files.write_warc(serve / "crawl.warc.gz", [
        warc_files.response(f"http://news.example/{i}", warc_files.html_page(
            f"Story {i}", [essay(rng), essay(rng)]).encode()) for i in range(12)])
    for i in range(4):
        (serve / f"pep-{i}.html").write_text(warc_files.html_page(f"PEP {i}", [essay(rng), essay(rng)]))
    (serve / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    (serve / "dump.xml.bz2").write_bytes(bz2.compress(make_dump(
        [page(f"Town {i}", essay(rng) + "\n\n" + essay(rng), pid=i + 1) for i in range(12)]).encode()))
    work = root / "work"
    work.mkdir()
    for i in range(6):
        (work / f"module_{i}.py").write_text(code_file(i))
    (work / "LICENSE").write_text("SPDX-License-Identifier: MIT\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=work, check=True)
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "code.git")], check=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(serve)))
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_web_mix_config_runs_end_to_end_on_local_stand_ins(site, tmp_path):
    root, base = site
    cfg = configurator.parse(prepare.SPEC, [str(ROOT / "config" / "prepare_web_mix.py")])
    assert [s["kind"] for s in sources.resolve_sources(cfg["sources"])] == \
        ["warc", "web", "wiki_dump", "git"]
    local = {"warc": dict(urls=[f"{base}/crawl.warc.gz"]),
             "web": dict(urls=[f"{base}/pep-{i}.html" for i in range(4)], delay_seconds=0.0),
             "wiki_dump": dict(url=f"{base}/dump.xml.bz2"),
             "git": dict(repos=[f"file://{root}/code.git"])}
    cache = str(tmp_path / "downloads")
    for spec in cfg["sources"]:
        spec.update(local[spec["kind"]], cache_dir=cache)
    cfg.update(data_root=str(tmp_path), vocab_size=300, target_tokens=10 ** 9, val_fraction=0.2,
               workers=1, disabled_filters=["toxicity"])
    out = prepare.run(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["tokens_available_per_source"]) == {"common_crawl", "peps", "wiki", "repos"}
    assert all(n > 0 for n in meta["tokens_available_per_source"].values()), meta
    assert np.fromfile(out / "train.bin", dtype=meta["dtype"]).size > 0

    def records(source):
        with gzip.open(out / "curated" / f"{source}-00000.jsonl.gz", "rt") as f:
            return [json.loads(line) for line in f]
    crawl, peps, wiki, repos = (records(s) for s in ("common_crawl", "peps", "wiki", "repos"))
    assert len(crawl) == 12 and all(r["meta"]["url"].startswith("http://news.example/") for r in crawl)
    assert len(peps) == 4 and all(r["meta"]["language"] == "en" for r in peps)
    assert len(wiki) == 12 and "meta" not in wiki[0]
    assert len(repos) == 6 and all(r["meta"]["license"] == "MIT" for r in repos)
    report = (out / "report.md").read_text()
    assert "- repos, license: `MIT` 6" in report and "- peps, language: `en` 4" in report
    assert f"- repos, repo: `file://{root}/code.git` 6" in report
