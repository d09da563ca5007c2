"""Archives in and out: reading one member by member, and writing ZIPs of dataset files.

- :mod:`tools.archive.read`: every member of a ZIP, TAR, 7z or single-file archive checked
  before a byte is written (paths, links, sizes, compression ratio), then read in bounded
  chunks (archive-extract);
- :mod:`tools.archive.zip_policy`: what goes into a ZIP of dataset files and how each file is
  compressed (bulk-download and the direct download route);
- :mod:`tools.archive.zip_stream`: a ZIP built while it is sent (the direct download route).
"""

from tools.archive.read import EXTRACTORS, MAX_ENTRIES, Request, archive_format
from tools.archive.zip_policy import Member, archive_members, compress_type
from tools.archive.zip_stream import stream_zip, zip_size

__all__ = [
    "EXTRACTORS",
    "MAX_ENTRIES",
    "Member",
    "Request",
    "archive_format",
    "archive_members",
    "compress_type",
    "stream_zip",
    "zip_size",
]
