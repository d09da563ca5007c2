"""A ZIP built while it is sent, for the direct download route (small selections).

Uses ``zipstream-ng`` with the same members and per-file compression as ``bulk-download``
(:mod:`tools.archive.zip_policy`). Sizes are passed along so ZIP64 records are used exactly where a
member needs them; when every member is stored, the final size is known in advance
(:func:`zip_size`), so the route can send ``Content-Length``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

from zipstream import ZipStream

from tools.archive.zip_policy import Member, compress_type

DEFLATE_LEVEL = 6


def stream_zip(members: list[Member]) -> Iterator[bytes]:
    """The archive's bytes, produced lazily; files are read in small chunks as it goes."""
    return iter(_zip_stream(members))


def zip_size(members: list[Member]) -> int | None:
    """The exact archive size when every member is stored, else ``None`` (unknowable)."""
    zs = _zip_stream(members)
    return len(zs) if zs.sized else None


def _zip_stream(members: list[Member]) -> ZipStream:
    kinds = [compress_type(m) for m in members]
    stored_only = all(kind == zipfile.ZIP_STORED for kind in kinds)
    zs = ZipStream(compress_type=zipfile.ZIP_STORED, sized=stored_only)
    for member, kind in zip(members, kinds):
        level = DEFLATE_LEVEL if kind == zipfile.ZIP_DEFLATED else None
        zs.add_path(
            member.path, member.arcname, recurse=False, compress_type=kind, compress_level=level
        )
    return zs
