"""Progress for long work (calibration, training, measuring): a rich progress bar on a
terminal, nothing when `enabled` is false (library use, tests)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def task(self, description: str, total: int) -> TaskID:
        return self._bar.add_task(description, total=total, note="")

    def advance(self, task: TaskID, steps: int = 1, note: str | None = None) -> None:
        if note is None:
            self._bar.advance(task, steps)
        else:
            self._bar.update(task, advance=steps, note=note)


def silent() -> Progress:
    return Progress(enabled=False)
