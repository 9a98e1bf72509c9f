"""The workspace's SQLite store (sqlite-utils, WAL mode).

Tables owned here: runs, traces, jobs, job_events. Other modules (curation, evaluation,
training, bundles) create their own tables through `Store.ensure_table` so that one file
holds every record the CLI and the TUI read.

JSON columns are stored as text produced by `dumps` (UTF-8, sorted keys) and decoded by
the typed accessors.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import sqlite_utils

SCHEMA_VERSION = 1


def dumps(value: Any) -> str:
    """Serialise to JSON with stable key order and literal UTF-8 (no \\u escapes)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    """Return a sortable, unique id such as run-20261204T201500-3f9a1c."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


class Store:
    """One SQLite database, safe to share between threads of one process.

    Every write goes through `transaction()`, which holds a process-wide lock, because a
    sqlite3 connection is not safe for concurrent use. Other processes (the TUI, a detached
    job) open their own Store; WAL mode lets them read while one writes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                     isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=30000")
        self.db = sqlite_utils.Database(connection)
        self._lock = threading.RLock()
        self._create_core_tables()

    def close(self) -> None:
        self.db.conn.close()

    # -- transactions ----------------------------------------------------------------------

    def transaction(self):
        return _Transaction(self)

    # -- schema ----------------------------------------------------------------------------

    def ensure_table(self, name: str, columns: dict[str, Any], *, pk: str | tuple = "id",
                     indexes: Iterable[Iterable[str]] = (), not_null: Iterable[str] = ()) -> None:
        """Create `name` if missing, add missing columns, and create the listed indexes."""
        with self._lock:
            table = self.db[name]
            if not table.exists():
                table.create(columns, pk=pk, not_null=set(not_null))
            else:
                existing = table.columns_dict
                for column, kind in columns.items():
                    if column not in existing:
                        table.add_column(column, kind)
            for index in indexes:
                table.create_index(list(index), if_not_exists=True)

    def _create_core_tables(self) -> None:
        self.ensure_table("runs", {
            "id": str, "pack_id": str, "pack_version": str, "pack_digest": str,
            "teacher": str,            # JSON: runtime kind, model path/name, weights digest
            "sampling": str,           # JSON: temperature, top_p, max_tokens, seed
            "config": str,             # JSON: tasks, samples, concurrency, limits, prompt
            "tools": str,              # JSON: OpenAI tools list given to the model
            "status": str,             # running | completed | interrupted | failed
            "created_at": float, "updated_at": float, "finished_at": float,
            "n_tasks": int, "n_samples": int, "n_traces": int, "error": str,
        }, indexes=[["status"]])
        self.ensure_table("traces", {
            "id": str, "run_id": str, "task_id": str, "sample_index": int,
            "pack_id": str, "pack_version": str, "pack_digest": str,
            "task": str,               # JSON: the task request and verifier metadata
            "messages": str,           # JSON: OpenAI chat messages incl. tool calls/results
            "tools": str,              # JSON: OpenAI tools list
            "steps": str,              # JSON: per-step tokens, latency, raw output, error
            "outcome": str,            # answer | refuse | escalate | step_limit | ...
            "errors": str,             # JSON list of {step, kind, message}
            "rule_verdicts": str,      # JSON: {rule_id: {"passed": bool|null, "reason": str}}
            "prompt_tokens": int, "completion_tokens": int, "latency_s": float,
            "review_status": str,      # null | accepted | rejected | edited
            "source": str,             # harness | import
            "created_at": float,
        }, indexes=[["run_id"], ["task_id"], ["outcome"], ["run_id", "task_id", "sample_index"]])
        self.ensure_table("jobs", {
            "id": str, "kind": str, "status": str, "params": str, "progress": str,
            "result": str, "error": str, "pid": int, "log_path": str,
            "created_at": float, "started_at": float, "updated_at": float,
            "finished_at": float,
        }, indexes=[["status"], ["kind"]])
        self.ensure_table("job_events", {
            "id": int, "job_id": str, "time": float, "kind": str, "data": str,
        }, indexes=[["job_id", "id"]])
        self.ensure_table("meta", {"key": str, "value": str}, pk="key")
        with self._lock:
            self.db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)},
                                   pk="key")

    # -- generic helpers ---------------------------------------------------------------------

    def insert(self, table: str, row: dict, *, replace: bool = False) -> None:
        with self.transaction():
            self.db[table].insert(_encode(row), replace=replace)

    def upsert(self, table: str, row: dict, *, pk: str = "id") -> None:
        with self.transaction():
            self.db[table].upsert(_encode(row), pk=pk)

    def update(self, table: str, pk_value: Any, values: dict) -> None:
        with self.transaction():
            self.db[table].update(pk_value, _encode(values))

    def get(self, table: str, pk_value: Any) -> dict | None:
        try:
            return decode_row(self.db[table].get(pk_value))
        except sqlite_utils.db.NotFoundError:
            return None

    def rows(self, table: str, where: str | None = None, params: Iterable | dict = (),
             order_by: str | None = None, limit: int | None = None) -> Iterator[dict]:
        if not self.db[table].exists():
            return iter(())
        return (decode_row(row) for row in self.db[table].rows_where(
            where, params, order_by=order_by, limit=limit))

    def count(self, table: str, where: str | None = None, params: Iterable | dict = ()) -> int:
        if not self.db[table].exists():
            return 0
        sql = f"select count(*) from [{table}]" + (f" where {where}" if where else "")
        return self.db.execute(sql, params).fetchone()[0]


class _Transaction:
    def __init__(self, store: Store):
        self.store = store
        self.depth_owner = False

    def __enter__(self):
        self.store._lock.acquire()
        connection = self.store.db.conn
        if not connection.in_transaction:
            connection.execute("BEGIN IMMEDIATE")
            self.depth_owner = True
        return self.store

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.depth_owner:
                if exc_type is None:
                    self.store.db.conn.execute("COMMIT")
                else:
                    self.store.db.conn.execute("ROLLBACK")
        finally:
            self.store._lock.release()
        return False


JSON_COLUMNS = {
    "teacher", "sampling", "config", "tools", "task", "messages", "steps", "errors",
    "rule_verdicts", "params", "progress", "result", "data", "manifest", "metrics",
    "report", "summary", "identity", "settings", "original", "edit", "counts",
}


def _encode(row: dict) -> dict:
    encoded = {}
    for key, value in row.items():
        if key in JSON_COLUMNS and value is not None and not isinstance(value, str):
            encoded[key] = dumps(value)
        else:
            encoded[key] = value
    return encoded


def decode_row(row: dict | None) -> dict | None:
    """Decode the JSON columns of a row fetched with sqlite-utils."""
    if row is None:
        return None
    decoded = dict(row)
    for key in JSON_COLUMNS.intersection(decoded):
        value = decoded[key]
        if isinstance(value, str) and value and value[0] in "[{":
            try:
                decoded[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return decoded
