"""The pyramid: levels, stages and pieces, and the (Morton) order pieces are computed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Level ``l`` is ``ceil(size / 2**l)``; stage ``s`` computes levels
    ``s*(m+1) .. s*(m+1)+m`` from pieces of ``piece = blocksize * 2**m`` pixels."""

    height: int
    width: int
    blocksize: int
    piece: int
    m: int
    nlevels: int

    @classmethod
    def make(cls, *, height: int, width: int, blocksize: int, piece: int) -> Layout:
        m = int(round(math.log2(piece / blocksize))) if piece >= blocksize else -1
        if m < 0 or blocksize << m != piece:
            raise ValueError(f"piece_size must be blocksize × a power of two, got {piece}")
        nlevels = 0
        while -(-height // 2**nlevels) > blocksize or -(-width // 2**nlevels) > blocksize:
            nlevels += 1
        return cls(height=height, width=width, blocksize=blocksize, piece=piece, m=m,
                   nlevels=nlevels)

    def dims(self, level: int) -> tuple[int, int]:
        return -(-self.height // 2**level), -(-self.width // 2**level)

    def tiles(self, level: int) -> tuple[int, int]:
        h, w = self.dims(level)
        return -(-h // self.blocksize), -(-w // self.blocksize)

    @property
    def nstages(self) -> int:
        return self.nlevels // (self.m + 1) + 1

    def stage_level(self, stage: int) -> int:
        return stage * (self.m + 1)

    def stage_levels(self, stage: int) -> int:
        """How many levels a piece of this stage encodes."""
        return min(self.m, self.nlevels - self.stage_level(stage)) + 1

    def pieces(self, stage: int) -> tuple[int, int]:
        h, w = self.dims(self.stage_level(stage))
        return -(-h // self.piece), -(-w // self.piece)

    def window(self, stage: int, row: int, col: int) -> tuple[slice, slice]:
        h, w = self.dims(self.stage_level(stage))
        p = self.piece
        return slice(row * p, min(h, (row + 1) * p)), slice(col * p, min(w, (col + 1) * p))

    def feeders(self, stage: int, row: int, col: int) -> int:
        """How many pieces of ``stage - 1`` feed piece (row, col) of ``stage``."""
        rows, cols = self.pieces(stage - 1)
        k = 1 << (self.m + 1)
        return (min(rows, (row + 1) * k) - row * k) * (min(cols, (col + 1) * k) - col * k)


def morton(rows: int, cols: int) -> list[tuple[int, int]]:
    def key(rc: tuple[int, int]) -> int:
        code = 0
        for bit in range(max(rows, cols).bit_length()):
            code |= ((rc[0] >> bit) & 1) << (2 * bit + 1) | ((rc[1] >> bit) & 1) << (2 * bit)
        return code

    return sorted(((r, c) for r in range(rows) for c in range(cols)), key=key)
