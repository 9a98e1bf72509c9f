"""`reckon ledger`: append to, checkpoint, verify, prove, show, export and report the ledger.

Only `append` and `checkpoint` write. Every other command opens the SQLite file read-only
(mode=ro URI), so auditors can run them on a copy or on the live ledger without changing it.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table
from appliance.errors import ReckonError


class LedgerOptions:
    def __init__(self, app, ledger_path: str | None):
        self.app = app
        self.ledger_path = ledger_path

    def path(self) -> Path:
        if self.ledger_path:
            return Path(self.ledger_path)
        return self.app.workspace.ledger_path

    def open(self, read_only: bool):
        from audit.ledger import Ledger

        return Ledger.open(self.path(), read_only=read_only)


pass_options = click.make_pass_decorator(LedgerOptions)


@click.group("ledger")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False),
              help="Ledger database to use [default: <workspace>/ledger/ledger.db].")
@pass_app
@click.pass_context
def command(ctx, app, ledger_path):
    """Append to, verify and read the tamper-evident audit ledger."""
    ctx.obj = LedgerOptions(app, ledger_path)


def _load_payload(path: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReckonError(f"{path}: not UTF-8 text; write the payload as a JSON file") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReckonError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    if not isinstance(payload, dict):
        raise ReckonError(f"{path}: the payload must be a JSON object, got {type(payload).__name__}")
    return payload


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@command.command("append")
@click.option("--kind", required=True, type=click.Choice(["eval", "freeze", "key", "cutover"]),
              help="Entry kind.")
@click.option("--file", "payload_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON file with the payload object.")
@click.option("--operator", default=None, help="Operator name [default: the OS user].")
@click.option("--no-checkpoint", is_flag=True, help="Do not sign a checkpoint after appending.")
@pass_options
def append_command(options, kind, payload_file, operator, no_checkpoint):
    """Append one entry from a JSON payload file (for scripts)."""
    payload = _load_payload(payload_file)
    with options.open(read_only=False) as ledger:
        index, digest = ledger.append(kind, payload, operator, checkpoint=False)
        if not no_checkpoint:
            ledger.checkpoint()
        latest = ledger.latest_checkpoint()
    result = {"index": index, "leaf_hash": digest.hex(), "kind": kind,
              "checkpoint_size": latest.size if latest else None}
    if options.app.json_output:
        emit_json(result)
    else:
        click.echo(f"appended {kind} entry {index} (leaf hash {digest.hex()})")


@command.command("checkpoint")
@pass_options
def checkpoint_command(options):
    """Sign a checkpoint of the current tree and print it (C2SP signed note)."""
    from audit.note import Checkpoint

    with options.open(read_only=False) as ledger:
        note = ledger.checkpoint()
    checkpoint = Checkpoint.parse(note.split("\n\n")[0] + "\n")
    if options.app.json_output:
        emit_json({"origin": checkpoint.origin, "size": checkpoint.size,
                   "root": checkpoint.root.hex(), "note": note})
    else:
        click.echo(note, nl=False)


@command.command("verify")
@click.option("--checkpoint", "older", type=click.Path(exists=True, dir_okay=False),
              help="An older checkpoint note; prove the ledger only grew since.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False),
              help="Trusted public key (vkey line or PEM) [default: ledger.pub beside the ledger].")
@click.option("--deep", is_flag=True,
              help="Also check RFC 8785 canonical form and payload rules of every entry (slower).")
@pass_options
def verify_command(options, older, public_key, deep):
    """Recompute every hash, node, root and signature; exit 1 naming the first failure."""
    from audit.note import load_verifier
    from audit.verify import problem_lines

    verifier = load_verifier(public_key) if public_key else None
    older_note = Path(older).read_text(encoding="utf-8") if older else None
    with options.open(read_only=True) as ledger:
        report = ledger.verify(older_note, verifier=verifier, deep=deep)
    if options.app.json_output:
        emit_json(report.to_dict())
    else:
        status = "OK" if report.ok else "FAILED"
        click.echo(f"{status}: {report.size} entries, root {report.root.hex()}, "
                   f"{report.checkpoints_checked} checkpoints checked in {report.seconds:.2f} s")
        if report.latest_checkpoint:
            click.echo(f"latest valid checkpoint: size {report.latest_checkpoint.size}")
        if report.older_checkpoint and report.consistency_to_size is not None:
            click.echo(f"consistent with the given checkpoint (size {report.older_checkpoint.size}) "
                       f"-> size {report.consistency_to_size}, proof of "
                       f"{len(report.consistency_proof)} hashes")
        for line in problem_lines(report):
            click.echo(f"problem: {line}")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")
    if not report.ok:
        sys.exit(1)


@command.command("proof")
@click.option("--index", type=int, default=None, help="Entry index for an inclusion proof.")
@click.option("--old-size", type=int, default=None,
              help="Tree size for a consistency proof from that size to the checkpoint.")
@click.option("--size", type=int, default=None,
              help="Tree size to prove against [default: the latest checkpoint's size].")
@pass_options
def proof_command(options, index, old_size, size):
    """Print an inclusion proof (--index) or consistency proof (--old-size), verified."""
    from audit.merkle import verify_consistency, verify_inclusion

    if (index is None) == (old_size is None):
        raise click.UsageError("give exactly one of --index or --old-size")
    with options.open(read_only=True) as ledger:
        latest = ledger.latest_checkpoint()
        if size is None:
            if latest is None:
                raise ReckonError("the ledger has no checkpoint; pass --size or run "
                                  "`reckon ledger checkpoint`")
            size = latest.size
        root = ledger.root(size)
        if index is not None:
            entry = ledger.entry(index)
            proof = ledger.inclusion_proof(index, size)
            verify_inclusion(index, size, entry.leaf_hash, proof, root)
            result = {"type": "inclusion", "index": index, "size": size,
                      "leaf_hash": _b64(entry.leaf_hash)}
        else:
            proof = ledger.consistency_proof(old_size, size)
            verify_consistency(old_size, size, ledger.root(old_size), root, proof)
            result = {"type": "consistency", "old_size": old_size,
                      "old_root": _b64(ledger.root(old_size)), "size": size}
        result.update({"root": _b64(root), "proof": [_b64(h) for h in proof],
                       "checkpoint": latest.note if latest and latest.size == size else None})
    if options.app.json_output:
        emit_json(result)
    else:
        for key in ("type", "index", "old_size", "old_root", "size", "leaf_hash", "root"):
            if key in result:
                click.echo(f"{key}: {result[key]}")
        click.echo("proof:")
        for digest in result["proof"]:
            click.echo(f"  {digest}")
        click.echo("verified against the root above")


def _metrics_summary(payload: dict) -> str:
    from audit.payloads import metric_interval

    parts = []
    for name, metric in sorted(payload.get("metrics", {}).items()):
        low, high = metric_interval(metric)
        parts.append(f"{name} {metric.get('value')} [{low}, {high}] n={metric.get('n')}")
    return "; ".join(parts)


def _rules_summary(payload: dict) -> str:
    from audit.payloads import rule_passed

    return "; ".join(f"{rule} {rule_passed(result)}/{result.get('n')}"
                     for rule, result in sorted(payload.get("rules", {}).items()))


@command.command("show")
@click.option("--version", "version", required=True, help="Version digest to show.")
@pass_options
def show_command(options, version):
    """List every entry about one frozen version over time (evals, freeze, cut-over)."""
    with options.open(read_only=True) as ledger:
        entries = list(ledger.entries(version=version))
    if options.app.json_output:
        emit_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        click.echo(f"no ledger entries for version {version}")
        return
    rows = []
    for entry in entries:
        payload = entry.payload
        if entry.kind == "eval":
            details = f"eval set {payload.get('eval_set')}"
        else:
            details = json.dumps({k: v for k, v in payload.items() if k != "version"}, sort_keys=True)
        rows.append([entry.index, entry.time, entry.kind, entry.operator, details,
                     _metrics_summary(payload), _rules_summary(payload)])
    print_table(["index", "time", "kind", "operator", "details", "metrics", "rules"], rows,
                title=f"Ledger entries for {version}")


@command.command("export")
@click.argument("out", type=click.Path())
@click.option("--version", "version", default=None,
              help="Export only this version's entries with inclusion proofs (partial export).")
@pass_options
def export_command(options, out, version):
    """Write OUT (export JSON) with verify_standalone.py and ledger.pub beside it."""
    from audit.export import write_export

    with options.open(read_only=True) as ledger:
        result = write_export(ledger, Path(out), version)
    if options.app.json_output:
        emit_json(result)
    else:
        click.echo(f"exported {result['entries']} entries (checkpoint size "
                   f"{result['checkpoint_size']}) to {result['export']}")
        click.echo(f"auditors run: python {Path(result['verifier']).name} "
                   f"{Path(result['export']).name} --public-key ledger.pub")


@command.command("report")
@click.option("--version", "version", required=True, help="Version digest to report on.")
@click.argument("out", type=click.Path(dir_okay=False))
@pass_options
def report_command(options, version, out):
    """Write an HTML report of one version: eval history, metrics, checkpoint and proofs."""
    from audit.report import write_version_report

    with options.open(read_only=True) as ledger:
        path = write_version_report(ledger, version, Path(out))
    if options.app.json_output:
        emit_json({"report": str(path)})
    else:
        click.echo(f"wrote {path}")


@command.command("public-key")
@pass_options
def public_key_command(options):
    """Print the ledger's public key (vkey line) for auditors to keep."""
    with options.open(read_only=True) as ledger:
        if ledger.verifier is None:
            raise ReckonError(f"no ledger.pub beside {ledger.path}")
        click.echo(ledger.verifier.vkey())
