"""The git source (repos.py): local bare repositories cloned over file:// and over `git daemon` on
127.0.0.1; licenses detected, vendored/generated/minified files dropped, failures counted."""
import gzip
import json
import shutil
import socket
import subprocess
import time
from collections import Counter

import pytest

from conftest import free_port
from curation import curate
from curation import repos
from curation import sources

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")

MIT = """MIT License

Copyright (c) 2026 Example Person

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
"""
APACHE = """                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/
"""
GPL3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
 Everyone is permitted to copy and distribute verbatim copies
"""
GPL2 = "GNU GENERAL PUBLIC LICENSE\nVersion 2, June 1991\n"
LGPL21 = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 2.1, February 1999\n(the GNU General Public License)"
AGPL = "GNU AFFERO GENERAL PUBLIC LICENSE\nVersion 3, 19 November 2007\nGNU General Public License"
BSD3 = """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
* Neither the name of the copyright holder nor the names of its contributors may be used"""
BSD2 = BSD3.rsplit("\n", 1)[0]
ISC = """Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies."""
ZERO_BSD = ISC.split(", provided")[0] + "."
UNLICENSE = "This is free and unencumbered software released into the public domain."


@pytest.mark.parametrize("text,expected", [
    (MIT, "MIT"), (APACHE, "Apache-2.0"), (GPL3, "GPL-3.0"), (GPL2, "GPL-2.0"), (LGPL21, "LGPL-2.1"),
    (AGPL, "AGPL-3.0"), (BSD3, "BSD-3-Clause"), (BSD2, "BSD-2-Clause"), (ISC, "ISC"),
    (ZERO_BSD, "0BSD"), (UNLICENSE, "Unlicense"), ("Mozilla Public License Version 2.0", "MPL-2.0"),
    ("# SPDX-License-Identifier: BSD-3-Clause\nanything", "BSD-3-Clause"),
    ("All rights reserved. Do not copy.", None), ("", None)])
def test_license_texts_are_identified(text, expected):
    assert repos.identify_license(text) == expected


@pytest.mark.parametrize("path,kind", [
    ("pkg/a.py", None), ("vendor/lib.py", "vendored"), ("src/third_party/x/y.c", "vendored"),
    ("web/node_modules/a/index.js", "vendored"), ("proto/msg_pb2.py", "generated"),
    ("api/service.pb.go", "generated"), ("static/app.min.js", "minified"),
    ("vendor.py", None), ("build_tools.py", None)])
def test_path_rules(path, kind):
    rule = repos.path_rule(path)
    assert (rule[0] if rule else None) == kind


def git(*args, cwd=None):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True)


def make_repo(root, name, files):
    """A bare repository root/name.git with one commit holding files {path: text or bytes}."""
    work = root / "work" / name
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (work / path).write_bytes(content)
        else:
            (work / path).write_text(content)
    git("init", "-q", str(work))
    if name == "mitproj":
        (work / "link.py").symlink_to("pkg/a.py")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / f"{name}.git"))
    return root / f"{name}.git"


CODE = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    make_repo(root, "mitproj", {
        "LICENSE": MIT, "pkg/a.py": CODE, "pkg/b.py": CODE.replace("add", "sub"),
        "README.md": "# mitproj\n\nAdds numbers.\n", "vendor/lib.py": CODE, "pkg/msg_pb2.py": CODE,
        "static/app.min.js": "var a=1;", "static/app.js": "var a = 1;\n", "big.py": "x = 1\n" * 400,
        "data.bin": b"\x00\x01"})
    make_repo(root, "gplproj", {"COPYING": GPL3, "a.py": CODE})
    make_repo(root, "nolicense", {"a.py": CODE})
    make_repo(root, "custom", {"LICENSE.txt": "All rights reserved.", "a.py": CODE})
    make_repo(root, "dual", {"LICENSE-APACHE": APACHE, "LICENSE-MIT": MIT, "src/lib.rs": "fn main() {}\n"})
    return root


def collect(spec_fields, warnings=None):
    spec = sources.resolve_sources([dict(kind="git", **spec_fields)])[0]
    warnings = [] if warnings is None else warnings
    docs = list(sources.iter_source(spec, lambda kind, message: warnings.append((kind, message))))
    return docs, warnings


def test_git_source_over_file_urls(served, tmp_path):
    cache = tmp_path / "cache"
    urls = [f"file://{served}/{n}.git" for n in ("mitproj", "gplproj", "nolicense", "custom", "dual")]
    docs, warnings = collect(dict(repos=urls + [f"file://{served}/missing.git"], cache_dir=str(cache),
                                  languages=["python", "markdown", "rust", "javascript"],
                                  max_file_bytes=1000))
    ids = sorted(d[0] for d in docs)
    assert ids == ["dual/src/lib.rs", "mitproj/README.md", "mitproj/pkg/a.py", "mitproj/pkg/b.py",
                   "mitproj/static/app.js"]
    by_id = {d[0]: d for d in docs}
    doc_id, doc_type, raw, meta = by_id["mitproj/pkg/a.py"]
    assert doc_type == "code" and raw == CODE.encode() and by_id["mitproj/README.md"][1] == "prose"
    assert meta["repo"] == urls[0] and meta["path"] == "pkg/a.py" and meta["license"] == "MIT"
    assert meta["language"] == "python" and len(meta["commit"]) == 40
    assert by_id["dual/src/lib.rs"][3]["license"] in ("Apache-2.0", "MIT")
    kinds = Counter(kind for kind, _ in warnings)
    assert kinds == {"vendored": 1, "generated": 1, "minified": 1, "too_large": 1, "not_a_file": 1,
                     "license_not_allowed": 1, "license_unknown": 2, "clone_failed": 1}
    messages = dict((k, m) for k, m in warnings if k in ("license_not_allowed", "clone_failed"))
    assert "gplproj.git: COPYING: GPL-3.0; licenses=" in messages["license_not_allowed"]
    assert "missing.git" in messages["clone_failed"] and "git clone failed" in messages["clone_failed"]
    assert not list(cache.glob("*.tmp"))  # the failed clone left nothing behind
    assert len(list(cache.iterdir())) == 5


def start_git_daemon(served, attempts=3):
    """(process, port) of `git daemon` serving the folder on a free port, listening; started again
    on a fresh port when it exits first (another process took the port after it was picked)."""
    for _ in range(attempts):
        port = free_port()
        daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all",
                                   f"--base-path={served}", "--listen=127.0.0.1", f"--port={port}",
                                   str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while daemon.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return daemon, port
            except OSError:
                time.sleep(0.1)
        daemon.kill()
        daemon.wait()
    raise AssertionError(f"git daemon did not start in {attempts} attempts")


def test_git_daemon_then_cache_without_network(served, tmp_path):
    daemon, port = start_git_daemon(served)
    try:
        fields = dict(repos=[f"git://127.0.0.1:{port}/mitproj.git"], cache_dir=str(tmp_path))
        for _ in range(100):  # until the daemon answers
            docs, warnings = collect(fields)
            if docs:
                break
            shutil.rmtree(tmp_path, ignore_errors=True)
            time.sleep(0.1)
    finally:
        daemon.terminate()
        daemon.wait()
    assert sorted(d[0] for d in docs) == ["mitproj/big.py", "mitproj/pkg/a.py", "mitproj/pkg/b.py"]
    again, warnings = collect(fields)  # the daemon is gone: the cached clone is read
    assert [d[:3] for d in again] == [d[:3] for d in docs]
    assert not any(kind == "clone_failed" for kind, _ in warnings)


def test_curated_records_keep_the_metadata_and_the_report_names_skipped_repos(served, tmp_path):
    cfg = {key: default for key, (default, _) in __import__("prepare").SPEC.items()}
    cfg.update(workers=1, min_chars=10, disabled_filters=["toxicity"], target_tokens=10 ** 9,
               report_examples=1,  # every repository left out is still named, not just one
               sources=[dict(kind="git", name="repos", cache_dir=str(tmp_path / "cache"),
                             repos=[f"file://{served}/{n}.git" for n in ("mitproj", "gplproj",
                                                                         "nolicense", "custom")])])
    stats = curate.curate(cfg, sources.resolve_sources(cfg["sources"]), tmp_path)
    with gzip.open(tmp_path / "curated" / "repos-00000.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    assert {r["id"] for r in records} == {"mitproj/big.py", "mitproj/pkg/a.py", "mitproj/pkg/b.py"}
    assert all(r["meta"]["license"] == "MIT" and r["meta"]["path"] == r["id"].split("/", 1)[1]
               for r in records)
    assert stats["repos"]["skipped"]["license_not_allowed"] == 1
    assert "gplproj.git" in stats["repos"]["skipped_examples"]["license_not_allowed"][0]
    unknown = stats["repos"]["skipped_examples"]["license_unknown"]
    assert len(unknown) == 2 and "nolicense.git: no license file" in unknown[0]
    assert "custom.git: LICENSE.txt: unknown" in unknown[1]
    assert stats["repos"]["kept_by"]["license"] == {"MIT": 3}


def test_bad_git_specs_are_named():
    with pytest.raises(sources.SourceError, match="repos"):
        sources.resolve_sources([dict(kind="git")])
    with pytest.raises(sources.SourceError, match="unknown language.*'cobol'"):
        sources.resolve_sources([dict(kind="git", repos=["x"], languages=["cobol"])])
