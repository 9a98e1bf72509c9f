"""Agent-loop mechanics with scripted model outputs, one test per failure kind."""

from __future__ import annotations

import pytest

from appliance.harness import AgentLoop, Limits, create_run, execute_run, pending_work
from appliance.runtimes import RuntimeFailure, Sampling
from tests.support.scripted import ScriptedRuntime, call

TASK = {"id": "t-0", "request": "What is 2 + 3?", "category": "sum",
        "expected": {"outcome": "answer", "sum": 5}}


def run(pack, outputs, max_steps=6, **runtime_options):
    runtime = ScriptedRuntime(outputs, **runtime_options)
    loop = AgentLoop(pack, runtime, Sampling(), Limits(max_steps=max_steps))
    try:
        return loop.run_task(TASK), runtime
    finally:
        loop.close()


def kinds(record):
    return [error["kind"] for error in record.errors]


def test_loop_good_path(tiny_pack):
    record, runtime = run(tiny_pack, [call("add", a=2, b=3), call("answer", text="It is 5.")])
    assert record.outcome == "answer"
    assert record.errors == []
    assert [m["role"] for m in record.messages] == ["system", "user", "assistant", "tool",
                                                   "assistant", "tool"]
    assert record.rule_verdicts["answer-from-sum"]["passed"] is True
    assert record.rule_verdicts["task"]["passed"] is True
    assert '{"name": "add", "result": {"sum": 5}}' in runtime.prompts[1]
    assert len(record.steps) == 2
    assert record.prompt_tokens > 0


def test_loop_unknown_tool_recovers(tiny_pack):
    record, _ = run(tiny_pack, [call("multiply", a=2, b=3), call("add", a=2, b=3),
                                call("answer", text="5")])
    assert kinds(record) == ["unknown_tool"]
    assert record.outcome == "answer"
    assert "unknown tool 'multiply'" in record.messages[3]["content"]


def test_loop_wrong_argument_type(tiny_pack):
    record, _ = run(tiny_pack, [call("add", a="two", b=3), call("answer", text="5")])
    assert kinds(record) == ["wrong_argument_type"]
    assert "a" in record.errors[0]["message"]


def test_loop_invalid_arguments(tiny_pack):
    record, _ = run(tiny_pack, [call("add", a=2), call("add", a=2, b=3, c=1),
                                call("answer", text="5")])
    assert kinds(record) == ["invalid_arguments", "invalid_arguments"]
    assert "'b' is a required property" in record.errors[0]["message"]


def test_loop_tool_error(tiny_pack):
    record, _ = run(tiny_pack, [call("broken"), call("answer", text="5")])
    assert kinds(record) == ["tool_error"]
    assert "the broken tool is broken" in record.messages[3]["content"]
    assert record.outcome == "answer"


def test_loop_tool_timeout(tiny_pack):
    record, _ = run(tiny_pack, [call("slow"), call("answer", text="5")])
    assert kinds(record) == ["timeout"]
    assert "timed out after 0.2 s" in record.errors[0]["message"]


def test_loop_step_limit(tiny_pack):
    record, _ = run(tiny_pack, [call("add", a=1, b=1)], max_steps=3)
    assert record.outcome == "step_limit"
    assert kinds(record) == ["step_limit"]
    assert len(record.steps) == 3


def test_loop_context_overflow(tiny_pack):
    record, _ = run(tiny_pack, [call("add", a=2, b=3)], overflow_at=1)
    assert record.outcome == "context_overflow"
    assert kinds(record) == ["context_overflow"]


@pytest.mark.parametrize("output, reason", [
    ("I think the answer is five.", "no tool call in output"),
    ('<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', "no string field 'name'"),
    ('<tool_call>{"name": "add", "arguments": "[1, 2]"}</tool_call>', "must be a JSON object"),
    ("", "empty output"),
])
def test_loop_unparseable_output(tiny_pack, output, reason):
    record, runtime = run(tiny_pack, [output, call("add", a=2, b=3), call("answer", text="5")])
    assert kinds(record) == ["unparseable_output"]
    assert reason in record.errors[0]["message"]
    assert record.outcome == "answer"
    assert "did not contain a valid tool call" in runtime.prompts[1]


def test_loop_runtime_failure_ends_cleanly(tiny_pack):
    record, _ = run(tiny_pack, [RuntimeFailure("server closed the connection")])
    assert record.outcome == "runtime_error"
    assert "server closed the connection" in record.errors[0]["message"]


