"""`reckon bundle`: freeze, sign, verify, export and import frozen versions."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.keys import read_passphrase
from appliance.cli.output import emit_json, print_table
from appliance.errors import ReckonError

METADATA_FIELDS = ("base_identity", "dataset_digest", "evalset_digest", "eval_summary",
                   "pack_id", "pack_digest", "prompt_format", "training_config", "operator")


@click.group("bundle")
def command():
    """Freeze, sign, verify, export and import frozen versions (bundles)."""


@command.command("freeze")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metadata", "metadata_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with base_identity, dataset_digest, evalset_digest, eval_summary, "
                   "pack_id, pack_digest, prompt_format, training_config and operator.")
@click.option("--operator", help="Operator name; overrides the metadata file's value.")
@click.option("--base-gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Base model GGUF: also freeze a GGUF LoRA and an Ollama Modelfile for it.")
@click.option("--sign", "sign_after", is_flag=True, help="Sign the version with the site key.")
@pass_app
def freeze_command(app, adapter_dir, metadata_path, operator, base_gguf, sign_after):
    """Freeze the peft LoRA in ADAPTER_DIR into a read-only, content-addressed bundle."""
    from bundles.freeze import freeze
    from bundles.sign import sign_version

    metadata = _read_metadata(metadata_path, operator)
    workspace = app.workspace
    passphrase = read_passphrase() if sign_after else None
    with tempfile.TemporaryDirectory(prefix="reckon-freeze-") as scratch:
        source = adapter_dir
        if base_gguf is not None:
            source = _with_gguf_lora(adapter_dir, Path(scratch) / "adapter", base_gguf)
        version = freeze(workspace, source, **metadata)
    signer = sign_version(workspace, version.digest, passphrase) if sign_after else None

    if app.json_output:
        emit_json({"digest": version.digest, "path": str(version.path),
                   "signer": signer.as_dict() if signer else None})
        return
    click.echo(f"frozen {version.digest}\n{version.path}")
    if signer:
        click.echo(f"signed by {signer.name} ({signer.fingerprint})")


@command.command("list")
@pass_app
def list_command(app):
    """List frozen and imported versions, newest first."""
    from bundles.freeze import list_versions

    rows = list_versions(app.workspace)
    if app.json_output:
        for row in rows:
            row.pop("manifest", None)
        emit_json(rows)
        return
    print_table(["digest", "created", "source", "pack", "signer", "operator", "present"],
                [(row["id"][:16], row["created_at"], row["source"], row["pack_id"],
                  row.get("signer_name") or "unsigned", row["operator"],
                  "yes" if row["present"] else "MISSING") for row in rows])


@command.command("show")
@click.argument("digest")
@pass_app
def show_command(app, digest):
    """Show the manifest of version DIGEST (full digest or unique prefix)."""
    from bundles.freeze import load_version

    version = load_version(app.workspace, digest)
    if app.json_output:
        emit_json({"digest": version.digest, "path": str(version.path),
                   "signed": version.signed, "manifest": version.manifest})
        return
    manifest = version.manifest
    click.echo(f"version  {version.digest}\npath     {version.path}\n"
               f"signed   {'yes' if version.signed else 'no'}\n"
               f"created  {manifest['created_at']} by {manifest['operator']}\n"
               f"base     {manifest['base_model'].get('name')} "
               f"({manifest['base_model'].get('weights_sha256')})\n"
               f"pack     {manifest['pack'].get('id')} ({manifest['pack'].get('digest')})\n"
               f"dataset  {manifest['dataset_digest']}\nevalset  {manifest['evalset_digest']}\n"
               f"format   {manifest['prompt_format']}")
    print_table(["file", "bytes", "sha256"],
                [(name, entry.get("size"), entry["sha256"])
                 for name, entry in sorted(manifest["files"].items())])
    click.echo("eval summary: " + json.dumps(manifest["eval_summary"], sort_keys=True))


@command.command("sign")
@click.argument("digest")
@click.option("--replace", is_flag=True, help="Replace an existing signature.")
@pass_app
def sign_command(app, digest, replace):
    """Sign version DIGEST with the site key (passphrase from RECKON_KEY_PASSPHRASE or a prompt)."""
    from bundles.freeze import load_version
    from bundles.sign import sign_version

    version = load_version(app.workspace, digest)
    signer = sign_version(app.workspace, version.digest, read_passphrase(), replace=replace)
    if app.json_output:
        emit_json({"digest": version.digest, "signer": signer.as_dict()})
        return
    click.echo(f"signed {version.digest}\nby {signer.name} ({signer.fingerprint})")


@command.command("verify")
@click.argument("target")
@pass_app
def verify_command(app, target):
    """Verify TARGET (a version digest, prefix or bundle folder): digests, file set, signature."""
    from bundles.freeze import load_version
    from bundles.sign import verify_bundle

    path = Path(target)
    if not path.is_dir():
        path = load_version(app.workspace, target).path
    result = verify_bundle(path, workspace=app.workspace)
    if app.json_output:
        emit_json({"verified": True, **result.as_dict()})
        return
    click.echo(f"verified {result.digest}\nsigned by {result.signer.name} "
               f"(fingerprint {result.signer.fingerprint})\n{result.files} files checked")


@command.command("export")
@click.argument("digest")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gzip/--no-gzip", "compress", default=None,
              help="Compress with gzip [default: when OUT ends in .gz or .tgz].")
@pass_app
def export_command(app, digest, out, compress):
    """Write signed version DIGEST to the tar archive OUT for another site."""
    from bundles.archive import export_version
    from bundles.freeze import load_version

    version = load_version(app.workspace, digest)
    path = export_version(app.workspace, version.digest, out, compress=compress)
    if app.json_output:
        emit_json({"digest": version.digest, "archive": str(path),
                   "bytes": path.stat().st_size})
        return
    click.echo(f"exported {version.digest}\nto {path} ({path.stat().st_size} bytes)")


@command.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--max-member-mb", type=click.FloatRange(min=0, min_open=True),
              default=1024, show_default=True, help="Largest archive member accepted, in MiB.")
@click.option("--max-total-mb", type=click.FloatRange(min=0, min_open=True),
              default=4096, show_default=True, help="Largest total of all members, in MiB.")
@pass_app
def import_command(app, archive, max_member_mb, max_total_mb):
    """Verify ARCHIVE (signature against the site key and keyring) and install its bundle."""
    from bundles.archive import import_archive

    result = import_archive(app.workspace, archive,
                            max_member_bytes=int(max_member_mb * (1 << 20)),
                            max_total_bytes=int(max_total_mb * (1 << 20)))
    signer = result.verification.signer
    if app.json_output:
        emit_json({"digest": result.version.digest, "path": str(result.version.path),
                   "already_present": result.already_present, "signer": signer.name,
                   "fingerprint": signer.fingerprint})
        return
    state = "already installed" if result.already_present else "imported"
    click.echo(f"{state} {result.version.digest}\nsigned by {signer.name} "
               f"(fingerprint {signer.fingerprint})\n{result.version.path}")


@command.command("gguf")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base-gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Base model GGUF to check the adapter's shapes against.")
def gguf_command(adapter_dir, out, base_gguf):
    """Convert the peft LoRA in ADAPTER_DIR to a llama.cpp GGUF LoRA at OUT."""
    from bundles.gguf_lora import export_gguf_lora

    click.echo(f"wrote {export_gguf_lora(adapter_dir, out, base_gguf)}")


@command.command("modelfile")
@click.argument("digest")
@click.option("--base-gguf", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="This site's copy of the base model GGUF named in the manifest.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Modelfile here [default: stdout].")
@click.option("--num-ctx", type=click.IntRange(min=256), help="Context length for Ollama, in tokens.")
@pass_app
def modelfile_command(app, digest, base_gguf, output, num_ctx):
    """Write an Ollama Modelfile for version DIGEST with this site's base GGUF path."""
    from bundles.freeze import GGUF_LORA_NAME, load_version
    from bundles.ollama import render_modelfile

    version = load_version(app.workspace, digest)
    adapter = version.path / "adapter" / GGUF_LORA_NAME
    if not adapter.is_file():
        raise ReckonError(f"version {version.digest} has no GGUF LoRA (adapter/{GGUF_LORA_NAME}); "
                          "freeze it with --base-gguf")
    text = render_modelfile(base_gguf.resolve(), adapter, num_ctx=num_ctx)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


