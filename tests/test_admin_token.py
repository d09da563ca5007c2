"""The admin token a newcomer needs: ``procplat token reset USER`` issues a new token from the
service's own settings (the data folder / database URL), the old one stops working; a
``PROCPLAT_ADMIN_TOKEN`` that a later start would ignore is reported in the log."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from procplat.api.http import PRINCIPAL_CACHE_SECONDS
from tests.conftest import ADMIN_TOKEN, start_server
from tests.harness.cli import procplat
from tests.processes import start_service

STALE = "PROCPLAT_ADMIN_TOKEN is set but is not a token of user 'admin'"


def _index_env(settings: Any) -> dict[str, str]:
    env = {"PROCPLAT_DATA": str(settings.data)}
    if settings.database_url:
        env["PROCPLAT_DATABASE_URL"] = settings.database_url
    return env


def test_token_reset_issues_a_token_that_works_and_revokes_the_old_one(make_server: Any) -> None:
    live = make_server()
    old = live.client(ADMIN_TOKEN)
    assert old.get("/sys/tasks").status_code == 200  # admin only; cached by the service now

    done = procplat("token", "reset", "admin", env=_index_env(live.settings))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(token) >= 32 and "\n" not in token and "revoked" in done.stderr
    assert live.client(token).get("/sys/tasks").status_code == 200
    time.sleep(PRINCIPAL_CACHE_SECONDS + 0.2)
    refused = old.get("/sys/tasks")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid token"

    again = procplat("token", "reset", "admin", env=_index_env(live.settings))
    assert again.returncode == 0 and again.stdout.strip() != token
    time.sleep(PRINCIPAL_CACHE_SECONDS + 0.2)
    assert live.client(token).get("/sys/tasks").status_code == 401

    nobody = procplat("token", "reset", "nobody", env=_index_env(live.settings))
    assert nobody.returncode == 3 and "user 'nobody' not found" in nobody.stderr
    assert nobody.stdout == ""


def test_token_reset_without_an_index_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "not-a-service"
    done = procplat("token", "reset", "admin", env={"PROCPLAT_DATA": str(data)})
    assert done.returncode == 3 and "no index at" in done.stderr and "PROCPLAT_DATA" in done.stderr
    assert not data.exists()


def test_the_readme_flow_needs_no_token_from_the_log(tmp_path: Path) -> None:
    """``procplat serve`` without PROCPLAT_ADMIN_TOKEN (the set-up command), then in a second
    shell ``export PROCPLAT_ADMIN_TOKEN=$(procplat token reset admin)``; a later start with a
    variable the index does not know says so in the log."""
    data = tmp_path / "procplat-data"
    service = start_service(data, env={"PROCPLAT_ADMIN_TOKEN": ""})
    try:
        printed = re.search(r"its API token \(shown once\): (\S+)", service.log_text())
        assert printed is not None, service.log_text()
        done = procplat("token", "reset", "admin", env={"PROCPLAT_DATA": str(data)})
        assert done.returncode == 0, done.stderr
        with service.client(done.stdout.strip()) as admin, service.client(printed[1]) as old:
            created = admin.post("/orgs", json={"slug": "acme"})
            assert created.status_code == 201, created.text
            assert old.get("/sys/tasks").status_code == 401
    finally:
        service.terminate()
    service = start_service(data, env={"PROCPLAT_ADMIN_TOKEN": "chosen-after-the-first-start"})
    try:
        assert STALE in service.log_text()
        assert "procplat token reset admin" in service.log_text()
        with service.client("chosen-after-the-first-start") as ignored:
            assert ignored.get("/sys/tasks").status_code == 401
    finally:
        service.terminate()


def test_a_later_start_with_another_admin_token_logs_a_warning(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    live = make_server()
    live.stop()
    caplog.set_level(logging.INFO, logger="procplat.auth")
    for token, warned in [("another-token", True), (ADMIN_TOKEN, False), (None, False)]:
        caplog.clear()
        again = start_server(live.settings.replace(admin_token=token))
        try:
            assert again.client().get("/sys/tasks").status_code == 200  # the first token
        finally:
            again.stop()
        stale = [r for r in caplog.records if STALE in r.getMessage()]
        assert len(stale) == int(warned), (token, caplog.text)
        assert all(r.levelno == logging.WARNING for r in stale)
