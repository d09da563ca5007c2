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
    lines, one per log line and one each time the state, phase or percent changes.

    Each poll is shown with :meth:`show`: a status and the new log lines that status already
    counts, so the bar under the lines is never older than they are (no ``Created 0%`` under
    a line saying the file is written). A task that ended without succeeding never reads
    100%: the service's percent is that of the task's last phase, so a failure right after a
    phase completed would otherwise draw a full bar."""

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

    def show(self, status: TaskStatus, lines: list[str]) -> None:
        """Draw ``status`` with ``lines`` (its new log lines) above the bar."""
        phase = f" {status.phase}" if status.phase else ""
        percent = shown_percent(status)
        if self.bar is not None:
            # The new state first, so the bar redrawn under each line already says it.
            self.bar.set_description_str(f"{status.tool_id} {status.state}{phase}", refresh=False)
            self.bar.n = percent
            for line in lines:
                self.bar.write(line, file=self.file)
            self.bar.refresh()
            return
        for line in lines:
            print(line, file=self.file, flush=True)
        now = (status.state, status.phase, percent)
        if now != self.last:
            self.last = now
            print(f"{status.tool_id} {status.state}{phase} {percent}%", file=self.file,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shown_percent(status: TaskStatus) -> int:
    """The percent to draw: the service's, but below 100 for a task that ended unsuccessfully."""
    if status.terminal and status.state != "Succeeded":
        return min(status.percent, 99)
    return status.percent


def _isatty(file: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel's output (it redraws a text bar in place too)."""
    try:
        if file.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return "ipykernel" in sys.modules and type(file).__module__.startswith("ipykernel")
