"""The `git` source: public code repositories by URL, cloned shallow with git into a cache, each
repository's license read from its license files, and only the files of allowed licenses and
languages kept. Vendored, generated and minified files are dropped by the path rules below.

    dict(kind="git", name="repos", repos=["https://github.com/karpathy/nanoGPT"],
         languages=["python"], licenses=PERMISSIVE)

A repository is cloned once (`git clone --depth 1` into cache_dir, under a temporary name that is
renamed when the clone is complete); a rerun reads the cached clone and fetches nothing. Each
document carries {"repo", "path", "commit", "license", "language"} as metadata.
"""

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

LANGUAGES = {  # language -> file extensions
    "python": (".py", ".pyi"), "c": (".c", ".h"), "cpp": (".cc", ".cpp", ".cxx", ".hpp", ".hh"),
    "cuda": (".cu", ".cuh"), "rust": (".rs",), "go": (".go",), "java": (".java",),
    "javascript": (".js", ".mjs", ".cjs"), "typescript": (".ts", ".tsx"), "shell": (".sh", ".bash"),
    "ruby": (".rb",), "julia": (".jl",), "lua": (".lua",), "sql": (".sql",), "markdown": (".md",),
}
PROSE_LANGUAGES = {"markdown"}  # documentation: judged by the prose rules
PERMISSIVE = ["MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Zlib",
              "Unlicense", "CC0-1.0", "PSF-2.0", "BSL-1.0"]

# Path rules, each with what it catches. A path is dropped by the first rule that matches it.
VENDORED_DIRS = {"vendor", "vendored", "third_party", "third-party", "thirdparty", "node_modules",
                 "bower_components", "external", "extern", "site-packages", ".venv", "venv", "dist",
                 "build", "__pycache__"}  # copies of other projects' code, and build outputs
GENERATED_NAMES = ["*_pb2.py", "*_pb2_grpc.py", "*.pb.go", "*.pb.cc", "*.pb.h", "*_generated.*",
                   "*.generated.*", "*.designer.cs", "*_gen.go"]  # protobuf and code generators
MINIFIED_NAMES = ["*.min.js", "*.min.css", "*-min.js", "*.bundle.js", "*.packed.js"]

LICENSE_FILES = re.compile(r"^(licen[cs]e|copying|unlicense)([-_.].*)?$", re.IGNORECASE)
SPDX = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+-]+)")
# (SPDX id, phrases that must all appear in the license text, normalised as by _words), checked in
# order: the more specific texts first (the LGPL and AGPL texts also name the GPL; ISC is 0BSD plus
# a notice clause; BSD-3-Clause is BSD-2-Clause plus the "neither the name" clause).
LICENSE_RULES = [
    ("AGPL-3.0", ["gnu affero general public license", "version 3"]),
    ("LGPL-3.0", ["gnu lesser general public license", "version 3"]),
    ("LGPL-2.1", ["gnu lesser general public license", "version 2.1"]),
    ("GPL-3.0", ["gnu general public license", "version 3"]),
    ("GPL-2.0", ["gnu general public license", "version 2"]),
    ("MPL-2.0", ["mozilla public license", "2.0"]),
    ("Apache-2.0", ["apache license", "version 2.0"]),
    ("BSL-1.0", ["boost software license"]),
    ("Unlicense", ["this is free and unencumbered software released into the public domain"]),
    ("CC0-1.0", ["cc0 1.0 universal"]),
    ("PSF-2.0", ["python software foundation license"]),
    ("ISC", ["permission to use copy modify and or distribute this software for any purpose with or "
             "without fee is hereby granted provided that the above copyright notice and this "
             "permission notice appear in all copies"]),
    ("0BSD", ["permission to use copy modify and or distribute this software for any purpose with or "
              "without fee is hereby granted"]),
    ("MIT", ["permission is hereby granted free of charge to any person obtaining a copy",
             "the above copyright notice and this permission notice shall be included"]),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "neither the name"]),
    ("BSD-2-Clause", ["redistribution and use in source and binary forms"]),
    ("Zlib", ["altered source versions must be plainly marked as such"]),
]


class RepoError(RuntimeError):
    pass


def _words(text):
    return " ".join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)*", text.lower()))


