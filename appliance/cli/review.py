"""`reckon review`: accept, reject or edit a trace by hand."""

from __future__ import annotations

import json

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json, print_table
from appliance.errors import ReckonError


@click.group("review")
def command():
    """Accept, reject or edit traces by hand; every review records who and when."""


@command.command("accept")
@click.argument("trace_id")
@click.option("--override", is_flag=True,
              help="Include the trace even though its verification failed.")
@click.option("--operator", default=None, help="Who reviewed [default: $USER].")
@click.option("--note", default=None, help="Why.")
@pass_app
def accept(app, trace_id, override, operator, note):
    """Accept a trace for curation."""
    from appliance.curation import review

    row = review.accept(app.workspace.store(), trace_id, override=override, operator=operator,
                        note=note)
    _report(app, row)


@command.command("reject")
@click.argument("trace_id")
@click.option("--operator", default=None, help="Who reviewed [default: $USER].")
@click.option("--note", default=None, help="Why.")
@pass_app
def reject(app, trace_id, operator, note):
    """Exclude a trace from every future dataset."""
    from appliance.curation import review

    row = review.reject(app.workspace.store(), trace_id, operator=operator, note=note)
    _report(app, row)


@command.command("edit")
@click.argument("trace_id")
@click.option("--step", type=int, default=None,
              help="Assistant step (from 0) whose tool call to fix.")
@click.option("--call", "call_index", type=int, default=0, show_default=True,
              help="Tool call within the step.")
@click.option("--arguments", default=None, metavar="JSON", help="New arguments as a JSON object.")
@click.option("--answer", default=None, help="New final answer text.")
@click.option("--pack", default=None, help="Pack name or folder [default: the trace's pack].")
@click.option("--operator", default=None, help="Who reviewed [default: $USER].")
@click.option("--note", default=None, help="Why.")
@pass_app
def edit(app, trace_id, step, call_index, arguments, answer, pack, operator, note):
    """Fix one tool call's arguments or the final answer; the original is kept."""
    from appliance.curation import review

    parsed = None
    if arguments is not None:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ReckonError(f"--arguments is not valid JSON: {error.msg} at char {error.pos}") from None
    row = review.edit(app.workspace.store(), trace_id, step=step, call_index=call_index,
                      arguments=parsed, answer=answer, pack=pack, operator=operator, note=note)
    _report(app, row)


@command.command("history")
@click.argument("trace_id")
@pass_app
def history(app, trace_id):
    """List the reviews of a trace, oldest first."""
    from appliance.curation import review

    rows = review.history(app.workspace.store(), trace_id)
    if app.json_output:
        emit_json(rows)
        return
    print_table(["review", "action", "operator", "time", "override", "verified", "note"],
                [(r["id"], r["action"], r["operator"], r["time"], bool(r["override"]),
                  (r["report"] or {}).get("verified") if r["action"] == "edit" else "",
                  r["note"]) for r in rows])


def _report(app, row: dict) -> None:
    if app.json_output:
        emit_json(row)
        return
    line = f"trace {row['trace_id']}: {row['action']} by {row['operator']} (review {row['id']})"
    if row["action"] == "edit":
        report = row["report"]
        line += f"; edited trace verified: {report['verified']}"
        for reason in report["reasons"]:
            line += f"\n  {reason['stage']}: {reason['message']}"
    console().print(line)
