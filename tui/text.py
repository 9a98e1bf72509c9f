"""Helpers that turn model, tool and database values into literal Rich text.

Model output and tool results may contain "[0]", "[/x]" or an unclosed "[", which Rich
would read as markup. Everything shown from the database goes through `literal`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.text import Text


def literal(value: Any, style: str = "") -> Text:
    """Return `value` as a Text that is never parsed as markup."""
    if value is None:
        return Text("", style=style)
    if isinstance(value, Text):
        return value
    return Text(str(value), style=style)


def clock(seconds: float | None) -> str:
    """Format a Unix time as UTC "YYYY-MM-DD HH:MM:SS", or "" for None."""
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def compact_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def short(identifier: str | None, width: int = 12) -> str:
    if not identifier:
        return ""
    return identifier if len(identifier) <= width else identifier[:width]


def progress_text(progress: dict | None) -> str:
    """Format a job's progress JSON as "completed/total"."""
    progress = progress or {}
    completed, total = progress.get("completed"), progress.get("total")
    if completed is None:
        return ""
    if total:
        return f"{completed:g}/{total:g}"
    return f"{completed:g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
