"""The audit ledger library: entries, payload rules, proofs, read-only use and tamper evidence."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat

import pytest
import rfc8785

from appliance.errors import ReckonError
from audit.ledger import Ledger, LedgerError
from audit.merkle import (root_from_leaf_hashes, verify_consistency, verify_inclusion)
from audit.note import Checkpoint, Signer, Verifier, open_checkpoint, sign_checkpoint
from audit.payloads import PayloadError
from tests.ledger_helpers import eval_payload, rebuild_hashes, tamper


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "ledger" / "ledger.db"


@pytest.fixture
def ledger(ledger_path):
    with Ledger.open(ledger_path) as opened:
        yield opened


def fill(ledger: Ledger, count: int, version: str = "sha256:v1") -> None:
    for number in range(count):
        ledger.append("eval", eval_payload(version, value=0.5 + number / 1000), operator="alice")


def problem_codes(report) -> list[str]:
    return [problem.code for problem in report.problems]


# -- entries ---------------------------------------------------------------------------------


def test_new_ledger_records_its_key(ledger, ledger_path):
    first = ledger.entry(0)
    assert first.kind == "key"
    assert first.payload["action"] == "created"
    assert first.payload["key_id"] == ledger.verifier.vkey()
    key_file = ledger_path.parent / "ledger.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Verifier.from_vkey((ledger_path.parent / "ledger.pub").read_text()) == ledger.verifier


def test_append_returns_index_and_leaf_hash(ledger):
    index, digest = ledger.append("eval", eval_payload(), operator="alice")
    entry = ledger.entry(index)
    assert index == 1
    assert digest == hashlib.sha256(b"\x00" + entry.body).digest()
    envelope = {"index": 1, "kind": "eval", "operator": "alice", "payload": eval_payload(),
                "time": entry.time}
    assert entry.body == rfc8785.dumps(envelope)
    assert entry.time.endswith("Z")


def test_append_stores_signed_checkpoint(ledger):
    ledger.append("eval", eval_payload())
    latest = ledger.latest_checkpoint()
    checkpoint = open_checkpoint(latest.note, ledger.verifier, ledger.origin)
    assert checkpoint.size == 2
    assert checkpoint.root == ledger.root()
    assert ledger.checkpoint_path.read_text() != latest.note
    assert ledger.checkpoint() == latest.note
    assert ledger.checkpoint_path.read_text() == latest.note


def test_append_without_checkpoint(ledger):
    ledger.append("eval", eval_payload(), checkpoint=False)
    assert ledger.latest_checkpoint().size == 1
    report = ledger.verify()
    assert report.ok
    assert "entries 1..1 are not covered" in report.warnings[0]


def test_default_operator_is_os_user(ledger):
    index, _ = ledger.append("freeze", {"version": "sha256:v1", "bundle": "b-1"})
    assert ledger.entry(index).operator


@pytest.mark.parametrize("kind,payload,field", [
    ("eval", {k: v for k, v in eval_payload().items() if k != "eval_set"}, "eval_set"),
    ("eval", {k: v for k, v in eval_payload().items() if k != "decoding"}, "decoding"),
    ("eval", eval_payload(metrics={"acc": {"value": 0.5, "n": 3}}), "metrics.acc.interval"),
    ("eval", eval_payload(metrics={"acc": {"value": 0.9, "interval": [0.1, 0.2], "n": 3}}),
     "metrics.acc.interval"),
    ("eval", eval_payload(metrics={"acc": {"value": float("nan"), "interval": [0, 1], "n": 3}}),
     "metrics.acc.value"),
    ("eval", eval_payload(rules={"r": {"passed": 5, "n": 3}}), "rules.r.passed"),
    ("eval", eval_payload(metrics={}), "metrics"),
    ("eval", eval_payload(extra=2**60), "extra"),
    ("freeze", {"version": "sha256:v1"}, "bundle"),
    ("freeze", {"version": "", "bundle": "b"}, "version"),
    ("key", {"action": "lost", "key_id": "k", "purpose": "p"}, "action"),
    ("key", {"action": "created", "purpose": "p"}, "key_id"),
    ("cutover", {"version": "v", "decision": "approved", "reason": "r"}, "evals"),
    ("cutover", {"version": "v", "decision": "maybe", "reason": "r", "evals": []}, "decision"),
])
def test_invalid_payload_names_field(ledger, kind, payload, field):
    with pytest.raises(PayloadError) as raised:
        ledger.append(kind, payload)
    assert raised.value.field == field
    assert repr(field) in str(raised.value)
    assert ledger.size() == 1


def test_evaluation_metric_form_accepted(ledger):
    # The form appliance.evaluation's Metric.to_dict writes: low/high and successes.
    payload = eval_payload(
        metrics={"accuracy": {"name": "accuracy", "successes": 40, "n": 50, "value": 0.8,
                              "low": 0.67, "high": 0.89, "higher_is_better": True},
                 "empty": {"name": "empty", "successes": 0, "n": 0, "value": None,
                           "low": None, "high": None}},
        rules={"no_pii": {"name": "rule:no_pii", "successes": 49, "n": 50, "value": 0.98}})
    index, _ = ledger.append("eval", payload)
    assert ledger.entry(index).payload["metrics"]["empty"]["value"] is None
    with pytest.raises(PayloadError) as raised:
        ledger.append("eval", eval_payload(rules={"r": {"successes": 60, "n": 50}}))
    assert raised.value.field == "rules.r.successes"


def test_unknown_kind_rejected(ledger):
    with pytest.raises(PayloadError, match="kind"):
        ledger.append("note", {})


def test_cutover_must_cite_evals_of_its_version(ledger):
    eval_index, _ = ledger.append("eval", eval_payload("sha256:v2"))
    ledger.append("cutover", {"version": "sha256:v2", "decision": "approved",
                              "reason": "passed all rules", "evals": [eval_index]})
    with pytest.raises(LedgerError, match="evaluated version sha256:v2"):
        ledger.append("cutover", {"version": "sha256:v3", "decision": "approved",
                                  "reason": "r", "evals": [eval_index]})
    with pytest.raises(LedgerError, match="not an eval"):
        ledger.append("cutover", {"version": "sha256:v2", "decision": "approved",
                                  "reason": "r", "evals": [0]})
    with pytest.raises(LedgerError, match="does not exist"):
        ledger.append("cutover", {"version": "sha256:v2", "decision": "approved",
                                  "reason": "r", "evals": [99]})


def test_entries_by_version(ledger):
    fill(ledger, 3, "sha256:a")
    fill(ledger, 2, "sha256:b")
    ledger.append("freeze", {"version": "sha256:b", "bundle": "b-1"})
    assert [e.index for e in ledger.entries(version="sha256:a")] == [1, 2, 3]
    assert [e.kind for e in ledger.entries(version="sha256:b")] == ["eval", "eval", "freeze"]
    assert [e.index for e in ledger.entries(kind="key")] == [0]
    assert list(ledger.entries(version="sha256:none")) == []


# -- proofs ----------------------------------------------------------------------------------


def test_root_matches_reference_computation(ledger):
    fill(ledger, 12)
    hashes = [entry.leaf_hash for entry in ledger.entries()]
    for size in range(0, len(hashes) + 1):
        assert ledger.root(size) == root_from_leaf_hashes(hashes[:size])


def test_inclusion_and_consistency_proofs_verify(ledger):
    fill(ledger, 20)
    size = ledger.size()
    for index in range(size):
        proof = ledger.inclusion_proof(index, size)
        verify_inclusion(index, size, ledger.entry(index).leaf_hash, proof, ledger.root(size))
    for stored in ledger.checkpoints():
        proof = ledger.consistency_proof(stored.size, size)
        verify_consistency(stored.size, size, stored.root, ledger.root(size), proof)


def test_proof_arguments_checked(ledger):
    with pytest.raises(LedgerError, match="outside"):
        ledger.inclusion_proof(5)
    with pytest.raises(LedgerError, match="outside"):
        ledger.root(7)
    with pytest.raises(LedgerError, match="old size"):
        ledger.consistency_proof(3, 1)


# -- append-only storage ---------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE entries SET body = '{}' WHERE idx = 1",
    "DELETE FROM entries WHERE idx = 1",
    "UPDATE nodes SET hash = x'00'",
    "DELETE FROM nodes",
    "DELETE FROM checkpoints",
    "UPDATE checkpoints SET size = 0",
    "UPDATE meta SET value = 'x'",
    "INSERT INTO entries (idx, body, leaf_hash) VALUES (99, '{}', x'00')",
])
def test_triggers_reject_changes(ledger, ledger_path, sql):
    fill(ledger, 3)
    connection = sqlite3.connect(str(ledger_path))
    with pytest.raises(sqlite3.IntegrityError, match="audit ledger"):
        connection.execute(sql)
    connection.close()


def test_missing_triggers_reported(ledger, ledger_path):
    fill(ledger, 2)
    connection = sqlite3.connect(str(ledger_path))
    connection.execute("DROP TRIGGER entries_no_update")
    connection.commit()
    connection.close()
    report = ledger.verify()
    assert problem_codes(report) == ["triggers-missing"]
    assert "entries_no_update" in report.problems[0].message


# -- read-only use ---------------------------------------------------------------------------


def test_read_only_never_writes(ledger, ledger_path, tmp_path):
    fill(ledger, 5)
    ledger.close()
    before = ledger_path.read_bytes()
    mtime = ledger_path.stat().st_mtime_ns

    with Ledger.open(ledger_path, read_only=True) as reader:
        assert reader.verify().ok
        assert len(list(reader.entries(version="sha256:v1"))) == 5
        reader.inclusion_proof(2)
        with pytest.raises(LedgerError, match="read-only"):
            reader.append("eval", eval_payload())
        with pytest.raises(LedgerError, match="read-only"):
            reader.checkpoint()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")

    assert ledger_path.read_bytes() == before
    assert ledger_path.stat().st_mtime_ns == mtime


def test_read_only_missing_file(tmp_path):
    from appliance.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no ledger"):
        Ledger.open(tmp_path / "absent.db", read_only=True)
    assert not (tmp_path / "absent.db").exists()


def test_key_with_loose_mode_rejected(ledger, ledger_path):
    ledger.close()
    os.chmod(ledger_path.parent / "ledger.key", 0o644)
    with pytest.raises(ReckonError, match="chmod 600"):
        Ledger.open(ledger_path)


def test_missing_key_for_existing_ledger(ledger, ledger_path):
    ledger.close()
    (ledger_path.parent / "ledger.key").unlink()
    with pytest.raises(LedgerError, match="key .* is missing"):
        Ledger.open(ledger_path)


# -- tamper evidence -------------------------------------------------------------------------


@pytest.fixture
def filled(ledger):
    fill(ledger, 9)
    assert ledger.verify().ok
    return ledger


def test_edited_entry_detected(filled, ledger_path):
    entry = filled.entry(4)
    edited = entry.body.replace(b'"value":0.503', b'"value":0.953')
    assert edited != entry.body
    tamper(ledger_path, ("UPDATE entries SET body = ? WHERE idx = 4", (edited.decode(),)))
    report = filled.verify()
    assert not report.ok
    assert report.first_problem.code == "entry-edited"
    assert report.first_problem.index == 4


def test_edited_entry_with_recomputed_hashes_detected(filled, ledger_path):
    entry = filled.entry(4)
    edited = entry.body.replace(b'"value":0.503', b'"value":0.953')
    tamper(ledger_path, ("UPDATE entries SET body = ? WHERE idx = 4", (edited.decode(),)))
    rebuild_hashes(ledger_path)
    report = filled.verify()
    assert not report.ok
    # Only the signed checkpoints can catch a consistent rewrite; with one per append the
    # first failing checkpoint is the one that first covered entry 4.
    assert report.first_problem.code == "checkpoint-root"
    assert report.first_problem.index == 4
    assert "size 5" in report.first_problem.message


def test_deleted_entry_detected(filled, ledger_path):
    tamper(ledger_path, ("DELETE FROM entries WHERE idx = 3", ()))
    report = filled.verify()
    assert report.first_problem.code == "entry-missing"
    assert report.first_problem.index == 3
    assert "entry 3 missing" in report.first_problem.message


def test_inserted_entry_detected(filled, ledger_path):
    forged = rfc8785.dumps({"index": 5, "kind": "eval", "operator": "mallory",
                            "payload": eval_payload(value=0.99), "time": "2026-01-01T00:00:00.000000Z"})
    statements = [(f"UPDATE entries SET idx = idx + 1 WHERE idx = {index}", ())
                  for index in range(filled.size() - 1, 4, -1)]
    statements.append(("INSERT INTO entries (idx, body, leaf_hash) VALUES (5, ?, ?)",
                       (forged.decode(), hashlib.sha256(b"\x00" + forged).digest())))
    tamper(ledger_path, *statements)
    report = filled.verify()
    assert report.first_problem.code == "entry-position"
    assert report.first_problem.index == 6
    assert "records index 5" in report.first_problem.message


def test_reordered_entries_detected(filled, ledger_path):
    first, second = filled.entry(2), filled.entry(6)
    tamper(ledger_path,
           ("UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 2",
            (second.body.decode(), second.leaf_hash)),
           ("UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 6",
            (first.body.decode(), first.leaf_hash)))
    report = filled.verify()
    assert report.first_problem.code == "entry-position"
    assert report.first_problem.index == 2


def test_truncated_tail_detected(filled, ledger_path):
    size = filled.size()
    tamper(ledger_path,
           ("DELETE FROM entries WHERE idx >= ?", (size - 3,)),
           ("DELETE FROM nodes WHERE ((idx + 1) << level) > ?", (size - 3,)))
    report = filled.verify()
    assert not report.ok
    truncated = [p for p in report.problems if p.code == "entries-truncated"]
    assert truncated
    assert truncated[0].index == size - 3
    assert any(f"entries {size - 3}..{size - 1} were removed" in p.message for p in truncated)


def test_truncated_tail_with_checkpoints_removed(filled, ledger_path, tmp_path):
    saved = tmp_path / "auditor.note"
    saved.write_text(filled.latest_checkpoint().note)
    size = filled.size()
    tamper(ledger_path,
           ("DELETE FROM entries WHERE idx >= ?", (size - 3,)),
           ("DELETE FROM nodes WHERE ((idx + 1) << level) > ?", (size - 3,)),
           ("DELETE FROM checkpoints WHERE size > ?", (size - 3,)))
    filled.checkpoint_path.unlink()
    # The ledger is self-consistent again, so only an auditor's saved checkpoint reveals it.
    assert filled.verify().ok
    report = filled.verify(saved.read_text())
    assert report.first_problem.code == "ledger-rolled-back"
    assert f"covers {size} entries but the ledger has {size - 3}" in report.first_problem.message


def test_restored_old_copy_detected(ledger, ledger_path, tmp_path):
    fill(ledger, 4)
    ledger.close()
    backup = tmp_path / "backup.db"
    shutil.copyfile(ledger_path, backup)
    with Ledger.open(ledger_path) as writer:
        fill(writer, 3)
        newer = writer.checkpoint()
    shutil.copyfile(backup, ledger_path)
    with Ledger.open(ledger_path, read_only=True) as reader:
        report = reader.verify()
        assert report.first_problem.code == "entries-truncated"   # checkpoint.note is newer
        report = reader.verify(newer)
        assert "ledger-rolled-back" in problem_codes(report)


def test_rolled_back_checkpoint_detected(filled, ledger_path):
    older = filled.checkpoints()[2]
    tamper(ledger_path, ("INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)",
                         (older.size, older.root, older.note, older.created_at)))
    report = filled.verify()
    assert report.first_problem.code == "checkpoint-rollback"
    assert f"size {older.size}" in report.first_problem.message


def test_checkpoint_signed_by_other_key_detected(filled, ledger_path):
    impostor = Signer.generate(filled.origin)
    size = filled.size()
    forged = sign_checkpoint(Checkpoint(filled.origin, size, filled.root(size)), impostor)
    tamper(ledger_path, ("INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)",
                         (size, filled.root(size), forged, "2026-01-01T00:00:00Z")))
    report = filled.verify()
    assert report.first_problem.code == "checkpoint-signature"
    assert "not signed by the trusted key" in report.first_problem.message


def test_older_checkpoint_by_other_key_rejected(filled):
    impostor = Signer.generate(filled.origin)
    forged = sign_checkpoint(Checkpoint(filled.origin, 3, filled.root(3)), impostor)
    report = filled.verify(forged)
    assert report.first_problem.code == "older-checkpoint"


def test_wrong_public_key_fails(filled):
    report = filled.verify(verifier=Signer.generate(filled.origin).verifier)
    assert not report.ok
    assert all(p.code == "checkpoint-signature" for p in report.problems)


def test_older_checkpoint_consistency_proved(filled, tmp_path):
    older_note = filled.checkpoints()[3].note
    older = open_checkpoint(older_note, filled.verifier)
    fill(filled, 4)
    report = filled.verify(older_note)
    assert report.ok
    assert report.consistency_to_size == filled.size()
    verify_consistency(older.size, filled.size(), older.root, filled.root(), report.consistency_proof)


def test_rewritten_history_fails_consistency(filled, ledger_path):
    older_note = filled.checkpoints()[5].note
    entry = filled.entry(1)
    edited = entry.body.replace(b'"operator":"alice"', b'"operator":"bob"')
    tamper(ledger_path, ("UPDATE entries SET body = ? WHERE idx = 1", (edited.decode(),)),
           ("DELETE FROM checkpoints", ()))
    rebuild_hashes(ledger_path)
    filled.checkpoint_path.unlink()
    report = filled.verify(older_note)
    assert "not-append-only" in problem_codes(report)


def test_deep_verify_checks_canonical_form(filled, ledger_path):
    assert filled.verify(deep=True).ok
    entry = filled.entry(3)
    loose = json.dumps(json.loads(entry.body), indent=1)
    tamper(ledger_path, ("UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 3",
                         (loose, hashlib.sha256(b"\x00" + loose.encode()).digest())))
    report = filled.verify(deep=True)
    assert "entry-canonical" in problem_codes(report)
    assert report.problems[[p.code for p in report.problems].index("entry-canonical")].index == 3


def test_tampered_node_detected(filled, ledger_path):
    tamper(ledger_path, ("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = 2", (bytes(32),)))
    report = filled.verify()
    assert report.first_problem.code == "node-mismatch"
    assert report.first_problem.index == 4
