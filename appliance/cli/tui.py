"""`reckon tui`: open the operator console on the workspace."""

from __future__ import annotations

import click

from appliance.cli import pass_app


@click.command("tui")
@click.option("--pack", default="entitlements", show_default=True,
              help="Pack the Runs screen starts with (shipped name or folder).")
@click.option("--teacher", default="embedded", show_default=True,
              help="Teacher runtime spec the Runs screen starts with.")
@click.option("--poll", "poll_interval", type=click.FloatRange(min=0.2), default=1.0,
              show_default=True, help="Seconds between database polls of the visible screen.")
@pass_app
def command(app, pack, teacher, poll_interval):
    """Open the operator console (jobs it starts keep running after it closes)."""
    from tui.app import ReckonApp

    ReckonApp(app.workspace, pack=pack, teacher=teacher, poll_interval=poll_interval).run()
