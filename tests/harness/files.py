"""Files for tests: a folder tree's snapshot (to compare before and after) and big text."""

from __future__ import annotations

import functools
import hashlib
import os
import random
from pathlib import Path

Snapshot = dict[str, tuple[str | int, ...]]


def tree_snapshot(top: Path, *, skip: str | None = None) -> Snapshot:
    """Every file, folder and symlink under ``top`` (links not followed), by its path relative
    to ``top``: ``("file", size, sha256)``, ``("dir",)`` or ``("link", target)``. ``skip``: a
    folder (relative path) left out with all it holds. Empty when ``top`` does not exist."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        if skip is not None and here.relative_to(top).as_posix() == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            rel = path.relative_to(top).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                body = path.read_bytes()
                found[rel] = ("file", len(body), hashlib.sha256(body).hexdigest())
    return found


@functools.lru_cache(maxsize=8)
def _text_block(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [hashlib.sha1(str(i).encode()).hexdigest()[: rng.randint(3, 12)] for i in range(5000)]
    lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(40_000))
    return "\n".join(lines).encode()


def big_text(n_bytes: int, seed: int = 0) -> bytes:
    """Text that deflates at ~30 MB/s (slow enough to keep a task busy for a while).

    A 2 MB block repeated: deflate's 32 KiB window cannot see the repetition."""
    block = _text_block(seed)
    return (block * (n_bytes // len(block) + 1))[:n_bytes]
