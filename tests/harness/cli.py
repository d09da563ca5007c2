"""The ``procplat`` command line, run as a user runs it (a process) or in this process for its
help text."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Sequence

from tests.harness.world import World


def procplat(
    *args: str, world: World | None = None, env: dict[str, str] | None = None,
    timeout: float = 60, stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m procplat.cli ARGS`` with no ``PROCPLAT_*`` variable of ours but those of
    ``env`` (and the URL and token of ``world``'s user when given); its output as text."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPLAT_")}
    if world is not None:
        full_env |= {"PROCPLAT_URL": world.server.url, "PROCPLAT_TOKEN": world.token}
    full_env |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "procplat.cli", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )


def cli_help(command: Sequence[str]) -> str:
    """What ``procplat COMMAND --help`` prints; it must exit with 0."""
    from procplat.cli import main

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            main([*command, "--help"])
        except SystemExit as exited:
            assert exited.code == 0, exited.code
        else:
            raise AssertionError(f"procplat {' '.join(command)} --help did not exit")
    return shown.getvalue()
