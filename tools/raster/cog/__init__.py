"""The one way the project writes a Cloud-Optimized GeoTIFF from a lazy (band, y, x) DataArray.

:func:`write_cog` cuts the raster into square *pieces* (2048² by default, or the source
chunk size when larger; always aligned to the 512² TIFF tiles) and runs one task per piece
on the cluster the caller runs on (``worker_client`` inside a Dask worker, the default
``distributed`` client in a notebook or test, a local thread pool otherwise). A task
computes its window of the source graph on its own (synchronously, in the task), cuts it
into tiles, applies the TIFF predictor and compresses each tile with libdeflate
(``imagecodecs``; it releases the GIL, so threads compress in parallel), then halves the
window (2×2 average, or nearest) and encodes the overview tiles that fall inside it
(a 2048² piece holds whole tiles of three levels: 2048², 1024² and 512² pixels). What is
left (a 256² thumbnail of the piece) goes back to the caller, which gathers 8×8 such
thumbnails into a 2048² piece of the next level and submits it like any other piece, so
every level is computed from the one above, in parallel, from bounded windows. Pieces are
submitted in Morton (Z) order through a window of 2 × the cluster's threads, so only a few
pieces and at most one or two unfinished next-level pieces are ever alive.

Each task ticks the caller's progress as it encodes a full-resolution tile
(:mod:`tools.runtime.piece_progress`), so the percent of phase ``rendering`` moves tile by tile
rather than piece by piece (a 2048² piece is 44% of a 3072² raster).

The caller appends the compressed tiles, as they arrive, to a spool file next to the
destination, each already framed the way GDAL frames COG tiles (a 4-byte size before, the
last 4 bytes repeated after). At the end it writes the COG itself: the TIFF header, GDAL's
"ghost" structural metadata, all IFDs (main image, then overviews from the largest), and
then the tile data from the smallest overview to the full resolution in row-major order,
copied from the spool with ``copy_file_range``. The GeoTIFF tags (CRS, transform, nodata,
tags and band descriptions) are taken from a 1×1 GeoTIFF that GDAL writes in memory, so
they are encoded exactly as GDAL encodes them. Everything is written under temporary
names in the destination folder and the COG is renamed into place at the end; on
cancellation or error both are removed.

Layout and sizes follow GDAL's COG driver: overview *i* is ``ceil(size / 2**i)`` and
overviews go on until both sides fit in one block; the image keeps its exact size (no
padding); the file is BigTIFF only when it would not fit in 4 GiB.

Why this and not the alternatives (measured by ``benchmarks/cog_write_strategies.py`` on
this 2-core machine with the CPUs otherwise idle, best of 2 runs: 8192² × 4-band uint8
RGBA read from a tiled DEFLATE GeoTIFF, written as DEFLATE level 6 with the horizontal
predictor, 512² tiles, average overviews; wall time, CPU seconds and peak resident memory of the whole
process tree, interpreters and ``GDAL_CACHEMAX=128`` included; "COG" is ``rio_cogeo``'s
verdict; every output had the source's size and pixels unless noted):

=====================================================================  ======  =====  ========  ===
strategy                                                               wall s  CPU s  peak RSS  COG
=====================================================================  ======  =====  ========  ===
a1 rasterio block loop, 1 thread, tiled GTiff + ``build_overviews``    24.0    24.0   0.29 GB   no
a2 same with GDAL ``NUM_THREADS=ALL_CPUS``                             12.2    23.8   0.32 GB   no
(1) odc-geo ``save_cog_with_dask``, dask threads                       13.0    24.1   0.63 GB   yes
(3) dask chunks → one writer (uncompressed GTiff), GDAL COG copy       13.3    26.0   0.50 GB   yes
    with ``NUM_THREADS=ALL_CPUS``
(2) ``write_cog``, local threads                                       6.7     12.7   0.40 GB   yes
(2) ``write_cog``, LocalCluster client (2 worker processes)            8.0     15.5   0.82 GB   yes
=====================================================================  ======  =====  ========  ===

At 16384² (4× the pixels) the peak stays where it was: 0.42 GB with local threads, 1.03 GB
on the LocalCluster (three interpreters). GDAL (rasterio's wheels use libdeflate too)
builds overviews by reading the full resolution back and decompressing it, and its COG copy
re-reads and re-encodes everything; ``write_cog`` encodes every tile once from pixels it
already holds, so it needs half the CPU, and it keeps both cores busy to the end, overviews
included. odc-geo (libdeflate via tifffile as well) spends about as much CPU as GDAL,
writes band-interleaved planes, does not mark the alpha band, and pads the image: a
1000×777 RGBA came back as 1000×778 (ColorInterp gray, undefined ×3), which rules it out.

Caveats: each piece computes its window of the graph on its own, so a graph that depends
on a whole-raster reduction (percentiles, min/max) must have it computed (or persisted)
first, or every piece recomputes it; source chunks that do not line up with the pieces are
computed once per piece that overlaps them (a log line says so). Overviews are computed
from the level above (like GDAL's), averaging only valid pixels: not nodata, not NaN, and
alpha > 0 when ``alpha`` is set; the alpha band itself is averaged over all pixels.
"""

from tools.raster.cog._codec import Resampling
from tools.raster.cog._write import CogInfo, write_cog

__all__ = ["CogInfo", "Resampling", "write_cog"]
