"""Full verification of a ledger: recompute every leaf, node, root and signature.

Nothing stored is trusted except the public key. Verification reads the entries, recomputes
each leaf hash from the canonical bytes, rebuilds the tree with hashlib, compares the stored
node table against it, and checks every stored checkpoint's signature and root. Given an
auditor's older checkpoint, it proves with an RFC 6962 consistency proof that the ledger only
grew since. Problems are reported in order, so the first one names the first entry that
fails.

What can be pinned to one entry: an entry whose bytes no longer match its stored leaf hash
(edited), a missing index (deleted), an entry whose body records another index (inserted or
reordered). An attacker who also rewrites leaf hashes and nodes can only be caught by the
signed checkpoints, and then the report names the range between the last checkpoint that
still matches and the first that does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from audit.canonical import canonical_json
from audit.merkle import (HASH_SIZE, ProofError, build_levels, consistency_proof,
                          levels_subtree_hash, root_from_levels, verify_consistency)
from audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from audit.payloads import PayloadError, validate_payload

if TYPE_CHECKING:
    from audit.ledger import Ledger

log = logging.getLogger("audit.verify")

MAX_PROBLEMS = 50


@dataclass
class Problem:
    code: str
    message: str
    index: int | None = None

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "index": self.index}


@dataclass
class VerifyReport:
    """Outcome of `Ledger.verify`: ok only when no problem was found."""

    size: int = 0
    root: bytes = b""
    origin: str = ""
    checkpoints_checked: int = 0
    latest_checkpoint: Checkpoint | None = None
    older_checkpoint: Checkpoint | None = None
    consistency_proof: list[bytes] = field(default_factory=list)
    consistency_to_size: int | None = None
    problems: list[Problem] = field(default_factory=list)
    problems_omitted: int = 0
    warnings: list[str] = field(default_factory=list)
    deep: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def add(self, code: str, message: str, index: int | None = None) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems_omitted += 1
            return
        self.problems.append(Problem(code, message, index))

    def to_dict(self) -> dict:
        latest = self.latest_checkpoint
        older = self.older_checkpoint
        return {
            "ok": self.ok, "size": self.size, "root": self.root.hex(), "origin": self.origin,
            "deep": self.deep, "seconds": round(self.seconds, 3),
            "checkpoints_checked": self.checkpoints_checked,
            "latest_checkpoint": {"size": latest.size, "root": latest.root.hex()} if latest else None,
            "older_checkpoint": ({"size": older.size, "root": older.root.hex(),
                                  "consistent_with_size": self.consistency_to_size,
                                  "consistency_proof": [h.hex() for h in self.consistency_proof]}
                                 if older else None),
            "problems": [problem.to_dict() for problem in self.problems],
            "problems_omitted": self.problems_omitted,
            "warnings": self.warnings,
        }


def verify_ledger(ledger: "Ledger", *, older_checkpoint: str | None, verifier: Verifier | None,
                  deep: bool = False) -> VerifyReport:
    started = time.perf_counter()
    report = VerifyReport(origin=ledger.origin, deep=deep)

    leaves = _check_entries(ledger, report, deep)
    size = len(leaves) // HASH_SIZE
    report.size = size
    levels = build_levels(bytes(leaves))
    del leaves
    report.root = root_from_levels(levels, size)
    _check_nodes(ledger, levels, size, report)

    if verifier is None:
        report.add("no-public-key", "no public key to check checkpoint signatures; pass "
                   "--public-key or restore ledger.pub next to the ledger")
    else:
        _check_stored_checkpoints(ledger, levels, size, verifier, report)
        _check_checkpoint_file(ledger, levels, size, verifier, report)
        if older_checkpoint is not None:
            _check_older_checkpoint(ledger, older_checkpoint, levels, size, verifier, report)

    # Checked last so that the first problem names an entry when entries were changed.
    _check_triggers(ledger, report)

    covered = report.latest_checkpoint.size if report.latest_checkpoint else 0
    if covered < size:
        report.warnings.append(f"entries {covered}..{size - 1} are not covered by a signed "
                               "checkpoint yet; run `reckon ledger checkpoint`")
    report.seconds = time.perf_counter() - started
    log.info("ledger verify %s size=%d ok=%s problems=%d seconds=%.2f", ledger.path, size,
             report.ok, len(report.problems) + report.problems_omitted, report.seconds)
    return report


def _check_triggers(ledger: "Ledger", report: VerifyReport) -> None:
    from audit.ledger import REQUIRED_TRIGGERS

    present = {row[0] for row in ledger.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    missing = sorted(REQUIRED_TRIGGERS - present)
    if missing:
        report.add("triggers-missing", "append-only triggers are missing: " + ", ".join(missing)
                   + "; someone removed the protection against UPDATE and DELETE")


def _check_entries(ledger: "Ledger", report: VerifyReport, deep: bool) -> bytearray:
    """Recompute every leaf hash and check each entry's recorded index; return the hashes."""
    leaves = bytearray()
    sha256 = hashlib.sha256
    expected = 0
    eval_versions: dict[int, str] = {}
    rows = ledger.db.execute("SELECT idx, CAST(body AS BLOB), leaf_hash FROM entries ORDER BY idx")
    for index, body, stored in rows:
        computed = sha256(b"\x00" + body).digest()
        leaves += computed
        if index != expected:
            if index > expected:
                span = f"entry {expected}" if index == expected + 1 else f"entries {expected}..{index - 1}"
                report.add("entry-missing", f"{span} missing: deleted from the ledger", expected)
            else:
                report.add("entry-order", f"entry {index} appears out of order", index)
            expected = index
        expected += 1
        if computed != stored:
            report.add("entry-edited", f"entry {index}: its contents do not match its stored "
                       "leaf hash; the entry was edited after it was appended", index)
        if not body.startswith(b'{"index":%d,' % index):
            report.add("entry-position", f"entry {index}: its body records index "
                       f"{_recorded_index(body)}; entries were inserted, removed or reordered", index)
        if deep:
            _deep_check(index, body, report, eval_versions)
    return leaves


