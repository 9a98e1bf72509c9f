"""The `reckon` command line: a thin shell over the library.

Each command group lives in its own module here and is imported only when it is invoked,
so `reckon --help` stays fast and does not import torch. A module exposes `command`, a click
command or group.
"""

from __future__ import annotations

import importlib
import sys

import click

from appliance import __version__
from appliance.errors import ReckonError

# name -> (module, one-line help shown by `reckon --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("appliance.cli.run", "Run a tool pack against a teacher and record traces."),
    "traces": ("appliance.cli.traces", "List, show, export and import traces."),
    "pack": ("appliance.cli.pack", "Validate and inspect tool packs."),
    "curate": ("appliance.cli.curate", "Turn traces into a versioned training set."),
    "review": ("appliance.cli.review", "Accept, reject or edit traces by hand."),
    "evalset": ("appliance.cli.evalset", "Freeze, list and import eval sets."),
    "eval": ("appliance.cli.eval", "Evaluate a model configuration; compare results."),
    "train": ("appliance.cli.train", "Train LoRA candidates and A/B them on the eval set."),
    "bundle": ("appliance.cli.bundle", "Freeze, sign, verify, export and import bundles."),
    "keys": ("appliance.cli.keys", "Manage the site's signing key and keyring."),
    "ledger": ("appliance.cli.ledger", "Append to, verify and read the audit ledger."),
    "jobs": ("appliance.cli.jobs", "List, follow and cancel jobs."),
    "demo": ("appliance.cli.demo", "Run the whole migration loop on the shipped pack."),
    "tui": ("appliance.cli.tui", "Open the operator console."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class AppContext:
    """Options shared by every command: the workspace location and output mode."""

    def __init__(self, home: str | None, json_output: bool, verbose: bool):
        self.home = home
        self.json_output = json_output
        self.verbose = verbose
        self._workspace = None

    @property
    def workspace(self):
        if self._workspace is None:
            from appliance.logs import configure_logging
            from appliance.workspace import Workspace

            self._workspace = Workspace.resolve(self.home)
            configure_logging(self._workspace, verbose=self.verbose)
        return self._workspace


pass_app = click.make_pass_decorator(AppContext)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="RECKON_HOME", type=click.Path(file_okay=False),
              help="Workspace folder for all runtime state [default: ./workspace].")
@click.option("--json", "json_output", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also log to stderr.")
@click.version_option(__version__, prog_name="reckon")
@click.pass_context
def cli(ctx, home, json_output, verbose):
    """Reckoning: move a policy-bound agent workload onto a small model you host and freeze."""
    from appliance.netguard import enforce_offline

    enforce_offline()
    ctx.obj = AppContext(home, json_output, verbose)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="reckon", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except ReckonError as error:
        click.secho(f"Error: {error}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
