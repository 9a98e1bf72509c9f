"""`reckon jobs`: the jobs the CLI and the TUI share."""

from __future__ import annotations

import time

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table


@click.group("jobs")
def command():
    """List, follow and cancel jobs."""


@command.command("list")
@click.option("--limit", type=int, default=30, show_default=True)
@pass_app
def list_(app, limit):
    """List jobs, newest first (stale running jobs are marked interrupted)."""
    from appliance import jobs

    store = app.workspace.store()
    jobs.mark_stale_jobs(store)
    rows = list(store.rows("jobs", order_by="created_at desc", limit=limit))
    if app.json_output:
        emit_json(rows)
        return
    print_table(["job", "kind", "status", "progress", "message"],
                [(r["id"], r["kind"], r["status"],
                  f"{(r['progress'] or {}).get('completed', '')}/{(r['progress'] or {}).get('total', '')}",
                  (r["progress"] or {}).get("message") or (r["error"] or "")[:80]) for r in rows])


@command.command("show")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Poll until the job ends.")
@pass_app
def show(app, job_id, follow):
    """Show a job's status, progress and result."""
    from appliance import jobs

    store = app.workspace.store()
    while True:
        job = jobs.get(store, job_id)
        if not follow or job["status"] in jobs.TERMINAL_STATUSES:
            break
        click.echo(f"{job['status']} {job['progress']}", err=True)
        time.sleep(2)
    emit_json(job)


@command.command("cancel")
@click.argument("job_id")
@pass_app
def cancel(app, job_id):
    """Ask a job to stop; training checkpoints before it exits."""
    from appliance import jobs

    jobs.request_cancel(app.workspace.store(), job_id)
    click.echo(f"cancel requested for {job_id}")
