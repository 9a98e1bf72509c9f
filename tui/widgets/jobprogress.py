"""One job's status line and progress bar, read from its jobs row."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from tui.text import literal, progress_text


class JobProgress(Vertical):
    """Shows kind, id, status, progress and message of one job row (or nothing)."""

    def compose(self) -> ComposeResult:
        yield Static("No job selected.", classes="job-status")
        yield ProgressBar(show_eta=False, classes="job-bar")

    def show_job(self, job: dict | None) -> None:
        status = self.query_one(".job-status", Static)
        bar = self.query_one(ProgressBar)
        if job is None:
            status.update("No job selected.")
            bar.update(total=1, progress=0)
            return
        progress = job.get("progress") or {}
        line = Text()
        line.append(f"{job['kind']} ", style="bold")
        line.append(literal(job["id"]))
        line.append("  ")
        line.append(literal(job["status"], _status_style(job["status"])))
        counted = progress_text(progress)
        if counted:
            line.append(f"  {counted}")
        if progress.get("message"):
            line.append("  ")
            line.append(literal(progress["message"], "dim"))
        if job.get("error") and job["status"] in ("failed", "interrupted", "cancelled"):
            line.append("\n")
            line.append(literal(job["error"].strip().splitlines()[-1], "red"))
        status.update(line)
        total = progress.get("total")
        if job["status"] == "succeeded":
            # Progress is written at most every half second, so the last row may lag.
            bar.update(total=1, progress=1)
        elif total:
            bar.update(total=total, progress=progress.get("completed") or 0)
        elif job["status"] in ("queued", "running", "cancel_requested"):
            bar.update(total=None)      # indeterminate while the job reports no total
        else:
            bar.update(total=1, progress=0)


def _status_style(status: str) -> str:
    return {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow",
            "interrupted": "yellow", "cancel_requested": "yellow"}.get(status, "")
