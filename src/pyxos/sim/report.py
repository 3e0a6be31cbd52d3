"""Running many seeds with a progress bar, and the summary table (rich)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["percentile", "run_seeds", "summary_table"]

R = TypeVar("R")


def run_seeds(
    seeds: Sequence[int],
    run_one: Callable[[int], R],
    failed: Callable[[R], bool],
    console: Console,
    *,
    label: str,
    stop_on_failure: bool = False,
) -> list[R]:
    """Run every seed with a progress bar; the results in seed order."""
    results: list[R] = []
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bad]} violations"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(label, total=len(seeds), bad=0)
        bad = 0
        for seed in seeds:
            result = run_one(seed)
            results.append(result)
            if failed(result):
                bad += 1
            progress.update(task, advance=1, bad=bad)
            if bad and stop_on_failure:
                break
    return results


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, 0.0 when empty (nearest rank)."""
    data = sorted(values)
    if not data:
        return 0.0
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[
        max(0, min(98, round(q * 100) - 1))
    ]


def summary_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    """A two-column table of (metric, value)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table
