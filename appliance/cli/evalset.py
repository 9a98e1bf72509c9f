"""`reckon evalset`: freeze, list, show and import eval sets."""

from __future__ import annotations

import time

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json, print_table


@click.group(name="evalset")
def command():
    """Freeze, list, show and import eval sets (frozen sets never change)."""


@command.command("freeze")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Name to freeze the set under [default: the file name without .jsonl].")
@pass_app
def freeze_command(app, path, name):
    """Validate PATH and freeze it into the workspace, content-hashed and read-only."""
    from appliance.evaluation.evalset import freeze_evalset

    evalset = freeze_evalset(path, app.workspace, name)
    _report(app, evalset, f"Frozen {evalset.name} as {evalset.digest} ({len(evalset.cases)} cases).")


@command.command("list")
@pass_app
def list_command(app):
    """List the frozen eval sets of the workspace."""
    from appliance.evaluation.evalset import list_frozen

    rows = list_frozen(app.workspace)
    if app.json_output:
        emit_json(rows)
        return
    if not rows:
        click.echo("No frozen eval sets; freeze one with `reckon evalset freeze PATH`.")
        return
    # A 12-digit digest prefix is enough for `reckon evalset show`.
    print_table(["digest", "names", "cases", "categories", "frozen"], [
        [row["digest"].split(":", 1)[1][:12], ", ".join(row["names"]), row["n_cases"],
         ", ".join(f"{name}={count}" for name, count in row["categories"].items()),
         _time(row["frozen_at"])]
        for row in rows])


@command.command("show")
@click.argument("ref", metavar="ID")
@click.option("--cases", "show_cases", is_flag=True, help="Also list every case.")
@pass_app
def show_command(app, ref, show_cases):
    """Show a frozen eval set by name or digest (prefix), after verifying its digest."""
    from appliance.evaluation.evalset import load_frozen

    evalset = load_frozen(app.workspace, ref)
    if app.json_output:
        data = {"digest": evalset.digest, "manifest": evalset.manifest,
                "categories": evalset.categories(), "n_cases": len(evalset.cases)}
        if show_cases:
            data["cases"] = [case.data for case in evalset.cases]
        emit_json(data)
        return
    manifest = evalset.manifest or {}
    out = console()
    out.print(f"Eval set {evalset.digest}", markup=False)
    out.print(f"Name: {manifest.get('name')}   Cases: {len(evalset.cases)}   "
              f"Frozen: {_time(manifest.get('frozen_at'))}", markup=False)
    out.print(f"Source: {manifest.get('source')}", markup=False)
    if manifest.get("metadata"):
        out.print(f"Metadata: {manifest['metadata']}", markup=False)
    out.print("Digest verified.", markup=False)
    print_table(["category", "cases"], sorted(evalset.categories().items()))
    if show_cases:
        print_table(["id", "category", "outcome", "rules", "request"], [
            [case.id, case.category, case.expected_outcome, ", ".join(case.rules),
             _first_user_text(case)[:80]]
            for case in evalset.cases])


@command.command("import-bfcl")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--category", required=True,
              type=click.Choice(["simple_python", "multiple", "irrelevance"]),
              help="BFCL category to import.")
@click.option("--name", help="Name to freeze the set under [default: bfcl-<category>].")
@click.option("--limit", type=click.IntRange(min=1), help="Import only the first N cases.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="Also write the converted eval set (JSONL) to this file.")
@pass_app
def import_bfcl_command(app, directory, category, name, limit, output):
    """Convert a BFCL category from DIRECTORY (with possible_answer/) and freeze it."""
    from appliance.evaluation.bfcl import import_bfcl

    evalset = import_bfcl(directory, category, app.workspace, name=name, limit=limit,
                          output=output)
    _report(app, evalset, f"Imported BFCL {category}: {len(evalset.cases)} cases, frozen as "
                          f"{evalset.name} ({evalset.digest}).")


def _report(app, evalset, message: str) -> None:
    if app.json_output:
        emit_json({"digest": evalset.digest, "name": evalset.name,
                   "n_cases": len(evalset.cases), "path": str(evalset.path),
                   "categories": evalset.categories()})
    else:
        click.echo(message)


def _first_user_text(case) -> str:
    for message in case.messages:
        if message.get("role") == "user":
            return " ".join(str(message.get("content") or "").split())
    return ""


def _time(stamp) -> str:
    if not stamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp))
