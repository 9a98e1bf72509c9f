"""`reckon traces`: list, show, export and import recorded traces."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json, print_table
from appliance.errors import NotFoundError


@click.group("traces")
def command():
    """List, show, export and import traces."""


@command.command("list")
@click.option("--run", "run_id", default=None, help="Only traces of this run.")
@click.option("--outcome", default=None, help="Only traces with this outcome.")
@click.option("--runs", "list_runs", is_flag=True, help="List runs instead of traces.")
@click.option("--limit", type=int, default=50, show_default=True)
@pass_app
def list_(app, run_id, outcome, list_runs, limit):
    """List runs or traces, newest first."""
    store = app.workspace.store()
    if list_runs:
        rows = list(store.rows("runs", order_by="created_at desc", limit=limit))
        if app.json_output:
            emit_json(rows)
            return
        print_table(["run", "pack", "teacher", "status", "traces", "created"],
                    [(r["id"], f"{r['pack_id']}@{r['pack_version']}", (r["teacher"] or {}).get("model"),
                      r["status"], f"{r['n_traces']}/{(r['n_tasks'] or 0) * (r['n_samples'] or 1)}",
                      r["created_at"]) for r in rows])
        return
    clauses, params = [], []
    if run_id:
        clauses.append("run_id = ?")
        params.append(run_id)
    if outcome:
        clauses.append("outcome = ?")
        params.append(outcome)
    rows = list(store.rows("traces", " and ".join(clauses) or None, params,
                           order_by="created_at desc", limit=limit))
    if app.json_output:
        emit_json([{k: r[k] for k in ("id", "run_id", "task_id", "sample_index", "outcome",
                                      "rule_verdicts", "errors", "prompt_tokens", "completion_tokens")}
                   for r in rows])
        return
    print_table(["trace", "task", "sample", "outcome", "rules failed", "errors", "tokens"],
                [(r["id"], r["task_id"], r["sample_index"], r["outcome"],
                  ", ".join(k for k, v in (r["rule_verdicts"] or {}).items() if v.get("passed") is False),
                  len(r["errors"] or []), (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0))
                 for r in rows])


@command.command("show")
@click.argument("trace_id")
@pass_app
def show(app, trace_id):
    """Show one trace as a conversation with its tool calls, results and verdicts."""
    from rich.panel import Panel
    from rich.text import Text

    row = app.workspace.store().get("traces", trace_id)
    if row is None:
        raise NotFoundError(f"trace {trace_id!r} not found; `reckon traces list` lists traces")
    if app.json_output:
        emit_json(row)
        return
    out = console()
    out.print(Text(f"trace {row['id']}  run {row['run_id']}  task {row['task_id']}  outcome {row['outcome']}"))
    for message in row["messages"]:
        role = message["role"]
        body = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            body += f"\n→ {call['function']['name']}({call['function']['arguments']})"
        # Text(...) keeps model output literal: "[0]" or "[/x]" is not rich markup.
        out.print(Panel(Text(body.strip() if role != "system" else body[:400] + " …"), title=role,
                        title_align="left"))
    print_table(["rule", "passed", "reason"],
                [(k, v.get("passed"), v.get("reason")) for k, v in (row["rule_verdicts"] or {}).items()])
    if row["errors"]:
        print_table(["step", "error", "message"], [(e["step"], e["kind"], e["message"]) for e in row["errors"]])


@command.command("export")
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--run", "run_ids", multiple=True, help="Only these runs (repeatable).")
@pass_app
def export(app, out, run_ids):
    """Write traces as OpenAI-format JSONL (messages + tools) to OUT ('-' for stdout)."""
    from appliance.traces_io import export_traces

    store = app.workspace.store()
    if out == "-":
        count = export_traces(store, sys.stdout, run_ids)
    else:
        with open(out, "w", encoding="utf-8") as handle:
            count = export_traces(store, handle, run_ids)
    click.echo(f"exported {count} traces to {out}", err=True)


@command.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def import_(app, path):
    """Import OpenAI-format JSONL traces; bad lines are reported by number and skipped."""
    from appliance.traces_io import import_file

    report = import_file(app.workspace.store(), path)
    if app.json_output:
        emit_json(report.to_dict())
        return
    click.echo(f"imported {report.imported} traces into run {report.run_id}")
    for bad in report.bad_lines:
        click.secho(f"{path}:{bad['line']}: {bad['error']}", fg="yellow", err=True)
    if report.bad_lines:
        click.echo(f"{len(report.bad_lines)} bad lines skipped", err=True)
