"""Co-registering rasters for align-raster: the numerical core and its parts.

- :mod:`tools.align.registration`: sub-pixel registration (phase correlation, iterative
  refinement, similarity fits, robust fitting of tie points);
- :mod:`tools.align.pair`: two rasters to co-register: their grids, how matching values
  are read, the map between them, their overlap;
- :mod:`tools.align.match`: tie points matched in windows (fanned out over the cluster)
  and the estimate fitted from them;
- :mod:`tools.align.resample`: one resampling of a raster through a similarity, onto a
  north-up grid;
- :mod:`tools.align.synthetic`: rasters with known geometry, for examples, tests and
  benchmarks.
"""

from tools.align import registration
from tools.align.match import Estimate, coarse_estimate, estimate
from tools.align.pair import Overlap, Pair, make_pair, open_grid, overlap_of
from tools.align.registration import Similarity, apply_affine
from tools.align.resample import resample_similarity
from tools.align.synthetic import Texture, corner_error_px, write_texture

__all__ = [
    "Estimate",
    "Overlap",
    "Pair",
    "Similarity",
    "Texture",
    "apply_affine",
    "coarse_estimate",
    "corner_error_px",
    "estimate",
    "make_pair",
    "open_grid",
    "overlap_of",
    "registration",
    "resample_similarity",
    "write_texture",
]
