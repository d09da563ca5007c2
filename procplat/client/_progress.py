"""What ``Task.wait`` and downloads show while they run: a tqdm bar on a terminal or in a
notebook, plain lines elsewhere.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from procplat.client._models import TaskStatus


class _ProgressView:
    """What :meth:`Task.wait` shows: on a terminal or in a notebook a tqdm bar (tool, state,
    phase, percent) with the log lines printed above it; elsewhere (a pipe, a CI log) plain
    lines, one per
    log line and one each time the state, phase or percent changes."""

    def __init__(self, file: IO[str], task_id: str) -> None:
        self.file = file
        self.bar: Any = None
        self.last: tuple[str, str | None, int] | None = None
        if _isatty(file):
            from tqdm import tqdm

            self.bar = tqdm(
                total=100, file=file, desc=task_id[:8], mininterval=0.2, leave=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}",
            )

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            if self.bar is not None:
                self.bar.write(line, file=self.file)
            else:
                print(line, file=self.file, flush=True)

    def update(self, status: TaskStatus) -> None:
        phase = f" {status.phase}" if status.phase else ""
        if self.bar is not None:
            self.bar.set_description_str(f"{status.tool_id} {status.state}{phase}", refresh=False)
            self.bar.n = status.percent
            self.bar.refresh()
            return
        now = (status.state, status.phase, status.percent)
        if now != self.last:
            self.last = now
            print(f"{status.tool_id} {status.state}{phase} {status.percent}%", file=self.file,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(file: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel's output (it redraws a text bar in place too)."""
    try:
        if file.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return "ipykernel" in sys.modules and type(file).__module__.startswith("ipykernel")
