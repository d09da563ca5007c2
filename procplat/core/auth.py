"""Who is calling and what they may do: tokens (stored hashed), users, access rules."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass

from procplat.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from procplat.index import queries as q
from procplat.index.db import Database, utcnow

log = logging.getLogger("procplat.auth")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADMIN = "admin"  # the user created on first start


@dataclass(frozen=True, kw_only=True)
class Principal:
    user_id: int
    username: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def ensure_admin(db: Database, admin_token: str | None) -> str | None:
    """Create the ``admin`` user on first start; returns the token when one was generated.

    ``PROCPLAT_ADMIN_TOKEN`` is read on first start only: on a later start, a value that is
    not a token of ``admin`` is reported (it would otherwise be ignored without a word)."""
    with db.write() as s:
        if q.count_users(s) > 0:
            admin = q.user_by_name(s, ADMIN)
            stale = bool(admin_token) and (
                admin is None or not q.has_token(s, admin.id, hash_token(str(admin_token))))
            created = False
        else:
            token = admin_token or new_token()
            q.add_user(s, ADMIN, True, hash_token(token), utcnow())
            created = True
    if not created:
        if stale:
            log.warning(
                "PROCPLAT_ADMIN_TOKEN is set but is not a token of user 'admin': the variable "
                "is only used when the index is new, and this index already has users. "
                "'procplat token reset admin' issues a new token for 'admin'."
            )
        return None
    if admin_token:
        log.info("created user 'admin' with the token from PROCPLAT_ADMIN_TOKEN")
        return None
    log.warning("created user 'admin'; its API token (shown once): %s", token)
    print(f"procplat: created user 'admin'; its API token (shown once): {token} "
          "('procplat token reset admin' issues a new one)", flush=True)
    return token


def reset_token(db: Database, username: str) -> str:
    """Issue a new token for ``username`` and revoke its others; returns the new token."""
    token = new_token()
    with db.write() as s:
        user = q.user_by_name(s, username)
        if user is None:
            raise NotFound(f"user '{username}' not found")
        q.replace_tokens(s, user.id, hash_token(token), utcnow())
    log.info("issued a new token for user '%s'; its earlier tokens are revoked", username)
    return token


def authenticate(db: Database, authorization: str | None) -> Principal | None:
    """The caller from an ``Authorization: Bearer`` header; None when anonymous."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use 'Authorization: Bearer <token>'")
    with db.read() as s:
        user = q.user_by_token_hash(s, hash_token(token.strip()))
        if user is None:
            raise Unauthorized("invalid token")
        return Principal(user_id=user.id, username=user.username, is_admin=user.is_admin)


def require_user(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("authentication required")
    return principal


def require_admin(principal: Principal | None) -> Principal:
    user = require_user(principal)
    if not user.is_admin:
        raise Forbidden("administrators only")
    return user


def create_user(db: Database, caller: Principal | None, username: object, is_admin: object) -> tuple[str, str]:
    require_admin(caller)
    if not isinstance(username, str) or not USERNAME.match(username):
        raise BadRequest("username must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(is_admin, bool):
        raise BadRequest("admin must be true or false")
    token = new_token()
    with db.write() as s:
        if q.user_by_name(s, username) is not None:
            raise Conflict(f"user '{username}' already exists")
        q.add_user(s, username, is_admin, hash_token(token), utcnow())
    return username, token


def user_id_by_name(db: Database, username: str) -> int:
    with db.read() as s:
        user = q.user_by_name(s, username)
        if user is None:
            raise NotFound(f"user '{username}' not found")
        return user.id