def _read_metadata(path: Path, operator: str | None) -> dict:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReckonError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise ReckonError(f"{path}: expected a JSON object with {', '.join(METADATA_FIELDS)}")
    if operator:
        metadata["operator"] = operator
    metadata.setdefault("operator", os.environ.get("USER") or "")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    missing = [field for field in METADATA_FIELDS if field not in metadata]
    if unknown:
        raise ReckonError(f"{path}: unknown field(s) {', '.join(unknown)}; expected "
                          f"{', '.join(METADATA_FIELDS)}")
    if missing:
        raise ReckonError(f"{path}: missing field(s) {', '.join(missing)}")
    return metadata


def _with_gguf_lora(adapter_dir: Path, target: Path, base_gguf: Path) -> Path:
    """Copy the adapter's peft files to target and add adapter.gguf and a Modelfile."""
    from bundles.freeze import GGUF_LORA_NAME, MODELFILE_NAME, REQUIRED_ADAPTER_FILES
    from bundles.gguf_lora import export_gguf_lora
    from bundles.ollama import write_modelfile

    target.mkdir(parents=True)
    for name in REQUIRED_ADAPTER_FILES:
        if (adapter_dir / name).is_file():
            shutil.copyfile(adapter_dir / name, target / name)
    export_gguf_lora(target, target / GGUF_LORA_NAME, base_gguf)
    # The Modelfile sits at the bundle root, next to the adapter/ folder.
    write_modelfile(target / MODELFILE_NAME, base_gguf.resolve(), f"./adapter/{GGUF_LORA_NAME}")
    return target
