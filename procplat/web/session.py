"""Who is signed in to the console, and CSRF protection of its forms.

The API token a person signs in with is kept in the session: a cookie signed with the
service's secret key (Starlette's ``SessionMiddleware``: ``HttpOnly``, ``SameSite=Strict``,
path ``/ui``). Each request re-authenticates that token through
:func:`procplat.core.auth.authenticate`, so a revoked token signs the person out. Every
state-changing form carries the session's CSRF token, compared in constant time.
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request

from procplat.core.auth import Principal, authenticate
from procplat.errors import Forbidden, Unauthorized
from procplat.settings import Settings

__all__ = ["CSRF_FIELD", "check_csrf", "csrf_token", "principal", "session_middleware",
           "sign_in", "sign_out"]

CSRF_FIELD = "csrf"
_TOKEN = "token"
_CSRF = "csrf"
COOKIE = "procplat_console"


def session_middleware(settings: Settings, secret: str) -> Middleware:
    return Middleware(
        SessionMiddleware, secret_key=secret, session_cookie=COOKIE, path="/ui",
        max_age=int(settings.console_session_hours * 3600), same_site="strict",
    )


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use, also before sign-in)."""
    token = request.session.get(_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[_CSRF] = token
    return str(token)


def check_csrf(request: Request, sent: object) -> None:
    expected = request.session.get(_CSRF)
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(expected, sent):
        raise Forbidden("the form expired or did not come from this console; reload the page")


def _lookup(request: Request, token: str) -> Principal | None:
    return authenticate(request.app.state.db, f"Bearer {token}")


async def principal(request: Request) -> Principal | None:
    """The signed-in person, or None; a token no longer valid ends the session."""
    token = request.session.get(_TOKEN)
    if not token:
        return None
    try:
        return await run_in_threadpool(_lookup, request, str(token))
    except Unauthorized:
        sign_out(request)
        return None


async def sign_in(request: Request, token: str) -> Principal:
    """Check the token and keep it in a new session (a new CSRF token too)."""
    token = token.strip()
    if not token:
        raise Unauthorized("enter an API token")
    who = await run_in_threadpool(_lookup, request, token)
    assert who is not None
    request.session.clear()
    request.session[_TOKEN] = token
    request.session[_CSRF] = secrets.token_urlsafe(32)
    return who


def sign_out(request: Request) -> None:
    request.session.clear()
