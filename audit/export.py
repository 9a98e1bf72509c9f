"""Export the ledger for auditors: entries, checkpoints and proofs as JSON, plus a verifier.

The export contains each entry's exact canonical text, so an auditor can recompute every
leaf hash. It also contains inclusion proofs against the latest stored checkpoint, and every
stored checkpoint with a consistency proof from each to the next. verify_standalone.py and ledger.pub are copied next
to it. Exporting only reads the ledger.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from appliance.errors import ReckonError
from audit.ledger import PUBLIC_KEY_FILE, Ledger

EXPORT_FORMAT = "reckoning-ledger-export/1"
STANDALONE_VERIFIER = Path(__file__).with_name("verify_standalone.py")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def build_export(ledger: Ledger, version: str | None = None) -> dict:
    """Return the export document; with `version`, only that version's entries (partial).

    NOTE: inclusion proofs cost O(log n) lookups per entry and the document grows by about
    log2(n) * 44 bytes per entry, so whole-ledger exports suit appliance-sized ledgers
    (tens of thousands of entries), not the million-entry benchmark.
    """
    latest = ledger.latest_checkpoint()
    if latest is None:
        raise ReckonError("the ledger has no checkpoint to export; run `reckon ledger checkpoint`")
    size = latest.size
    entries = []
    for entry in ledger.entries(version=version):
        proof = ledger.inclusion_proof(entry.index, size) if entry.index < size else None
        entries.append({
            "index": entry.index,
            "body": entry.body.decode("utf-8"),
            "leaf_hash": _b64(entry.leaf_hash),
            "inclusion_proof": [_b64(h) for h in proof] if proof is not None else None,
        })

    stored = ledger.checkpoints()
    sizes = sorted({checkpoint.size for checkpoint in stored if checkpoint.size <= size})
    consistency = [{"old_size": old, "new_size": new,
                    "proof": [_b64(h) for h in ledger.consistency_proof(old, new)]}
                   for old, new in zip(sizes, sizes[1:])]
    return {
        "format": EXPORT_FORMAT,
        "origin": ledger.origin,
        "public_key": ledger.verifier.vkey() if ledger.verifier else None,
        "complete": version is None,
        "version": version,
        "size": ledger.size(),
        "checkpoint": latest.note,
        "checkpoints": [checkpoint.note for checkpoint in stored],
        "consistency_proofs": consistency,
        "entries": entries,
    }


def write_export(ledger: Ledger, out: Path, version: str | None = None) -> dict:
    """Write export JSON to `out` and copy the verifier and public key beside it."""
    out = Path(out)
    if out.is_dir():
        out = out / "export.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = build_export(ledger, version)
    out.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    verifier_copy = out.parent / STANDALONE_VERIFIER.name
    shutil.copyfile(STANDALONE_VERIFIER, verifier_copy)
    public_copy = out.parent / PUBLIC_KEY_FILE
    if document["public_key"]:
        public_copy.write_text(document["public_key"] + "\n", encoding="utf-8")
    return {"export": str(out), "verifier": str(verifier_copy), "public_key": str(public_copy),
            "entries": len(document["entries"]), "checkpoint_size": ledger.latest_checkpoint().size}
