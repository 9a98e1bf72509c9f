"""Output helpers shared by the CLI modules: JSON mode, tables and progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterable

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str))


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_table(columns: list[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # markup=False keeps model text such as "[0]" or "[/x]" literal.
        table.add_row(*[_cell(value) for value in row])
    console().print(table)


def _cell(value: Any):
    from rich.text import Text

    return Text("" if value is None else str(value))


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True):
    """Yield a listener for JobContext progress reports that drives a rich progress bar.

    The bar goes to stderr so that --json output on stdout stays parseable.
    """
    if not enabled or not sys.stderr.isatty() and not _force_progress():
        yield lambda report: None
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console(stderr=True), transient=False)
    with progress:
        task = progress.add_task(description, total=total, status="")

        def listener(report: dict) -> None:
            status = report.get("message") or ""
            progress.update(task, completed=report.get("completed", 0),
                            total=report.get("total", total), status=status)

        yield listener


def _force_progress() -> bool:
    import os

    return os.environ.get("RECKON_PROGRESS") == "1"
