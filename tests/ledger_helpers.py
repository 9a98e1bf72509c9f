"""Shared helpers for the ledger tests: payloads and raw-SQLite tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from audit.ledger import SCHEMA, _append_only_triggers
from audit.merkle import build_levels, leaf_hash


def eval_payload(version: str = "sha256:v1", value: float = 0.8, **extra) -> dict:
    payload = {
        "version": version,
        "eval_set": "sha256:evalset",
        "metrics": {"accuracy": {"value": value, "interval": [value - 0.05, value + 0.05], "n": 400},
                    "refusal_rate": {"value": 0.1, "interval": [0.07, 0.13], "n": 400}},
        "rules": {"no_pii": {"passed": 398, "n": 400}, "cite_policy": {"passed": 400, "n": 400}},
        "runtime": {"kind": "llama.cpp", "model": "gemma3-270m", "threads": 2},
        "decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "seed": 7},
    }
    payload.update(extra)
    return payload


def tamper(db_path: Path, *statements: tuple[str, tuple]) -> None:
    """Run statements with the append-only triggers dropped, then restore the triggers.

    This is what someone with write access to the file can do; the tests check that
    verification still finds the change.
    """
    connection = sqlite3.connect(str(db_path), isolation_level=None)
    triggers = [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    connection.execute("BEGIN")
    for name in triggers:
        connection.execute(f"DROP TRIGGER {name}")
    for sql, params in statements:
        connection.execute(sql, params)
    connection.execute("COMMIT")
    connection.executescript(SCHEMA + _append_only_triggers())
    connection.close()


def rebuild_hashes(db_path: Path) -> None:
    """Recompute every leaf hash and node from the current bodies, as a careful forger would."""
    connection = sqlite3.connect(str(db_path), isolation_level=None)
    rows = connection.execute("SELECT idx, CAST(body AS BLOB) FROM entries ORDER BY idx").fetchall()
    connection.close()
    hashes = [leaf_hash(body) for _, body in rows]
    levels = build_levels(b"".join(hashes))
    statements = [("DELETE FROM nodes", ())]
    for (index, _), digest in zip(rows, hashes):
        statements.append(("UPDATE entries SET leaf_hash = ? WHERE idx = ?", (digest, index)))
    for level in range(1, len(levels)):
        for position in range(len(levels[level]) // 32):
            statements.append(("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
                               (level, position, levels[level][position * 32:(position + 1) * 32])))
    tamper(db_path, *statements)
