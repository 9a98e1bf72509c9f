"""The append-only audit ledger: its own SQLite file, a Merkle tree and signed checkpoints.

Each entry is the RFC 8785 canonical JSON of
    {"index": i, "kind": ..., "operator": ..., "payload": {...}, "time": "...Z"}
and its leaf hash is SHA-256(0x00 || entry bytes). Because RFC 8785 sorts keys, every entry
starts with '{"index":<i>,', which lets verification check positions without parsing.

Tables (all append-only, enforced by triggers):
    meta         origin and format version
    entries      idx (leaf index), body (canonical JSON text), leaf_hash
    nodes        hashes of complete perfect subtrees above the leaves: (level, idx) covers
                 leaves [idx * 2**level, (idx + 1) * 2**level); they make roots and proofs
                 O(log n) lookups
    checkpoints  every signed checkpoint note, in signing order

The ledger's Ed25519 key sits next to the database: ledger.key (mode 0600, C2SP signer-key
text) and ledger.pub (verifier key). `Ledger.checkpoint()` also writes the latest checkpoint
to checkpoint.note after its transaction commits, so a crash can leave that file older but
never newer than the database.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from appliance.errors import NotFoundError, ReckonError
from audit.canonical import canonical_json
from audit.merkle import (consistency_proof, inclusion_proof, leaf_hash, node_hash,
                          root_from_peaks, subtree_hasher)
from audit.note import (Checkpoint, NoteError, Signer, Verifier, load_signer, load_verifier,
                        save_signer, sign_checkpoint)
from audit.payloads import PayloadError, check_json_values, validate_payload

log = logging.getLogger("audit.ledger")

FORMAT_VERSION = "1"
KEY_FILE = "ledger.key"
PUBLIC_KEY_FILE = "ledger.pub"
CHECKPOINT_FILE = "checkpoint.note"
SYNCHRONOUS_MODES = ("FULL", "NORMAL")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_version ON entries (json_extract(body, '$.payload.version'));
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_in_order BEFORE INSERT ON entries
    WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM entries)
    BEGIN SELECT RAISE(ABORT, 'audit ledger: entries must be appended at the next index'); END;
"""

APPEND_ONLY_TABLES = ("meta", "entries", "nodes", "checkpoints")
REQUIRED_TRIGGERS = frozenset(
    [f"{table}_no_{action}" for table in APPEND_ONLY_TABLES for action in ("update", "delete")]
    + ["entries_in_order"])


def _append_only_triggers() -> str:
    statements = []
    for table in APPEND_ONLY_TABLES:
        for action in ("update", "delete"):
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action.upper()} "
                f"ON {table} BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: "
                f"{action} on {table} is not allowed'); END;")
    return "\n".join(statements)


class LedgerError(ReckonError):
    """The ledger cannot be opened or written as requested."""


def utc_timestamp() -> str:
    """Return the current UTC time as RFC 3339 with microseconds, e.g. 2026-12-04T20:15:00.123456Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_payload(kind: str, payload: dict) -> bytes:
    """Return the payload's RFC 8785 bytes, or raise PayloadError naming the bad value."""
    try:
        return canonical_json(payload)
    except ValueError as error:
        check_json_values(kind, payload)
        raise PayloadError(kind, "(payload)", f"cannot be canonicalized: {error}") from None


def envelope_bytes(index: int, kind: str, operator: str, payload_bytes: bytes, timestamp: str) -> bytes:
    """Return the canonical entry: the RFC 8785 form of the envelope object.

    RFC 8785 sorts object members by key and serializes each member independently, so the
    envelope is the concatenation of its members in key order (index, kind, operator,
    payload, time) around the already canonical payload.
    """
    return b"".join((b'{"index":', str(index).encode(), b',"kind":', canonical_json(kind),
                     b',"operator":', canonical_json(operator), b',"payload":', payload_bytes,
                     b',"time":', canonical_json(timestamp), b"}"))


@dataclass(frozen=True)
class Entry:
    """One decoded ledger entry with its exact canonical bytes and leaf hash."""

    index: int
    kind: str
    operator: str | None
    time: str
    payload: dict
    body: bytes
    leaf_hash: bytes

    @property
    def version(self) -> str | None:
        return self.payload.get("version")

    @classmethod
    def from_row(cls, index: int, body: bytes, stored_hash: bytes) -> "Entry":
        try:
            decoded = json.loads(body)
        except json.JSONDecodeError as error:
            raise LedgerError(f"ledger entry {index} is not valid JSON ({error.msg}); "
                              "run `reckon ledger verify`") from None
        return cls(index, decoded.get("kind"), decoded.get("operator"), decoded.get("time"),
                   decoded.get("payload") or {}, body, stored_hash)

    def to_dict(self) -> dict:
        return {"index": self.index, "kind": self.kind, "operator": self.operator,
                "time": self.time, "payload": self.payload, "leaf_hash": self.leaf_hash.hex()}


