"""Files written whole or not at all, for every script that writes one.

A file is written under a temporary name beside its target (.NAME.tmp), flushed and fsynced, then
renamed over the target, and the folder is fsynced so the rename itself survives a crash. A reader
sees the old file or the new one, never a mix; an interrupted write leaves at most the temporary.

    with atomic.replacing(path, "wb") as f:
        torch.save(obj, f)
    atomic.write_text(path, text)
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path, mode="w"):
    """An open temporary file that replaces path when the block ends without an exception."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # folders cannot be opened or fsynced on some systems
        pass


def write_text(path, text):
    with replacing(path) as f:
        f.write(text)