def test_loop_token_limit(tiny_pack):
    runtime = ScriptedRuntime([call("add", a=2, b=3)])
    loop = AgentLoop(tiny_pack, runtime, Sampling(), Limits(max_steps=8, max_total_tokens=60))
    record = loop.run_task(TASK)
    assert record.outcome == "token_limit"
    assert kinds(record)[-1] == "token_limit"


def test_loop_failed_rule_recorded(tiny_pack):
    record, _ = run(tiny_pack, [call("answer", text="It is 7.")])
    assert record.rule_verdicts["answer-from-sum"]["passed"] is False
    assert "states no sum" in record.rule_verdicts["answer-from-sum"]["reason"]
    assert record.rule_verdicts["task"]["passed"] is False


def test_loop_parallel_calls_in_one_turn(tiny_pack):
    record, _ = run(tiny_pack, [call("add", a=2, b=3) + "\n" + call("add", a=1, b=1),
                                call("answer", text="5")])
    tool_messages = [m for m in record.messages if m["role"] == "tool"]
    assert len(tool_messages) == 3
    assert tool_messages[0]["tool_call_id"] != tool_messages[1]["tool_call_id"]


def _make_run(workspace, tiny_pack, runtime, n_tasks=6, samples=2, concurrency=1):
    store = workspace.store()
    tasks = tiny_pack.tasks(n_tasks)
    run_row = create_run(store, tiny_pack, runtime, tasks=tasks, samples=samples,
                         concurrency=concurrency, sampling=Sampling(), limits=Limits(),
                         prompt="full")
    return store, run_row


def test_run_records_every_trace(workspace, tiny_pack):
    runtime = ScriptedRuntime([call("add", a=1, b=1), call("answer", text="2")], concurrent=True)
    store, run_row = _make_run(workspace, tiny_pack, runtime, concurrency=3)
    finished = execute_run(store, run_row, tiny_pack, runtime)
    assert finished["status"] == "completed"
    assert finished["n_traces"] == 12
    rows = list(store.rows("traces", "run_id = ?", [run_row["id"]]))
    assert len(rows) == 12
    assert {(r["task_id"], r["sample_index"]) for r in rows} == {
        (t["id"], s) for t in run_row["config"]["tasks"] for s in range(2)}
    assert all(r["pack_digest"] == tiny_pack.digest for r in rows)
    assert all(set(r["rule_verdicts"]) == {"answer-from-sum", "task"} for r in rows)


def test_run_interrupted_then_resumed(workspace, tiny_pack):
    runtime = ScriptedRuntime([call("add", a=1, b=1), call("answer", text="2")])
    store, run_row = _make_run(workspace, tiny_pack, runtime, n_tasks=5, samples=1)

    def stop_after_two(done, total, info):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute_run(store, run_row, tiny_pack, runtime, stop_after_two)
    assert store.get("runs", run_row["id"])["status"] == "interrupted"
    assert store.count("traces", "run_id = ?", [run_row["id"]]) == 2
    assert len(pending_work(store, store.get("runs", run_row["id"]))) == 3

    finished = execute_run(store, store.get("runs", run_row["id"]), tiny_pack, runtime)
    assert finished["status"] == "completed"
    rows = list(store.rows("traces", "run_id = ?", [run_row["id"]]))
    assert len(rows) == 5
    assert len({r["task_id"] for r in rows}) == 5


def test_step_rejection_sampling_keeps_verified_actions(tiny_pack):
    task = {**TASK, "expected": {**TASK["expected"], "calls": ["add", "answer"]}}
    runtime = ScriptedRuntime([call("answer", text="9"), call("add", a=2, b=3),
                               call("answer", text="It is 7"), call("answer", text="It is 5")])
    loop = AgentLoop(tiny_pack, runtime, Sampling(), Limits(max_steps=4), step_samples=3)
    record = loop.run_task(task)
    assert record.outcome == "answer"
    assert record.errors == []
    assert record.rule_verdicts["answer-from-sum"]["passed"] is True
    assert record.steps[0]["candidates"] == 2
    assert record.steps[0]["rejections"] == ["called answer, expected add"]
    assert record.steps[1]["candidates"] == 2
    assert record.steps[1]["rejections"][0].startswith("answer-from-sum:")
    assistant_calls = [m["tool_calls"][0]["function"]["name"] for m in record.messages
                       if m["role"] == "assistant"]
    assert assistant_calls == ["add", "answer"]
    assert len(runtime.prompts) == 4


