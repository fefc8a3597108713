"""The one progress bar of the project: generation, training, calibration and export use it.

A context manager yielding a :class:`Ticker`; disabled, it draws nothing and costs nothing, so
library code can report progress unconditionally and the caller decides whether it is shown.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Bar", "Ticker"]


class Ticker:
    """What a running bar accepts: steps done, an absolute position, a status text."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, k: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, k)

    def update(self, *, completed: float | None = None, status: str | None = None,
               description: str | None = None) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if completed is not None:
            fields["completed"] = completed
        if status is not None:
            fields["status"] = status
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, **fields)


class Bar:
    """``with Bar("label", total) as tick: tick.advance()`` -- a rich bar on stderr when enabled.

    ``total=None`` draws a spinner-like open bar (a count of unknown size); ``transient`` removes
    the bar when done (for steps whose result is printed right after).
    """

    def __init__(self, label: str, total: float | None, *, enabled: bool = True, transient: bool = False) -> None:
        self.label, self.total, self.enabled, self.transient = label, total, enabled, transient
        self._progress: Any = None

    def __enter__(self) -> Ticker:
        if not self.enabled:
            return Ticker()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                  transient=self.transient, console=Console(stderr=True))
        self._progress.start()
        return Ticker(self._progress, self._progress.add_task(self.label, total=self.total, status=""))

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
