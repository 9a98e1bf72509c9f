"""Runs: start a harness run as a detached job; watch its progress and traces arrive."""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key
from tui.text import clock, literal, progress_text
from tui.widgets.jobprogress import JobProgress


class RunsScreen(AreaScreen):
    """Form on the left; harness jobs, runs and the latest traces on the right."""

    BINDINGS = [
        Binding("ctrl+s", "start_run", "Start run"),
        Binding("ctrl+x", "cancel_job", "Cancel job"),
    ]

    def body(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="run-form", classes="form"):
                yield Label("Start a harness run", classes="section-title")
                yield Label("Pack (shipped name or folder)")
                yield Input(self.reckon.pack, id="run-pack")
                yield Label("Teacher (runtime spec)")
                yield Input(self.reckon.teacher, id="run-teacher")
                yield Label("Tasks")
                yield Input("20", id="run-tasks", type="integer")
                yield Label("Samples per task")
                yield Input("1", id="run-samples", type="integer")
                yield Label("Concurrency")
                yield Input("1", id="run-concurrency", type="integer")
                yield Button("Start run", id="start-run", variant="primary")
            with Vertical(id="run-status"):
                yield JobProgress(id="run-progress")
                yield Label("Harness jobs", classes="section-title")
                yield data_table("run-jobs", "job", "status", "progress", "message", "created")
                yield Label("Runs", classes="section-title")
                yield data_table(
                    "runs-table", "run", "pack", "teacher", "status", "traces", "created")
                yield Label("Traces of the selected run, newest first", classes="section-title")
                yield data_table(
                    "run-traces", "trace", "task", "sample", "outcome", "tokens", "errors")

    # -- actions -------------------------------------------------------------------------------

    def run_params(self) -> dict:
        """Read the form into `appliance.harness.start_run` parameters (ReckonError if invalid)."""
        pack = self.text_value("run-pack")
        teacher = self.text_value("run-teacher")
        if not pack:
            raise ReckonError("pack is missing; enter a shipped pack name or a pack folder")
        if not teacher:
            raise ReckonError("teacher is missing; enter a runtime spec such as 'embedded'")
        return {"pack": pack, "teacher": teacher,
                "tasks": self.int_value("run-tasks", "tasks"),
                "samples": self.int_value("run-samples", "samples per task"),
                "concurrency": self.int_value("run-concurrency", "concurrency")}

    def action_start_run(self) -> None:
        try:
            params = self.run_params()
            # Parse the teacher spec here so a typo fails before a process starts.
            from appliance.runtimes import parse_spec

            parse_spec(params["teacher"])
            job_id = self.reckon.launch_job("harness.run", params)
        except ReckonError as error:
            self.report_error(error)
            return
        self.notify(f"started {job_id}", markup=False)
        self._follow_job = job_id
        self.refresh_data()

    def action_cancel_job(self) -> None:
        job_id = selected_key(self.query_one("#run-jobs", DataTable))
        if job_id is None:
            self.report_error("no job selected; select a harness job to cancel")
            return
        try:
            self.reckon.cancel_job(job_id)
        except ReckonError as error:
            self.report_error(error)
            return
        self.notify(f"cancel requested for {job_id}", markup=False)

    @on(Button.Pressed, "#start-run")
    def _start_pressed(self) -> None:
        self.action_start_run()

    @on(DataTable.RowHighlighted, "#run-jobs")
    def _job_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._follow_job = event.row_key.value
        self._show_job()

    @on(DataTable.RowHighlighted, "#runs-table")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_traces(event.row_key.value)

    # -- polling -------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        store = self.store
        job_rows = []
        for job in store.rows("jobs", "kind = 'harness.run'", order_by="created_at desc", limit=30):
            progress = job["progress"] or {}
            job_rows.append((job["id"], literal(job["id"]), job["status"], progress_text(progress),
                             literal(progress.get("message") or ""), clock(job["created_at"])))
        fill_table(self.query_one("#run-jobs", DataTable), job_rows)
        if getattr(self, "_follow_job", None) is None and job_rows:
            self._follow_job = job_rows[0][0]
        self._show_job()

        run_rows = []
        for run in store.rows("runs", order_by="created_at desc", limit=50):
            teacher = run["teacher"] or {}
            total = (run["n_tasks"] or 0) * (run["n_samples"] or 0)
            run_rows.append((run["id"], literal(run["id"]), literal(run["pack_id"]),
                             literal(f"{teacher.get('kind')}:{teacher.get('model')}"),
                             run["status"], f"{run['n_traces'] or 0}/{total}",
                             clock(run["created_at"])))
        runs_table = self.query_one("#runs-table", DataTable)
        fill_table(runs_table, run_rows)
        self._select_followed_run(runs_table)
        self._show_traces(selected_key(runs_table))

    def _select_followed_run(self, runs_table: DataTable) -> None:
        """Move the cursor once to the run of the job being followed, when it is known."""
        job_id = getattr(self, "_follow_job", None)
        if job_id is None or getattr(self, "_selected_for", None) == job_id:
            return
        job = self.store.get("jobs", job_id)
        if job is None:
            return
        run_id = (job["result"] or {}).get("run_id") if isinstance(job["result"], dict) else None
        if run_id is None and job["status"] in ("running", "cancel_requested"):
            # A running job's run is the newest run created after the job.
            newest = next(self.store.rows("runs", "created_at >= ?", [job["created_at"]],
                                          order_by="created_at desc", limit=1), None)
            run_id = newest["id"] if newest else None
        keys = [row.key.value for row in runs_table.ordered_rows]
        if run_id in keys:
            runs_table.move_cursor(row=keys.index(run_id), animate=False)
            self._selected_for = job_id

    def _show_job(self) -> None:
        job_id = getattr(self, "_follow_job", None)
        job = self.store.get("jobs", job_id) if job_id else None
        self.query_one("#run-progress", JobProgress).show_job(job)

    def _show_traces(self, run_id: str | None) -> None:
        rows = []
        if run_id is not None:
            # Only the listed columns, so each poll does not decode whole conversations.
            for trace_id, task_id, sample, outcome, prompt, completion, errors_json in self.store.db.execute(
                    "select id, task_id, sample_index, outcome, prompt_tokens, completion_tokens, "
                    "errors from traces where run_id = ? order by created_at desc, rowid desc "
                    "limit 100", [run_id]):
                kinds = sorted({error["kind"] for error in json.loads(errors_json or "[]")})
                rows.append((trace_id, literal(trace_id), literal(task_id), str(sample),
                             literal(outcome), str((prompt or 0) + (completion or 0)),
                             literal(", ".join(kinds))))
        fill_table(self.query_one("#run-traces", DataTable), rows)