def identify_license(text):
    """The SPDX id of one license file's text (an SPDX-License-Identifier line wins), or None."""
    spdx = SPDX.search(text)
    if spdx:
        return spdx.group(1)
    words = _words(text)
    for spdx_id, phrases in LICENSE_RULES:
        if all(phrase in words for phrase in phrases):
            return spdx_id
    return None


def repo_licenses(root):
    """{license file name: SPDX id or "unknown"} for the license files at the repository's root."""
    found = {}
    for path in sorted(Path(root).iterdir()):
        if path.is_file() and not path.is_symlink() and LICENSE_FILES.match(path.name):
            text = path.read_bytes()[:200_000].decode("utf-8", errors="replace")
            found[path.name] = identify_license(text) or "unknown"
    return found


def path_rule(path):
    """("vendored" | "generated" | "minified", why) for a path the rules drop, else None."""
    parts = path.split("/")
    vendored = VENDORED_DIRS.intersection(parts[:-1])
    if vendored:
        return "vendored", f"under {sorted(vendored)[0]}/"
    name = parts[-1]
    for kind, patterns in (("generated", GENERATED_NAMES), ("minified", MINIFIED_NAMES)):
        for pattern in patterns:
            if fnmatch.fnmatch(name.lower(), pattern):
                return kind, f"name matches {pattern}"
    return None


def repo_name(url):
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name[:-4] if name.endswith(".git") else name


def _git(args, cwd=None, timeout=None):
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}  # never ask for a password
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RepoError(f"git {args[0]} took longer than {timeout} s") from None
    except FileNotFoundError:
        raise RepoError("the git command is not installed (the git source needs it)") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RepoError(f"git {args[0]} failed: {lines[-1] if lines else done.returncode}")
    return done.stdout


def clone(url, cache_dir, branch=None, timeout=600):
    """The path of a shallow clone of url in cache_dir: made once (under a temporary name, renamed
    when complete), then reused as it is."""
    key = hashlib.sha1(f"{url}@{branch or ''}".encode()).hexdigest()[:10]
    dest = Path(cache_dir) / f"{repo_name(url)}-{key}"
    if (dest / ".git").is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git(["clone", "--depth", "1", "--quiet", "--no-tags", *(["--branch", branch] if branch else []),
              "--", url, str(tmp)], timeout=timeout)
    except RepoError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)
    return dest


def iter_repo_files(spec, root, url, license_id, commit, warn):
    """(doc_id, doc_type, raw, metadata) for the repository's tracked files that the rules keep."""
    extensions = {ext: lang for lang in spec["languages"] for ext in LANGUAGES[lang]}
    name = repo_name(url)
    for path in _git(["ls-files", "-z"], cwd=root).split("\0"):
        language = extensions.get(os.path.splitext(path)[1].lower())
        if not path or language is None:
            continue
        dropped = path_rule(path)
        if dropped:
            warn(dropped[0], f"{url}: {path}: {dropped[1]}, skipped")
            continue
        file = root / path
        if file.is_symlink() or not file.is_file():
            warn("not_a_file", f"{url}: {path}: a symlink or submodule, skipped")
            continue
        size = file.stat().st_size
        if size > spec["max_file_bytes"]:
            warn("too_large", f"{url}: {path}: {size:,} bytes > max_file_bytes="
                              f"{spec['max_file_bytes']:,}, skipped")
            continue
        doc_type = "prose" if language in PROSE_LANGUAGES else "code"
        yield (f"{name}/{path}", doc_type, file.read_bytes(),
               {"repo": url, "path": path, "commit": commit, "license": license_id,
                "language": language})


def iter_git(spec, warn):
    """The git source: every repository in spec["repos"], cloned (or read from the cache)."""
    for url in spec["repos"]:
        try:
            root = clone(url, spec["cache_dir"], spec["branch"], spec["clone_timeout"])
            commit = _git(["rev-parse", "HEAD"], cwd=root).strip()
        except RepoError as e:
            warn("clone_failed", f"{url}: {e}; skipped (a rerun tries again)")
            continue
        licenses = repo_licenses(root)
        allowed = [lic for lic in licenses.values() if lic in spec["licenses"]]
        if not allowed:
            found = ", ".join(f"{f}: {lic}" for f, lic in licenses.items()) or "no license file"
            warn("license_not_allowed" if licenses and "unknown" not in licenses.values()
                 else "license_unknown", f"{url}: {found}; licenses={spec['licenses']}, skipped")
            continue
        yield from iter_repo_files(spec, root, url, allowed[0], commit, warn)
