"""One job model for the CLI and the TUI.

A job is a row in the `jobs` table plus events in `job_events`. The work itself is a
function registered under a kind in JOB_KINDS; it receives a JobContext and reports progress
through it. The CLI runs jobs in the foreground (`run_inline`) and draws a progress bar from
the same reports the TUI reads from the database; the TUI starts jobs as detached processes
(`spawn`) so that a job outlives the console.

Cancellation is cooperative: `request_cancel` marks the row, and the job function sees
JobCancelled at its next `ctx.progress`/`ctx.check_cancel` call. SIGTERM to a detached job
has the same effect, so training can checkpoint before it exits.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

from appliance.errors import NotFoundError, ReckonError
from appliance.store import Store, new_id, now
from appliance.workspace import Workspace

log = logging.getLogger(__name__)

# kind -> "module:function". The function signature is fn(ctx: JobContext, **params) -> dict.
JOB_KINDS: dict[str, str] = {
    "harness.run": "appliance.harness:run_job",
    "curate": "appliance.curation.pipeline:run_job",
    "eval": "appliance.evaluation.runner:run_job",
    "train": "appliance.training.job:run_job",
    "demo": "appliance.demo:run_job",
}

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled", "interrupted"}
PROGRESS_WRITE_INTERVAL_S = 0.5


class JobCancelled(Exception):
    """Raised inside a job function when cancellation was requested or SIGTERM arrived."""


class JobContext:
    """Progress reporting and cancellation checks for one running job function."""

    def __init__(self, workspace: Workspace, store: Store, job_id: str,
                 listener: Callable[[dict], None] | None = None):
        self.workspace = workspace
        self.store = store
        self.job_id = job_id
        self.listener = listener
        self._last_write = 0.0
        self._progress: dict[str, Any] = {}
        self._terminate = threading.Event()

    def progress(self, completed: float | None = None, total: float | None = None,
                 message: str | None = None, **fields: Any) -> None:
        """Record progress; written to the database at most every half second."""
        if completed is not None:
            self._progress["completed"] = completed
        if total is not None:
            self._progress["total"] = total
        if message is not None:
            self._progress["message"] = message
        self._progress.update(fields)
        if self.listener is not None:
            self.listener(dict(self._progress))
        moment = time.monotonic()
        finished = total is not None and completed is not None and completed >= total
        if finished or moment - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_write = moment
            # time.time(), not now(): how many heartbeats a job writes depends on its speed,
            # and tests that fix the clock count calls to now().
            self.store.update("jobs", self.job_id, {"progress": dict(self._progress),
                                                    "updated_at": time.time()})
        self.check_cancel()

    def event(self, kind: str, **data: Any) -> None:
        """Append an event (a loss point, a finished trace) that viewers can plot or list."""
        self.store.insert("job_events", {"job_id": self.job_id, "time": now(), "kind": kind,
                                         "data": data})

    def check_cancel(self) -> None:
        if self._terminate.is_set():
            raise JobCancelled("terminated by signal")
        row = self.store.db.execute("select status from jobs where id = ?",
                                    [self.job_id]).fetchone()
        if row and row[0] == "cancel_requested":
            raise JobCancelled("cancelled by operator")

    @property
    def cancel_requested(self) -> bool:
        try:
            self.check_cancel()
        except JobCancelled:
            return True
        return False


def create(store: Store, kind: str, params: dict) -> str:
    if kind not in JOB_KINDS:
        raise ReckonError(f"unknown job kind {kind!r}; known kinds: {', '.join(sorted(JOB_KINDS))}")
    job_id = new_id("job")
    store.insert("jobs", {"id": job_id, "kind": kind, "status": "queued", "params": params,
                          "progress": {}, "created_at": now(), "updated_at": now()})
    return job_id


def get(store: Store, job_id: str) -> dict:
    job = store.get("jobs", job_id)
    if job is None:
        raise NotFoundError(f"job {job_id!r} not found; `reckon jobs list` shows the jobs")
    return job


def request_cancel(store: Store, job_id: str) -> None:
    job = get(store, job_id)
    if job["status"] in TERMINAL_STATUSES:
        return
    store.update("jobs", job_id, {"status": "cancel_requested", "updated_at": now()})
    if job.get("pid") and job["pid"] != os.getpid():
        try:
            os.kill(job["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass


def resolve_function(kind: str) -> Callable[..., dict]:
    module_name, _, attribute = JOB_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def execute(workspace: Workspace, store: Store, job_id: str,
            listener: Callable[[dict], None] | None = None) -> dict:
    """Run a created job in this process and record how it ended. Re-raises its error."""
    job = get(store, job_id)
    ctx = JobContext(workspace, store, job_id, listener)
    store.update("jobs", job_id, {"status": "running", "pid": os.getpid(),
                                  "started_at": now(), "updated_at": now()})
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: ctx._terminate.set())
    log.info("job %s (%s) started", job_id, job["kind"])
    try:
        result = resolve_function(job["kind"])(ctx, **(job["params"] or {}))
    except JobCancelled as error:
        store.update("jobs", job_id, {"status": "cancelled", "error": str(error),
                                      "finished_at": now(), "updated_at": now()})
        log.info("job %s cancelled: %s", job_id, error)
        raise
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        detail = str(error) if isinstance(error, ReckonError) else traceback.format_exc()
        store.update("jobs", job_id, {"status": status, "error": detail,
                                      "finished_at": now(), "updated_at": now()})
        log.error("job %s %s: %s", job_id, status, error)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    # The last report is written whatever the write interval skipped, so a finished job
    # always shows its final progress.
    store.update("jobs", job_id, {"status": "succeeded", "result": result or {},
                                  "progress": dict(ctx._progress),
                                  "finished_at": now(), "updated_at": now()})
    log.info("job %s succeeded", job_id)
    return result or {}


def run_inline(workspace: Workspace, kind: str, params: dict,
               listener: Callable[[dict], None] | None = None) -> tuple[str, dict]:
    store = workspace.store()
    job_id = create(store, kind, params)
    return job_id, execute(workspace, store, job_id, listener)


def spawn(workspace: Workspace, kind: str, params: dict) -> str:
    """Start a job in a detached process that survives the caller; return its id."""
    store = workspace.store()
    job_id = create(store, kind, params)
    log_path = workspace.logs / f"{job_id}.log"
    store.update("jobs", job_id, {"log_path": str(log_path)})
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.jobs", str(workspace.root), job_id],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    store.update("jobs", job_id, {"pid": process.pid})
    return job_id


def mark_stale_jobs(store: Store) -> int:
    """Mark running jobs whose process no longer exists as interrupted; return how many."""
    stale = 0
    for job in store.rows("jobs", "status in ('running', 'cancel_requested', 'queued')"):
        pid = job.get("pid")
        if pid and not _process_alive(pid):
            store.update("jobs", job["id"], {"status": "interrupted", "updated_at": now(),
                                             "error": "process ended without finishing"})
            stale += 1
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _main(argv: list[str]) -> int:
    from appliance.logs import configure_logging
    from appliance.netguard import enforce_offline

    enforce_offline()
    workspace = Workspace.resolve(argv[0])
    configure_logging(workspace, verbose=False)
    store = workspace.store()
    try:
        execute(workspace, store, argv[1])
    except JobCancelled:
        return 130
    except BaseException:  # noqa: BLE001 - recorded in the jobs row by execute()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
