"""JSONL export and import of traces in the OpenAI chat format."""

from __future__ import annotations

import io
import json

from appliance.harness import create_run, execute_run, Limits
from appliance.runtimes import Sampling
from appliance.traces_io import export_traces, import_traces
from tests.support.scripted import ScriptedRuntime, call


def _record_traces(workspace, tiny_pack, n=3):
    runtime = ScriptedRuntime([call("add", a=1, b=1), call("answer", text="2 ✓ 합계")])
    store = workspace.store()
    run = create_run(store, tiny_pack, runtime, tasks=tiny_pack.tasks(n), samples=1,
                     concurrency=1, sampling=Sampling(), limits=Limits(), prompt="full")
    execute_run(store, run, tiny_pack, runtime)
    return store, run


def test_export_lines_are_openai_chat(workspace, tiny_pack):
    store, run = _record_traces(workspace, tiny_pack)
    buffer = io.StringIO()
    assert export_traces(store, buffer, [run["id"]]) == 3
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert set(first) == {"messages", "tools", "metadata"}
    assert first["tools"][0]["type"] == "function"
    call_message = first["messages"][2]
    assert isinstance(call_message["tool_calls"][0]["function"]["arguments"], str)
    assert "합계" in lines[0]
    assert "\\u" not in lines[0]


def test_export_import_round_trip(workspace, tiny_pack):
    store, run = _record_traces(workspace, tiny_pack)
    buffer = io.StringIO()
    export_traces(store, buffer, [run["id"]])
    report = import_traces(store, buffer.getvalue().splitlines(), "round-trip")
    assert report.imported == 3
    assert report.bad_lines == []
    imported = list(store.rows("traces", "run_id = ?", [report.run_id]))
    original = list(store.rows("traces", "run_id = ?", [run["id"]]))
    assert sorted(r["task_id"] for r in imported) == sorted(r["task_id"] for r in original)
    assert {json.dumps(r["messages"]) for r in imported} == {json.dumps(r["messages"]) for r in original}
    assert all(r["source"] == "import" for r in imported)


def test_import_reports_bad_lines_keeps_good(workspace, tiny_pack):
    store, run = _record_traces(workspace, tiny_pack, n=2)
    buffer = io.StringIO()
    export_traces(store, buffer, [run["id"]])
    good = buffer.getvalue().splitlines()
    bad_call = json.loads(good[0])
    bad_call["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{not json"
    orphan = json.loads(good[0])
    orphan["messages"][3]["tool_call_id"] = "nope"
    lines = [
        good[0],
        "{truncated",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps(bad_call),
        "",
        json.dumps(orphan),
        json.dumps([1, 2]),
        good[1],
    ]
    report = import_traces(store, lines, "mixed.jsonl")
    assert report.imported == 2
    by_line = {bad["line"]: bad["error"] for bad in report.bad_lines}
    assert sorted(by_line) == [2, 3, 4, 5, 7, 8]
    assert "invalid JSON" in by_line[2]
    assert "'messages' must be a non-empty list" in by_line[3]
    assert "role 'robot'" in by_line[4]
    assert "tool_calls[0]" in by_line[5] and "not valid JSON" in by_line[5]
    assert "matches no earlier tool call" in by_line[7]
    assert "not a JSON object" in by_line[8]


def test_import_all_bad_creates_no_run(workspace):
    store = workspace.store()
    before = store.count("runs")
    report = import_traces(store, ["nope", "{}"], "bad.jsonl")
    assert report.imported == 0
    assert report.run_id is None
    assert store.count("runs") == before