def _recorded_index(body: bytes) -> str:
    head = body[:40].split(b",", 1)[0]
    return head.removeprefix(b'{"index":').decode("utf-8", "replace") or "(none)"


def _deep_check(index: int, body: bytes, report: VerifyReport, eval_versions: dict[int, str]) -> None:
    """Check RFC 8785 canonical form, the envelope fields and the payload rules of one entry."""
    try:
        entry = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        report.add("entry-json", f"entry {index}: not valid JSON ({error})", index)
        return
    try:
        canonical = canonical_json(entry)
    except ValueError as error:
        report.add("entry-canonical", f"entry {index}: cannot be canonicalized ({error})", index)
        return
    if canonical != body:
        report.add("entry-canonical", f"entry {index}: not in RFC 8785 canonical form, so "
                   "others cannot recompute its hash from the decoded JSON", index)
    missing = [name for name in ("index", "kind", "operator", "payload", "time") if name not in entry]
    if missing:
        report.add("entry-fields", f"entry {index}: missing field(s) {', '.join(missing)}", index)
        return
    try:
        validate_payload(entry["kind"], entry["payload"])
    except PayloadError as error:
        report.add("entry-payload", f"entry {index}: {error}", index)
        return
    if entry["kind"] == "eval":
        eval_versions[index] = entry["payload"]["version"]
    elif entry["kind"] == "cutover":
        for referenced in entry["payload"]["evals"]:
            if eval_versions.get(referenced) != entry["payload"]["version"]:
                report.add("cutover-evidence", f"entry {index}: cutover to "
                           f"{entry['payload']['version']} cites entry {referenced}, which is not "
                           "an earlier eval of that version", index)


def _check_nodes(ledger: "Ledger", levels: list[bytes], size: int, report: VerifyReport) -> None:
    """Compare the stored node table with the recomputed tree, level by level."""
    stored: dict[int, bytearray] = {}
    positions: dict[int, int] = {}
    for level, index, digest in ledger.db.execute("SELECT level, idx, hash FROM nodes ORDER BY level, idx"):
        blob = stored.setdefault(level, bytearray())
        if positions.get(level, 0) != index:
            report.add("node-missing", f"tree node (level {level}, index {positions.get(level, 0)}) "
                       "is missing; nodes were deleted", positions.get(level, 0) << level)
        positions[level] = index + 1
        blob += digest
    for level in range(1, max(len(levels), max(stored, default=0) + 1)):
        expected = levels[level] if level < len(levels) else b""
        actual = bytes(stored.get(level, b""))
        if actual == expected:
            continue
        for offset in range(0, max(len(actual), len(expected)), HASH_SIZE):
            if actual[offset:offset + HASH_SIZE] != expected[offset:offset + HASH_SIZE]:
                node = offset // HASH_SIZE
                first, last = node << level, min(((node + 1) << level), size) - 1
                report.add("node-mismatch", f"tree node (level {level}, index {node}) does not "
                           f"match entries {first}..{last}; an entry there or the node was changed",
                           first)
                break


