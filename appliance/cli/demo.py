"""`reckon demo`: the whole migration loop on the shipped pack with the embedded model."""

from __future__ import annotations

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json


@click.command("demo")
@click.option("--preset", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: about 20 minutes on 2 CPU cores; full: a real run.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the signed bundle archive [default: in the demo's folder].")
@click.option("--operator", default=None, help="Name recorded in manifests and the ledger [default: $USER].")
@pass_app
def command(app, preset, export_path, operator):
    """Run harness, curation, evals, training, freeze, sign, ledger, verify and export."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text

    from appliance import jobs
    from appliance.demo import format_interval

    workspace = app.workspace
    progress = Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=console(stderr=True), transient=False,
                        disable=app.json_output)
    bars: dict[str, int] = {}

    def listener(report: dict) -> None:
        stage = report.get("stage")
        if not stage:
            return
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=None, note="")
        total = report.get("stage_total") or None
        note = (report.get("message") or "").split(": ", 1)[-1][:60]
        progress.update(bars[stage], completed=report.get("stage_done") or 0, total=total,
                        note=note)

    with progress:
        job_id, result = jobs.run_inline(workspace, "demo",
                                         {"preset": preset, "operator": operator,
                                          "export_path": export_path}, listener)
    if app.json_output:
        emit_json({"job_id": job_id, **result})
        return

    table = Table(title="Base (full prompt) -> specialist (GGUF + LoRA, compact prompt), 95 % Wilson intervals")
    for column in ("metric", "base", "specialist", "change"):
        table.add_column(column)
    for row in result["table"]:
        if row["metric"] == "tokens_per_task":
            ratio = row["specialist"]["mean"] / row["base"]["mean"]
            table.add_row(Text(f"tokens per task ({row['part']})"), Text(f"{row['base']['mean']:.0f}"),
                          Text(f"{row['specialist']['mean']:.0f}"), Text(f"{ratio:.2f}x"))
            continue
        table.add_row(Text(f"{row['metric']} ({row['part']})"), Text(format_interval(row["base"])),
                      Text(format_interval(row["specialist"])), Text(f"{row['change_points']:+.1f} pts"))
    out = console()
    out.print(table)
    for key, value in result["paths"].items():
        out.print(Text(f"{key:>10}: {value}"))
