"""ReckonApp: the operator console.

Each area of the loop is a mode with its own screen (overview, runs, traces, dataset,
eval, train, bundles, ledger, help); the number keys switch between them and the command
palette (ctrl+p) lists them with their actions. The visible screen polls the workspace
database every `poll_interval` seconds, so jobs started from the CLI show up here too.

Jobs start through `launch_job`: as detached processes (`appliance.jobs.spawn`, the
default, so a job outlives the console) or, with job_mode="inline", in a thread worker of
this process (used by tests that need no second process).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches

from appliance import jobs
from appliance.workspace import Workspace
from tui.commands import ReckonCommands
from tui.screens.bundles import BundlesScreen
from tui.screens.dataset import DatasetScreen
from tui.screens.eval import EvalScreen
from tui.screens.help import HelpScreen
from tui.screens.ledger import LedgerScreen
from tui.screens.overview import OverviewScreen
from tui.screens.runs import RunsScreen
from tui.screens.train import TrainScreen
from tui.screens.traces import TracesScreen

log = logging.getLogger(__name__)

# (mode name, key, footer label); the order is the order of the number keys.
AREAS: tuple[tuple[str, str, str], ...] = (
    ("overview", "1", "Overview"),
    ("runs", "2", "Runs"),
    ("traces", "3", "Traces"),
    ("dataset", "4", "Dataset"),
    ("eval", "5", "Eval"),
    ("train", "6", "Train"),
    ("bundles", "7", "Bundles"),
    ("ledger", "8", "Ledger"),
)

JOB_MODES = ("spawn", "inline")


class ReckonApp(App):
    """The Reckoning operator console over one workspace."""

    CSS_PATH = "app.tcss"
    TITLE = "Reckoning"
    MODES = {
        "overview": OverviewScreen, "runs": RunsScreen, "traces": TracesScreen,
        "dataset": DatasetScreen, "eval": EvalScreen, "train": TrainScreen,
        "bundles": BundlesScreen, "ledger": LedgerScreen, "help": HelpScreen,
    }
    DEFAULT_MODE = "overview"
    COMMANDS = App.COMMANDS | {ReckonCommands}
    BINDINGS = [
        *(Binding(key, f"switch_mode('{mode}')", label) for mode, key, label in AREAS),
        Binding("question_mark,f1", "switch_mode('help')", "Help", key_display="?"),
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, workspace: Workspace, *, pack: str = "entitlements",
                 teacher: str = "embedded", job_mode: str = "spawn",
                 poll_interval: float = 1.0):
        super().__init__()
        if job_mode not in JOB_MODES:
            raise ValueError(f"job_mode must be one of {', '.join(JOB_MODES)}, got {job_mode!r}")
        self.workspace = workspace
        self.pack = pack
        self.teacher = teacher
        self.job_mode = job_mode
        self.poll_interval = poll_interval
        # The UI thread's connection; workers and jobs open their own.
        self.store = workspace.store()
        self.sub_title = str(workspace.root)

    def on_mount(self) -> None:
        if self.poll_interval > 0:
            self.set_interval(self.poll_interval, self.poll)

    def on_unmount(self) -> None:
        self.store.close()

    # -- polling -----------------------------------------------------------------------------

    def poll(self) -> None:
        """Refresh the visible screen from the database (cheap, bounded queries)."""
        screen = self.screen
        refresh = getattr(screen, "refresh_data", None)
        if refresh is None or not screen.is_mounted:
            return
        try:
            refresh()
        except NoMatches:
            # A timer tick can land while a screen is still composing its widgets; the
            # next tick refreshes it.
            log.debug("poll skipped: %s is not fully mounted yet", type(screen).__name__)

    def action_refresh(self) -> None:
        self.poll()

    # -- jobs ---------------------------------------------------------------------------------

    def launch_job(self, kind: str, params: dict) -> str:
        """Start a job of `kind` and return its id; its state lives in the jobs table."""
        if self.job_mode == "spawn":
            job_id = jobs.spawn(self.workspace, kind, params)
        else:
            job_id = jobs.create(self.store, kind, params)
            self.run_worker(partial(self._execute_inline, job_id), thread=True,
                            group="jobs", name=job_id, exit_on_error=False)
        log.info("console started job %s (%s)", job_id, kind)
        return job_id

    def _execute_inline(self, job_id: str) -> None:
        store = self.workspace.store()
        try:
            jobs.execute(self.workspace, store, job_id)
        except BaseException as error:  # noqa: BLE001 - execute() recorded it in the jobs row
            log.info("inline job %s ended with %s", job_id, type(error).__name__)
        finally:
            store.close()

    def cancel_job(self, job_id: str) -> None:
        jobs.request_cancel(self.store, job_id)

    # -- helpers for screens -------------------------------------------------------------------

    def report_error(self, error: BaseException | str, title: str = "Error") -> None:
        """Show an error as a notification; its text is shown literally."""
        self.notify(str(error), title=title, severity="error", markup=False, timeout=8)

    def default_export_dir(self) -> Path:
        return self.workspace.root / "exports"
