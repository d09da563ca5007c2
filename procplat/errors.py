"""The service's error hierarchy and the one table mapping it to HTTP statuses.

    ProcplatError
    ├── BadRequest            400  (unknown tool, schema errors, unsafe path, missing entry)
    ├── Unauthorized          401  (no or bad credentials where they are needed)
    ├── Forbidden             403  (authenticated but not allowed)
    ├── NotFound              404  (unknown or invisible org, dataset, task, file)
    ├── MethodNotAllowed      405
    ├── Conflict              409
    ├── Gone                  410  (artifact expired)
    ├── PayloadTooLarge       413  (body too large, estimated output above quota)
    ├── RangeNotSatisfiable   416
    ├── TooManyRequests       429  (concurrency quota; carries Retry-After)
    ├── ServiceUnavailable    503  (the index cannot be reached; carries Retry-After)
    └── InsufficientStorage   507  (the disk is full: ENOSPC or EDQUOT while storing)

Tool errors (:mod:`tools.contract`) are translated at the core boundary:
``InvalidParams`` → ``BadRequest``. The index's connection errors
(:data:`procplat.index.db.INDEX_UNAVAILABLE`) are translated where the API renders errors
(:mod:`procplat.api.http`): ``ServiceUnavailable``.
"""

from __future__ import annotations

from typing import Any


class ProcplatError(Exception):
    status = 500

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(ProcplatError):
    status = 400


class Unauthorized(ProcplatError):
    status = 401


class Forbidden(ProcplatError):
    status = 403


class NotFound(ProcplatError):
    status = 404


class MethodNotAllowed(ProcplatError):
    status = 405


class Conflict(ProcplatError):
    status = 409


class Gone(ProcplatError):
    status = 410


class PayloadTooLarge(ProcplatError):
    status = 413


class RangeNotSatisfiable(ProcplatError):
    status = 416


class TooManyRequests(ProcplatError):
    status = 429

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(ProcplatError):
    status = 503

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(ProcplatError):
    status = 507
