"""Paging of the list routes: integer query parameters within what SQL takes, and ``skip``
and ``take`` (clamped to 1..:data:`MAX_TAKE`); a page is :class:`procplat.core.views.Page`."""

from __future__ import annotations

from procplat.errors import BadRequest

MAX_TAKE = 200
SQL_INT_MAX = 2**31 - 1  # numbers from a query meet the index's 32-bit integer columns


def int_param(value: str | int | None, name: str, default: int) -> int:
    """A query parameter as an integer within what SQL takes (400 when not an integer)."""
    try:
        number = int(value if value is not None else default)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer") from None
    return max(-SQL_INT_MAX, min(SQL_INT_MAX, number))


def clamp_take(skip: str | int | None, take: str | int | None) -> tuple[int, int]:
    skip_n = max(0, int_param(skip, "skip", 0))
    take_n = int_param(take, "take", 50)
    return skip_n, min(MAX_TAKE, max(1, take_n))