@dataclass(frozen=True)
class StoredCheckpoint:
    id: int
    size: int
    root: bytes
    note: str
    created_at: str


class Ledger:
    """An open ledger. Use `Ledger.open`; close it, or use it as a context manager."""

    def __init__(self, path: Path, connection: sqlite3.Connection, *, read_only: bool,
                 origin: str, signer: Signer | None, verifier: Verifier | None):
        self.path = path
        self.db = connection
        self.read_only = read_only
        self.origin = origin
        self.signer = signer
        self.verifier = verifier
        # One connection per Ledger, so the lock keeps two threads from interleaving transactions.
        # NOTE: reads are not locked, so a thread reading while another writes may see the
        # writer's uncommitted rows. Give each thread its own Ledger when that matters.
        self._lock = threading.RLock()

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, read_only: bool = False, *,
             key_dir: str | os.PathLike | None = None, origin: str | None = None,
             synchronous: str = "FULL") -> "Ledger":
        """Open (and, unless read_only, create) the ledger at `path`.

        read_only opens the file with SQLite's mode=ro URI, so no statement can write it;
        that mode does not need the private key. `synchronous` is FULL by default: in WAL
        mode each commit is fsynced, so a signed checkpoint never outlives the entries it
        covers after a power loss. NORMAL keeps every commit across a process crash but can
        lose the last commits on power loss.
        """
        path = Path(path).resolve()
        key_dir = Path(key_dir).resolve() if key_dir else path.parent
        if read_only:
            return cls._open_read_only(path, key_dir)
        if synchronous not in SYNCHRONOUS_MODES:
            raise LedgerError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                              f"got {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), timeout=60, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA busy_timeout=60000")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")

        # Creation runs under the write lock, so concurrent first openers create one schema,
        # one key, one origin and one key entry at index 0.
        ledger = cls(path, connection, read_only=False, origin="", signer=None, verifier=None)
        note = None
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(SCHEMA + _append_only_triggers()):
                connection.execute(statement)
            row = connection.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
            created = row is None
            signer = cls._load_or_create_key(key_dir, row[0] if row else origin, exists=not created)
            ledger.origin, ledger.signer, ledger.verifier = signer.name, signer, signer.verifier
            if created:
                connection.execute("INSERT INTO meta (key, value) VALUES ('origin', ?)", (signer.name,))
                connection.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (FORMAT_VERSION,))
                key_payload = {"action": "created", "key_id": signer.verifier.vkey(),
                               "purpose": "ledger-checkpoints"}
                ledger._insert_entry("key", "reckon", canonical_payload("key", key_payload))
                note = ledger._store_checkpoint()
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            connection.close()
            raise
        if note is not None:
            log.info("created ledger %s with origin %s", path, signer.name)
            ledger._publish_checkpoint(note)
        return ledger

    @classmethod
    def _open_read_only(cls, path: Path, key_dir: Path) -> "Ledger":
        if not path.is_file():
            raise NotFoundError(f"no ledger at {path}; the first append creates it")
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60,
                                     isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout=60000")
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        except sqlite3.DatabaseError as error:
            connection.close()
            raise LedgerError(f"{path} is not a ledger database: {error}") from None
        if row is None:
            connection.close()
            raise LedgerError(f"{path} has no origin in its meta table; it is not a ledger")
        public_path = key_dir / PUBLIC_KEY_FILE
        verifier = load_verifier(public_path) if public_path.is_file() else None
        return cls(path, connection, read_only=True, origin=row[0], signer=None, verifier=verifier)

    @staticmethod
    def _load_or_create_key(key_dir: Path, origin: str | None, *, exists: bool) -> Signer:
        key_path, public_path = key_dir / KEY_FILE, key_dir / PUBLIC_KEY_FILE
        if key_path.exists():
            signer = load_signer(key_path)
            if origin is not None and signer.name != origin:
                raise LedgerError(f"{key_path} is the key of {signer.name!r}, but this ledger's "
                                  f"origin is {origin!r}; restore the ledger's own key")
            return signer
        if exists:
            # The ledger exists but its key does not: a new key would sign a second history.
            raise LedgerError(f"the ledger key {key_path} is missing; checkpoints cannot be "
                              "signed. Restore it from backup")
        signer = Signer.generate(origin or f"reckoning.local/ledger/{uuid.uuid4().hex[:12]}")
        save_signer(signer, key_path, public_path)
        log.info("created ledger key %s (%s)", key_path, signer.verifier.key_hash.hex())
        return signer

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def checkpoint_path(self) -> Path:
        return self.path.parent / CHECKPOINT_FILE

    # -- writing -----------------------------------------------------------------------------

    def append(self, kind: str, payload: dict, operator: str | None = None, *,
               checkpoint: bool = True) -> tuple[int, bytes]:
        """Validate and append one entry; return (index, leaf hash).

        With checkpoint=True (the default) a signed checkpoint covering the new entry is
        stored in the same transaction, so each entry is signed as soon as it exists. The
        checkpoint.note file is rewritten only by `checkpoint()`, because an atomic file
        replace per append would cost more than the append itself.
        """
        return self.append_many([(kind, payload, operator)], checkpoint=checkpoint)[0]

    def append_many(self, items: Iterable[tuple[str, dict, str | None]], *,
                    checkpoint: bool = True) -> list[tuple[int, bytes]]:
        """Append several entries in one transaction (one fsync); return their (index, hash)."""
        self._require_writable()
        # Validation and canonicalization happen before taking the write lock.
        prepared = []
        for kind, payload, operator in items:
            validate_payload(kind, payload, check_values=False)
            operator = _default_operator() if operator is None else operator
            if not isinstance(operator, str) or not operator.strip():
                raise LedgerError(f"operator must be a non-empty string, got {operator!r}")
            prepared.append((kind, payload, operator,
                             canonical_payload(kind, payload)))
        results = []
        with self._write_transaction():
            for kind, payload, operator, payload_bytes in prepared:
                if kind == "cutover":
                    self._check_cutover_evals(payload)
                results.append(self._insert_entry(kind, operator, payload_bytes))
            if checkpoint:
                self._store_checkpoint()
        for (kind, _, operator, _), (index, _) in zip(prepared, results):
            log.info("ledger append index=%d kind=%s operator=%s", index, kind, operator)
        return results

    def checkpoint(self) -> str:
        """Sign and store a checkpoint of the current tree, write checkpoint.note, return the note.

        When the latest stored checkpoint already covers every entry, that note is returned.
        """
        self._require_writable()
        with self._write_transaction():
            note = self._store_checkpoint()
        self._publish_checkpoint(note)
        return note

    def _require_writable(self) -> None:
        if self.read_only:
            raise LedgerError(f"{self.path} is open read-only; open it without read_only to write")
        if self.signer is None:
            raise LedgerError("the ledger key is not loaded; checkpoints cannot be signed")

    def _write_transaction(self):
        return _ImmediateTransaction(self.db, self._lock)

    def _insert_entry(self, kind: str, operator: str, payload_bytes: bytes) -> tuple[int, bytes]:
        # The next index is read inside BEGIN IMMEDIATE, so no other writer can take it.
        index = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0]
        body = envelope_bytes(index, kind, operator, payload_bytes, utc_timestamp())
        digest = leaf_hash(body)
        self.db.execute("INSERT INTO entries (idx, body, leaf_hash) VALUES (?, ?, ?)",
                        (index, body.decode("utf-8"), digest))

        # Completing a perfect subtree adds its hash; an odd index closes one per level.
        node, level, position = digest, 0, index
        while position & 1:
            node = node_hash(self._perfect_subtree(level, position - 1), node)
            level += 1
            position >>= 1
            self.db.execute("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
                            (level, position, node))
        return index, digest

    def _check_cutover_evals(self, payload: dict) -> None:
        for position, index in enumerate(payload["evals"]):
            row = self.db.execute("SELECT CAST(body AS BLOB) FROM entries WHERE idx = ?",
                                  (index,)).fetchone()
            if row is None:
                raise LedgerError(f"cutover payload evals[{position}]: ledger entry {index} "
                                  "does not exist")
            entry = json.loads(row[0])
            if entry.get("kind") != "eval":
                raise LedgerError(f"cutover payload evals[{position}]: entry {index} is a "
                                  f"{entry.get('kind')} entry, not an eval")
            if entry["payload"].get("version") != payload["version"]:
                raise LedgerError(f"cutover payload evals[{position}]: entry {index} evaluated "
                                  f"version {entry['payload'].get('version')}, not {payload['version']}")

    def _store_checkpoint(self) -> str:
        size = self.size()
        latest = self.latest_checkpoint()
        if latest is not None and latest.size == size:
            return latest.note
        root = self.root(size)
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        self.db.execute("INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)",
                        (size, root, note, utc_timestamp()))
        return note

    def _publish_checkpoint(self, note: str) -> None:
        """Write checkpoint.note unless a concurrent writer already wrote a larger one."""
        size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
        lock_path = self.path.parent / (CHECKPOINT_FILE + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.checkpoint_path.read_text(encoding="utf-8")
                if Checkpoint.parse(current.split("\n\n")[0] + "\n").size >= size:
                    return
            except (OSError, NoteError):
                pass
            temporary = self.checkpoint_path.with_suffix(f".tmp.{os.getpid()}")
            temporary.write_text(note, encoding="utf-8")
            os.replace(temporary, self.checkpoint_path)

    # -- reading -----------------------------------------------------------------------------

    def size(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0]

    def _perfect_subtree(self, level: int, index: int) -> bytes:
        if level == 0:
            row = self.db.execute("SELECT leaf_hash FROM entries WHERE idx = ?", (index,)).fetchone()
        else:
            row = self.db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?",
                                  (level, index)).fetchone()
        if row is None:
            raise LedgerError(f"tree node (level {level}, index {index}) is missing; the ledger "
                              "is damaged. Run `reckon ledger verify`")
        return row[0]

    def root(self, size: int | None = None) -> bytes:
        """Return the RFC 6962 root over the first `size` entries (default: all)."""
        size = self.size() if size is None else size
        self._check_size(size)
        return root_from_peaks(self._perfect_subtree, size)

    def _check_size(self, size: int) -> None:
        current = self.size()
        if not 0 <= size <= current:
            raise LedgerError(f"tree size {size} is outside 0..{current}")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 6962 audit path of entry `index` in the tree of `size` entries."""
        size = self.size() if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise LedgerError(f"entry index {index} is outside a tree of {size} entries")
        return inclusion_proof(subtree_hasher(self._perfect_subtree), index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the RFC 6962 consistency proof from `old_size` to `new_size` entries."""
        new_size = self.size() if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise LedgerError(f"old size {old_size} must be between 0 and the new size {new_size}")
        return consistency_proof(subtree_hasher(self._perfect_subtree), old_size, new_size)

    def entry(self, index: int) -> Entry:
        row = self.db.execute("SELECT idx, CAST(body AS BLOB), leaf_hash FROM entries WHERE idx = ?",
                              (index,)).fetchone()
        if row is None:
            raise NotFoundError(f"ledger entry {index} does not exist (the ledger has "
                                f"{self.size()} entries)")
        return Entry.from_row(*row)

    def entries(self, version: str | None = None, kind: str | None = None,
                start: int = 0) -> Iterator[Entry]:
        """Yield entries in index order, optionally only those about `version` or of `kind`."""
        sql = "SELECT idx, CAST(body AS BLOB), leaf_hash FROM entries WHERE idx >= ?"
        params: list[Any] = [start]
        if version is not None:
            # Same expression as the entries_by_version index, so SQLite uses it.
            sql += " AND json_extract(body, '$.payload.version') = ?"
            params.append(version)
        if kind is not None:
            sql += " AND json_extract(body, '$.kind') = ?"
            params.append(kind)
        for row in self.db.execute(sql + " ORDER BY idx", params):
            yield Entry.from_row(*row)

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self.db.execute("SELECT id, size, root, note, created_at FROM checkpoints ORDER BY id")
        return [StoredCheckpoint(*row) for row in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self.db.execute("SELECT id, size, root, note, created_at FROM checkpoints "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        return StoredCheckpoint(*row) if row else None

    # -- verification ------------------------------------------------------------------------

    def verify(self, older_checkpoint: str | None = None, *, verifier: Verifier | None = None,
               deep: bool = False):
        """Recompute every hash, root and signature; see audit.verify.verify_ledger."""
        from audit.verify import verify_ledger

        return verify_ledger(self, older_checkpoint=older_checkpoint,
                             verifier=verifier or self.verifier, deep=deep)


class _ImmediateTransaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (including KeyboardInterrupt)."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.RLock):
        self.connection = connection
        self.lock = lock

    def __enter__(self):
        self.lock.acquire()
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.connection

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self.connection.execute("COMMIT")
                except BaseException:
                    self.connection.execute("ROLLBACK")
                    raise
            else:
                self.connection.execute("ROLLBACK")
        finally:
            self.lock.release()
        return False


def _split_sql(script: str) -> list[str]:
    """Split a SQL script into complete statements, keeping trigger bodies whole."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"
