"""The client's exceptions (the tree is drawn in :mod:`procplat.client`) and how an error
response becomes one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from procplat.client._models import TaskStatus


class ProcplatError(Exception):
    """Base of every error this client raises."""


class HTTPError(ProcplatError):
    """The service answered with status >= 400; ``message`` is its ``error`` text."""

    def __init__(
        self, status: int, message: str, *, details: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.response = response

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class BadRequest(HTTPError):
    pass


class Unauthorized(HTTPError):
    pass


class Forbidden(HTTPError):
    pass


class NotFound(HTTPError):
    pass


class Conflict(HTTPError):
    pass


class Gone(HTTPError):
    pass


class PayloadTooLarge(HTTPError):
    pass


class RangeNotSatisfiable(HTTPError):
    pass


class TooManyRequests(HTTPError):
    """A quota is full; try again after ``retry_after`` seconds (None when not sent)."""

    def __init__(
        self, status: int, message: str, *, details: Any = None,
        response: httpx.Response | None = None, retry_after: float | None = None,
    ) -> None:
        super().__init__(status, message, details=details, response=response)
        self.retry_after = retry_after


class ServerError(HTTPError):
    pass


class ServiceUnavailable(ServerError):
    """The service cannot answer now (its index or scheduler is unreachable); try again."""


class InsufficientStorage(ServerError):
    """The service's disk is full: the upload or output could not be stored."""


class TransportError(ProcplatError):
    """No usable answer: the connection failed, was reset or timed out."""


class IntegrityError(ProcplatError):
    """A downloaded file's sha256 is not the one the service announced."""


class WaitTimeout(ProcplatError, TimeoutError):
    """``Task.wait`` gave up before the task ended."""


class TaskError(ProcplatError):
    """The task ended without succeeding; ``status`` is its final :class:`TaskStatus`."""

    def __init__(self, status: TaskStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TaskFailed(TaskError):
    pass


class TaskCancelled(TaskError):
    pass


_ERRORS: dict[int, type[HTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    416: RangeNotSatisfiable,
    429: TooManyRequests,
    503: ServiceUnavailable,
    507: InsufficientStorage,
}


def error_from_response(response: httpx.Response) -> HTTPError:
    """The typed error for an error response whose body has been read."""
    message, details = _error_message(response)
    status = response.status_code
    cls = _ERRORS.get(status, ServerError if status >= 500 else HTTPError)
    if cls is TooManyRequests:
        return TooManyRequests(
            status, message, details=details, response=response,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    return cls(status, message, details=details, response=response)


def _error_message(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], body.get("details")
    text = response.text.strip()
    return text[:500] or response.reason_phrase or "error", None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None
