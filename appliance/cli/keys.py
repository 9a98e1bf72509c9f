"""`reckon keys`: the site's signing key and the keyring of other sites' public keys."""

from __future__ import annotations

import os
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table


def read_passphrase(*, confirm: bool = False) -> str:
    """Return the key passphrase from RECKON_KEY_PASSPHRASE, else a hidden prompt."""
    from bundles.keys import PASSPHRASE_ENV

    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    return click.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm,
                        err=True)


@click.group("keys")
def command():
    """Manage the site's signing key and the keyring of trusted public keys."""


@command.command("init")
@click.option("--name", help="Site name recorded with the key and shown by verification "
                             "[default: the host name].")
@click.option("--force", is_flag=True,
              help="Replace an existing key; the old one is moved to keys/archive/.")
@pass_app
def init(app, name, force):
    """Create the site's ECDSA P-256 signing key, encrypted with a passphrase.

    The passphrase comes from RECKON_KEY_PASSPHRASE or a prompt and is never stored.
    """
    from bundles import keys

    workspace = app.workspace
    # Check before prompting so the operator does not type a passphrase for nothing.
    keys.check_can_init(workspace, force=force)
    if name is not None:
        keys.validate_key_name(name)
    info = keys.init_key(workspace, read_passphrase(confirm=True), name=name, force=force)
    _show(app, info, created=True)


@command.command("show")
@pass_app
def show(app):
    """Show the site key's name, fingerprint and public key file."""
    from bundles import keys

    _show(app, keys.site_key_info(app.workspace), created=False)


@command.command("export-public")
@click.argument("out", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def export_public(app, out):
    """Write the site's public key (PEM) to OUT, or to stdout without OUT."""
    from bundles import keys

    pem = keys.export_public(app.workspace)
    if out is None:
        click.echo(pem.decode("ascii"), nl=False)
        return
    out.write_bytes(pem)
    click.echo(f"wrote {out} (fingerprint {keys.site_key_info(app.workspace).fingerprint})",
               err=True)


@command.command("import-public")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a keyring entry with the same name.")
@pass_app
def import_public(app, name, file, force):
    """Trust another site's public key FILE under NAME for bundle imports.

    Compare the printed fingerprint with the one the sending site reads from
    `reckon keys show` over a channel you trust.
    """
    from bundles import keys

    info = keys.import_public(app.workspace, name, file, force=force)
    if app.json_output:
        emit_json(info.as_dict())
        return
    click.echo(f"imported {info.name}\nfingerprint {info.fingerprint}\n{info.path}")


@command.command("list")
@pass_app
def list_keys(app):
    """List trusted public keys: the site's own key and the keyring."""
    from bundles import keys

    listed = keys.list_keys(app.workspace)
    if app.json_output:
        emit_json([key.as_dict() for key in listed])
        return
    print_table(["name", "own", "fingerprint", "file"],
                [(key.name, "yes" if key.own else "", key.fingerprint, key.path) for key in listed])


def _show(app, info, *, created: bool) -> None:
    if app.json_output:
        emit_json(info.as_dict())
        return
    verb = "created" if created else "site key"
    click.echo(f"{verb} {info.name}\nfingerprint {info.fingerprint}\npublic key {info.path}")
