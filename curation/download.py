"""Resumable HTTP downloads, verified by checksum and renamed into place only when whole (the
wiki_dump and warc sources' URLs)."""

import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(RuntimeError):
    pass


def verify(path, spec):
    """The algorithm of the first checksum spec names (sha256, sha1, md5) that path matches, or None
    when spec names none; DownloadError when it does not match."""
    for algo in ("sha256", "sha1", "md5"):
        if spec.get(algo):
            h = hashlib.new(algo)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != spec[algo].lower():
                raise DownloadError(f"{path}: {algo} is {h.hexdigest()}, expected {spec[algo]}; "
                                    f"the file is corrupt: delete it and run again")
            return algo
    return None


def download(url, dest, expected=None, retries=3, timeout=30.0, progress=None):
    """Download url to dest, resuming from dest + '.part' with HTTP Range; verify; rename at the end.

    expected: {'sha256'|'sha1'|'md5': hexdigest} or None (then only the size is checked against the
    server's Content-Length). Raises DownloadError naming the URL and byte position on failure.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{dest}.part")
    total, last_error = None, None
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status == 200:
                    have = 0  # server ignored the Range header: start again
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        f.write(block)
                        have += len(block)
                        if progress:
                            progress(have, total)
            if total is not None and have != total:
                raise DownloadError(f"connection closed at byte {have:,} of {total:,}")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch: the .part file is complete
                break
            if 400 <= e.code < 500:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            last_error = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, socket.timeout, DownloadError) as e:
            last_error = str(getattr(e, "reason", None) or e)
        have = part.stat().st_size if part.exists() else 0
        if attempt == retries:
            raise DownloadError(f"{url}: failed at byte {have:,}"
                                f"{f' of {total:,}' if total else ''} after {retries} attempts "
                                f"({last_error}); run again to resume from {part}")
        time.sleep(min(2 ** attempt, 30) * 0.1)
    spec = expected or {}
    try:
        verify(part, spec)
    except DownloadError:
        os.replace(part, f"{dest}.corrupt")
        raise
    os.replace(part, dest)
    return dest
