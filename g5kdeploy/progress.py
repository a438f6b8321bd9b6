"""Run work on many items in parallel behind one rich progress bar; per-item outcome."""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@dataclass
class Outcome:
    item: Any
    ok: bool
    value: Any = None
    error: str = ""
    duration_s: float = 0.0


def bar(description: str, total: int | None) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=not sys.stderr.isatty(),
                    disable=not sys.stderr.isatty())


def parallel(fn: Callable[[Any], Any], items: Iterable, description: str, workers: int = 32) -> list[Outcome]:
    """fn(item) for every item in threads; failures are outcomes, not exceptions."""
    items = list(items)
    outcomes: dict[int, Outcome] = {}

    def one(i: int) -> Outcome:
        t0 = time.monotonic()
        try:
            return Outcome(items[i], True, fn(items[i]), duration_s=time.monotonic() - t0)
        except Exception as e:  # reported per item
            return Outcome(items[i], False, error=str(e) or type(e).__name__, duration_s=time.monotonic() - t0)

    with bar(description, len(items)) as progress, ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        task = progress.add_task(description, total=len(items))
        futures = {pool.submit(one, i): i for i in range(len(items))}
        for f in as_completed(futures):
            outcomes[futures[f]] = f.result()
            progress.advance(task)
    return [outcomes[i] for i in range(len(items))]