def _check_stored_checkpoints(ledger: "Ledger", levels: list[bytes], size: int,
                              verifier: Verifier, report: VerifyReport) -> None:
    largest = 0
    last_matching = 0
    for stored in ledger.checkpoints():
        report.checkpoints_checked += 1
        label = f"checkpoint #{stored.id} (size {stored.size})"
        try:
            checkpoint = open_checkpoint(stored.note, verifier, ledger.origin)
        except NoteError as error:
            report.add("checkpoint-signature", f"{label}: {error}")
            continue
        if checkpoint.size != stored.size or checkpoint.root != stored.root:
            report.add("checkpoint-columns", f"{label}: the size or root columns differ from "
                       "the signed note")
        if checkpoint.size < largest:
            report.add("checkpoint-rollback", f"{label}: smaller than the earlier checkpoint of "
                       f"size {largest}; the ledger's checkpoint was rolled back")
        largest = max(largest, checkpoint.size)
        if not _matches(checkpoint, levels, size, report, label, last_matching):
            continue
        last_matching = max(last_matching, checkpoint.size)
        if report.latest_checkpoint is None or checkpoint.size >= report.latest_checkpoint.size:
            report.latest_checkpoint = checkpoint


def _matches(checkpoint: Checkpoint, levels: list[bytes], size: int, report: VerifyReport,
             label: str, last_matching: int) -> bool:
    """Check that a signed checkpoint's root equals the recomputed root at its size."""
    if checkpoint.size > size:
        report.add("entries-truncated", f"{label}: signed for {checkpoint.size} entries but the "
                   f"ledger has {size}; entries {size}..{checkpoint.size - 1} were removed", size)
        return False
    if root_from_levels(levels, checkpoint.size) != checkpoint.root:
        report.add("checkpoint-root", f"{label}: its signed root does not match entries "
                   f"0..{checkpoint.size - 1}; an entry in {last_matching}..{checkpoint.size - 1} "
                   "was changed after it was signed", last_matching)
        return False
    return True


def _check_checkpoint_file(ledger: "Ledger", levels: list[bytes], size: int,
                           verifier: Verifier, report: VerifyReport) -> None:
    path = ledger.checkpoint_path
    if not path.is_file():
        return
    label = f"{path.name}"
    try:
        checkpoint = open_checkpoint(path.read_text(encoding="utf-8"), verifier, ledger.origin)
    except (NoteError, OSError, UnicodeDecodeError) as error:
        report.add("checkpoint-signature", f"{label}: {error}")
        return
    latest = report.latest_checkpoint
    if _matches(checkpoint, levels, size, report, f"{label} (size {checkpoint.size})", 0):
        if latest is None or checkpoint.size > latest.size:
            report.warnings.append(f"{label} (size {checkpoint.size}) is not among the stored "
                                   "checkpoints")
            report.latest_checkpoint = checkpoint


def _check_older_checkpoint(ledger: "Ledger", note: str, levels: list[bytes], size: int,
                            verifier: Verifier, report: VerifyReport) -> None:
    """Prove with a consistency proof that the ledger extends the given older checkpoint."""
    try:
        older = open_checkpoint(note, verifier, ledger.origin)
    except NoteError as error:
        report.add("older-checkpoint", f"the given checkpoint: {error}")
        return
    report.older_checkpoint = older
    if older.size > size:
        report.add("ledger-rolled-back", f"the given checkpoint covers {older.size} entries but "
                   f"the ledger has {size}; the ledger was truncated or rolled back", size)
        return

    latest = report.latest_checkpoint
    new_size = latest.size if latest is not None and latest.size >= older.size else size
    new_root = root_from_levels(levels, new_size)
    proof = consistency_proof(levels_subtree_hash(levels), older.size, new_size)
    try:
        verify_consistency(older.size, new_size, older.root, new_root, proof)
    except ProofError as error:
        report.add("not-append-only", f"the ledger does not extend the given checkpoint (size "
                   f"{older.size}): entries before index {older.size} were changed ({error})", 0)
        return
    report.consistency_proof = proof
    report.consistency_to_size = new_size


def problem_lines(report: VerifyReport) -> list[str]:
    lines = [problem.message for problem in report.problems]
    if report.problems_omitted:
        lines.append(f"... and {report.problems_omitted} more problems")
    return lines
