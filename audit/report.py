"""HTML report of one frozen version: its eval history, metrics, checkpoint and proof status.

Every value from the ledger goes through html.escape, because payloads hold operator and
model text. The report reads the ledger only.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from appliance.errors import NotFoundError
from audit.ledger import Entry, Ledger, LedgerError
from audit.merkle import ProofError, verify_inclusion
from audit.note import NoteError, open_checkpoint
from audit.payloads import metric_interval, rule_passed
from audit.verify import VerifyReport

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { font-size: 0.85em; word-break: break-all; }
.ok { color: #11661f; font-weight: bold; }
.bad { color: #a01010; font-weight: bold; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _status(ok: bool, text: str) -> str:
    return f'<span class="{"ok" if ok else "bad"}">{_e(text)}</span>'


def _proof_status(ledger: Ledger, entry: Entry, checkpoint) -> str:
    if checkpoint is None:
        return _status(False, "no valid checkpoint")
    if entry.index >= checkpoint.size:
        return _status(False, f"not yet covered (checkpoint size {checkpoint.size})")
    try:
        proof = ledger.inclusion_proof(entry.index, checkpoint.size)
        verify_inclusion(entry.index, checkpoint.size, entry.leaf_hash, proof, checkpoint.root)
    except (ProofError, LedgerError) as error:
        return _status(False, f"proof failed: {error}")
    return _status(True, f"included in checkpoint of size {checkpoint.size} ({len(proof)} hashes)")


def _metrics_table(payload: dict) -> str:
    rows = []
    for name, metric in sorted(payload.get("metrics", {}).items()):
        low, high = metric_interval(metric)
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(metric.get('value'))}</td>"
                    f"<td>[{_e(low)}, {_e(high)}]</td><td>{_e(metric.get('n'))}</td></tr>")
    return ("<table><tr><th>metric</th><th>value</th><th>interval</th><th>n</th></tr>"
            + "".join(rows) + "</table>")


def _rules_table(payload: dict) -> str:
    rows = [f"<tr><td>{_e(rule)}</td><td>{_e(rule_passed(result))}</td><td>{_e(result.get('n'))}</td></tr>"
            for rule, result in sorted(payload.get("rules", {}).items())]
    if not rows:
        return "<p>No per-rule results.</p>"
    return ("<table><tr><th>rule</th><th>passed</th><th>n</th></tr>" + "".join(rows) + "</table>")


def render_version_report(ledger: Ledger, version: str, verification: VerifyReport) -> str:
    """Return the HTML report for `version`; raise NotFoundError when it has no entries."""
    entries = list(ledger.entries(version=version))
    if not entries:
        raise NotFoundError(f"the ledger has no entries for version {version}")

    checkpoint = None
    latest = ledger.latest_checkpoint()
    checkpoint_error = "the ledger has no checkpoint"
    if latest is not None and ledger.verifier is not None:
        try:
            checkpoint = open_checkpoint(latest.note, ledger.verifier, ledger.origin)
        except NoteError as error:
            checkpoint_error = str(error)

    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Ledger report: {_e(version)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Version <code>{_e(version)}</code></h1>",
             f"<p>Ledger origin <code>{_e(ledger.origin)}</code>, {_e(verification.size)} entries.</p>",
             "<h2>Ledger verification</h2>"]
    if verification.ok:
        parts.append(f"<p>{_status(True, 'verified')}: every leaf hash, tree node and "
                     f"{_e(verification.checkpoints_checked)} signed checkpoints recomputed.</p>")
    else:
        parts.append(f"<p>{_status(False, 'FAILED')}</p><ul>"
                     + "".join(f"<li>{_e(p.message)}</li>" for p in verification.problems) + "</ul>")
    if checkpoint is not None:
        parts.append(f"<p>Latest checkpoint: size {_e(checkpoint.size)}, root "
                     f"<code>{_e(checkpoint.root.hex())}</code>, signature {_status(True, 'valid')}.</p>"
                     f"<pre>{_e(latest.note)}</pre>")
    else:
        parts.append(f"<p>Latest checkpoint: {_status(False, checkpoint_error)}</p>")

    evals = [entry for entry in entries if entry.kind == "eval"]
    parts.append(f"<h2>Eval history ({len(evals)})</h2>")
    for entry in evals:
        payload = entry.payload
        parts.append(f"<h3>Entry {_e(entry.index)}: {_e(entry.time)}</h3>"
                     f"<p>Operator {_e(entry.operator)}; eval set <code>{_e(payload.get('eval_set'))}</code>; "
                     f"proof: {_proof_status(ledger, entry, checkpoint)}</p>"
                     + _metrics_table(payload) + _rules_table(payload)
                     + f"<p>Runtime <code>{_e(json.dumps(payload.get('runtime'), sort_keys=True))}</code><br>"
                     f"Decoding <code>{_e(json.dumps(payload.get('decoding'), sort_keys=True))}</code></p>")

    others = [entry for entry in entries if entry.kind != "eval"]
    if others:
        parts.append("<h2>Freeze and cut-over entries</h2><table><tr><th>index</th><th>kind</th>"
                     "<th>time</th><th>operator</th><th>details</th><th>proof</th></tr>")
        for entry in others:
            details = {k: v for k, v in entry.payload.items() if k != "version"}
            parts.append(f"<tr><td>{_e(entry.index)}</td><td>{_e(entry.kind)}</td><td>{_e(entry.time)}</td>"
                         f"<td>{_e(entry.operator)}</td><td><code>{_e(json.dumps(details, sort_keys=True))}</code></td>"
                         f"<td>{_proof_status(ledger, entry, checkpoint)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_version_report(ledger: Ledger, version: str, out: Path) -> Path:
    verification = ledger.verify()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_version_report(ledger, version, verification), encoding="utf-8")
    return out