def test_step_rejection_sampling_exhausted_keeps_last(tiny_pack):
    task = {**TASK, "expected": {**TASK["expected"], "calls": ["add", "answer"]}}
    runtime = ScriptedRuntime([call("broken")])
    loop = AgentLoop(tiny_pack, runtime, Sampling(), Limits(max_steps=3), step_samples=2)
    record = loop.run_task(task)
    assert record.steps[0]["candidates"] == 2
    assert len(record.steps[0]["rejections"]) == 2
    assert kinds(record) == ["tool_error", "step_rejected"]
    assert record.outcome == "step_rejected"


def test_guided_sampling_prefixes_expected_tool(tiny_pack):
    task = {**TASK, "expected": {**TASK["expected"], "calls": ["add", "answer"]}}
    runtime = ScriptedRuntime([' {"a": 2, "b": 3}}', ' {"text": "It is 5"}}'])
    loop = AgentLoop(tiny_pack, runtime, Sampling(), Limits(max_steps=3), guide=True)
    record = loop.run_task(task)
    assert runtime.prompts[0].endswith('Model: <tool_call>{"name": "add", "arguments":')
    assert runtime.prompts[1].endswith('Model: <tool_call>{"name": "answer", "arguments":')
    assert record.outcome == "answer"
    assert record.errors == []
    assert [s["guided_tool"] for s in record.steps] == ["add", "answer"]
    assert record.steps[0]["raw_output"].startswith(' <tool_call>{"name": "add"')


def test_guided_sampling_rejects_chat_runtimes(tiny_pack, monkeypatch):
    from appliance.errors import ReckonError

    runtime = ScriptedRuntime([])
    monkeypatch.setattr(type(runtime), "supports_prefix", False)
    with pytest.raises(ReckonError, match="guided sampling needs a completion runtime"):
        AgentLoop(tiny_pack, runtime, Sampling(), guide=True)


def test_hints_reach_the_teacher_but_not_the_trace(tiny_pack):
    import dataclasses

    pack = dataclasses.replace(tiny_pack,
                               step_hint=lambda task, tool, calls_so_far: f"(note: use {tool})")
    task = {**TASK, "expected": {**TASK["expected"], "calls": ["add", "answer"]}}
    runtime = ScriptedRuntime([call("add", a=2, b=3), call("answer", text="It is 5.")])
    loop = AgentLoop(pack, runtime, Sampling(), Limits(max_steps=3), hints=True)
    record = loop.run_task(task)
    assert record.outcome == "answer"
    assert "\n(note: use add)\nModel:" in runtime.prompts[0]
    assert "(note: use answer)" in runtime.prompts[1]
    assert "(note: use add)" not in runtime.prompts[1]
    assert all("(note:" not in str(message.get("content")) for message in record.messages)
    assert [step["hint"] for step in record.steps] == ["(note: use add)", "(note: use answer)"]


def test_hints_need_a_pack_with_step_hint(tiny_pack):
    from appliance.errors import ReckonError

    with pytest.raises(ReckonError, match="has no step_hint"):
        AgentLoop(tiny_pack, ScriptedRuntime([]), Sampling(), hints=True)


def test_failing_step_hint_keeps_run(tiny_pack):
    import dataclasses

    def broken(task, tool, calls_so_far):
        raise KeyError("rate")

    pack = dataclasses.replace(tiny_pack, step_hint=broken)
    task = {**TASK, "expected": {**TASK["expected"], "calls": ["add", "answer"]}}
    runtime = ScriptedRuntime([call("add", a=2, b=3), call("answer", text="It is 5.")])
    record = AgentLoop(pack, runtime, Sampling(), Limits(max_steps=3), hints=True).run_task(task)
    assert record.outcome == "answer"
    assert "hint" not in record.steps[0]


def test_unknown_prompt_name_is_reported(tiny_pack):
    from appliance.errors import ReckonError

    with pytest.raises(ReckonError, match="has no prompt 'teacher'; it has compact, full"):
        AgentLoop(tiny_pack, ScriptedRuntime([]), Sampling(), prompt="teacher")
