"""`reckon pack`: validate and inspect tool packs."""

from __future__ import annotations

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table


@click.group("pack")
def command():
    """Validate and inspect tool packs."""


@command.command("show")
@click.argument("pack", default="entitlements")
@pass_app
def show(app, pack):
    """Validate PACK (name or folder) and show its tools, rules and digest."""
    from appliance.packs import load_pack

    loaded = load_pack(pack)
    info = {"id": loaded.id, "version": loaded.version, "digest": loaded.digest,
            "path": str(loaded.path), "tools": list(loaded.tools),
            "terminal_tools": loaded.terminal_tools,
            "rules": [{"id": r.id, "critical": r.critical, "text": r.text} for r in loaded.rules],
            "task_sources": [s.name for s in loaded.task_sources],
            "evalset": str(loaded.evalset_path) if loaded.evalset_path else None}
    if app.json_output:
        emit_json(info)
        return
    click.echo(f"{loaded.id} {loaded.version}  {loaded.digest}\n{loaded.path}")
    print_table(["tool", "terminal", "description"],
                [(t.name, t.terminal, t.description) for t in loaded.tools.values()], title="Tools")
    print_table(["rule", "critical", "text"], [(r.id, r.critical, r.text) for r in loaded.rules],
                title="Rules")
