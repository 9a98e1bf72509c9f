"""Export and import traces as JSONL in the OpenAI chat format with a tools field.

Each line is what TRL and most fine-tuning tools read:

    {"messages": [...], "tools": [...], "metadata": {"trace_id": ..., "task": {...}, ...}}

Import validates every line and reports bad lines by number; a bad line never aborts the
good ones. Imported traces go into a new run whose source is "import".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

from appliance.chat import ArgumentsError, ToolCall
from appliance.store import Store, new_id, now

ROLES = {"system", "user", "assistant", "tool"}


def export_traces(store: Store, out: TextIO, run_ids: Iterable[str] | None = None) -> int:
    where, params = None, []
    run_ids = list(run_ids or [])
    if run_ids:
        where = f"run_id in ({', '.join('?' for _ in run_ids)})"
        params = run_ids
    count = 0
    for row in store.rows("traces", where, params, order_by="created_at"):
        line = {"messages": row["messages"], "tools": row["tools"], "metadata": {
            "trace_id": row["id"], "run_id": row["run_id"], "task": row["task"],
            "sample_index": row["sample_index"], "outcome": row["outcome"],
            "errors": row["errors"], "rule_verdicts": row["rule_verdicts"],
            "pack_id": row["pack_id"], "pack_version": row["pack_version"],
            "pack_digest": row["pack_digest"], "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"]}}
        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


@dataclass
class ImportReport:
    run_id: str | None = None
    imported: int = 0
    bad_lines: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "imported": self.imported, "bad_lines": self.bad_lines}


def validate_line(value: object) -> str | None:
    """Return why a decoded JSONL line is not a valid trace, or None if it is."""
    if not isinstance(value, dict):
        return "line is not a JSON object"
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list"
    tools = value.get("tools", [])
    if not isinstance(tools, list):
        return "field 'tools' must be a list"
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
    call_ids = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{index}].role {role!r} is not one of {', '.join(sorted(ROLES))}"
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return f"messages[{index}].content must be a string or null"
        for call_index, call in enumerate(message.get("tool_calls") or []):
            if role != "assistant":
                return f"messages[{index}] has tool_calls but role {role!r}"
            try:
                ToolCall.from_openai(call)
            except (ArgumentsError, AttributeError) as error:
                return f"messages[{index}].tool_calls[{call_index}]: {error}"
            call_ids.add(call.get("id"))
        if role == "tool" and message.get("tool_call_id") not in call_ids:
            return f"messages[{index}].tool_call_id {message.get('tool_call_id')!r} matches no earlier tool call"
    return None


def import_traces(store: Store, lines: Iterable[str], source_name: str) -> ImportReport:
    report = ImportReport()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            report.bad_lines.append({"line": number, "error": f"invalid JSON: {error.msg} at column {error.colno}"})
            continue
        problem = validate_line(value)
        if problem:
            report.bad_lines.append({"line": number, "error": problem})
            continue
        metadata = value.get("metadata") or {}
        task = metadata.get("task") or {"id": f"import-{number}", "request": _first_user(value["messages"])}
        rows.append({
            "id": new_id("tr"), "task_id": task.get("id", f"import-{number}"),
            "sample_index": int(metadata.get("sample_index", 0)),
            "pack_id": metadata.get("pack_id"), "pack_version": metadata.get("pack_version"),
            "pack_digest": metadata.get("pack_digest"), "task": task,
            "messages": value["messages"], "tools": value.get("tools", []), "steps": [],
            "outcome": metadata.get("outcome") or "unknown", "errors": metadata.get("errors") or [],
            "rule_verdicts": metadata.get("rule_verdicts") or {},
            "prompt_tokens": metadata.get("prompt_tokens") or 0,
            "completion_tokens": metadata.get("completion_tokens") or 0, "latency_s": 0.0,
            "source": "import", "created_at": now(),
        })
    if rows:
        run_id = new_id("run")
        first = rows[0]
        with store.transaction():
            store.insert("runs", {
                "id": run_id, "pack_id": first["pack_id"], "pack_version": first["pack_version"],
                "pack_digest": first["pack_digest"], "teacher": {"kind": "import", "source": source_name},
                "status": "completed", "created_at": now(), "updated_at": now(), "finished_at": now(),
                "n_tasks": len({r["task_id"] for r in rows}), "n_samples": 1, "n_traces": len(rows),
                "config": {"source": source_name}, "sampling": {}, "tools": []})
            for row in rows:
                store.insert("traces", {**row, "run_id": run_id})
        report.run_id = run_id
        report.imported = len(rows)
    return report


def _first_user(messages: list[dict]) -> str:
    for message in messages:
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def import_file(store: Store, path: Path) -> ImportReport:
    with open(path, encoding="utf-8") as handle:
        return import_traces(store, handle, str(path))
