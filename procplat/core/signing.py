"""The service's secret key: what signs links and console cookies.

``PROCPLAT_SECRET_KEY`` when set (every replica of a fleet must be given the same one);
otherwise a random key made once and kept in ``<data>/secret-key`` (readable by the service
only), so links and sign-ins outlive a restart.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from procplat.settings import Settings

__all__ = ["secret_key"]

_KEY_FILE = "secret-key"


def secret_key(settings: Settings) -> str:
    """The configured key, else the one kept in the data folder (made on first use)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data / _KEY_FILE
    if not path.exists():
        _create_once(path)
    return path.read_text().strip()


def _create_once(path: Path) -> None:
    """Write a new key under a temporary name and link it into place: of processes starting
    together, the first link wins and every process reads that one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{_KEY_FILE}.{secrets.token_hex(8)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(48).encode())
    finally:
        os.close(fd)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink()
