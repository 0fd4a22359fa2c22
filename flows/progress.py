"""What a user sees while one volume is segmented (``deconvseg.pipeline.segment.Progress`` events).

On a terminal: a bar per member counting its windows, under a bar counting the cases. Piped or
in a flow's log: a line per finished stage and per finished member, so a minutes-long volume never
sits silent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from deconvseg.pipeline.segment import Progress


def stage_lines(case_id: str, emit: Callable[[str], None]) -> Progress:
    """A ``Progress`` that emits one line per finished stage or member (with its seconds)."""
    started: dict[str, float] = {}

    def report(stage: str, done: int, total: int) -> None:
        if done == 0:
            started[stage] = time.perf_counter()
        elif done == total:
            seconds = time.perf_counter() - started.get(stage, time.perf_counter())
            what = f"{stage}: {total} windows" if stage.startswith("member ") else stage
            emit(f"{case_id}: {what} in {seconds:.1f} s")

    return report


class CaseBars:
    """Terminal bars: ``for_case(case_id)`` gives a ``Progress`` that draws a bar of windows per member;
    ``finish_case()`` removes them and advances the bar of cases."""

    def __init__(self, bars: Any, cases: int) -> None:
        self.bars = bars
        self.overall = bars.add_task("cases", total=cases)
        self.tasks: dict[str, Any] = {}

    def for_case(self, case_id: str) -> Progress:
        def report(stage: str, done: int, total: int) -> None:
            if stage.startswith("member "):
                if stage not in self.tasks:
                    self.tasks[stage] = self.bars.add_task(f"{case_id} {stage.removeprefix('member ')}", total=total)
                self.bars.update(self.tasks[stage], completed=done, total=total)

        return report

    def say(self, line: str) -> None:
        """Print ``line`` above the bars."""
        self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def finish_case(self) -> None:
        for task in self.tasks.values():
            self.bars.remove_task(task)
        self.tasks.clear()
        self.bars.advance(self.overall)


@contextmanager
def case_bars(stream: TextIO, cases: int) -> Iterator[CaseBars]:
    """``CaseBars`` drawn on ``stream`` (a terminal), removed when the block ends."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bars = Bars(*columns, console=Console(file=stream), transient=True, redirect_stdout=False, redirect_stderr=False)
    with bars:
        yield CaseBars(bars, cases)
