"""The checker on a pack eval set: pack tools as function docs, real rule verdicts, parsed text."""

from __future__ import annotations

import json

from appliance.chat import ToolCall, assistant_message, tool_message
from appliance.evaluation.checker import CheckOptions, ModelOutput, check_case
from appliance.evaluation.evalset import freeze_evalset
from appliance.evaluation.metrics import EvalResult, summarize
from appliance.formats import parse_text_tool_calls
from appliance.packs import TraceView

QUESTION = [[{"role": "user", "content": "What is 2 + 3?"}]]
TASK = {"id": "t-1", "request": "What is 2 + 3?", "category": "sum",
        "expected": {"outcome": "answer", "sum": 5}}
CASES = [
    {"id": "sum-1", "question": QUESTION, "category": "multi_step", "rules": ["answer-from-sum"],
     "expected_calls": [{"add": {"a": [2], "b": [3]}}, {"answer": {"text": ["$any"]}}],
     "task": TASK},
    {"id": "off-1", "question": [[{"role": "user", "content": "Write me a poem."}]],
     "category": "refusal", "expected_outcome": "refuse"},
]


def write_evalset(path):
    path.write_text("".join(json.dumps(case) + "\n" for case in CASES), encoding="utf-8")
    return path


def trace_messages(calls: list[ToolCall], results: list) -> list[dict]:
    """A trace: user turn, then one assistant step per call followed by its tool result."""
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    for step, (call, result) in enumerate(zip(calls, results)):
        message = assistant_message([call], step=step)
        messages.append(message)
        messages.append(tool_message(message["tool_calls"][0]["id"], call.name, result))
    return messages


def test_pack_evalset_end_to_end(tmp_path, workspace, tiny_pack):
    evalset = freeze_evalset(write_evalset(tmp_path / "heldout.jsonl"), workspace)
    options = CheckOptions(refusal_tools=frozenset({"decline"}))
    sum_case, off_case = evalset.cases

    good_calls = [ToolCall("add", {"a": 2, "b": 3}), ToolCall("answer", {"text": "2 + 3 = 5"})]
    good_view = TraceView(TASK, trace_messages(good_calls, [{"sum": 5}, {"status": "delivered"}]))
    good = check_case(sum_case, ModelOutput(calls=good_calls), functions=tiny_pack.tools,
                      options=options, rule_verdicts=tiny_pack.verdicts(good_view),
                      prompt_tokens=400, completion_tokens=40)
    assert good.passed
    assert good.rule_verdicts["answer-from-sum"]["passed"] is True
    assert good.task_passed is True
    assert good.evalset_digest == evalset.digest

    # Right tools, but the answer states a sum that add never returned.
    bad_calls = [ToolCall("add", {"a": 2, "b": 3}), ToolCall("answer", {"text": "it is 6"})]
    bad_view = TraceView(TASK, trace_messages(bad_calls, [{"sum": 5}, {"status": "delivered"}]))
    bad = check_case(sum_case, ModelOutput(calls=bad_calls), functions=tiny_pack.tools,
                     options=options, rule_verdicts=tiny_pack.verdicts(bad_view))
    assert bad.passed
    assert bad.rule_verdicts["answer-from-sum"]["passed"] is False
    assert bad.task_passed is False

    # The specialist format's text output, parsed by the shared parser.
    parsed = parse_text_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 2.5, "b": 3}}'
                                   "</tool_call>")
    wrong_type = check_case(sum_case, parsed, functions=tiny_pack.tools, options=options)
    assert wrong_type.failure == "value_error"

    declined = check_case(off_case, [ToolCall("decline", {"reason": "out of scope"})],
                          functions=tiny_pack.tools, options=options)
    assert declined.passed
    garbled = check_case(off_case, parse_text_tool_calls("<tool_call>{not json"),
                         functions=tiny_pack.tools, options=options)
    assert garbled.passed
    assert garbled.format_error
    answered = check_case(off_case, [ToolCall("answer", {"text": "roses are red"})],
                          functions=tiny_pack.tools, options=options)
    assert answered.failure == "missed_refusal"

    summary = summarize([good, bad, declined, garbled, answered])
    assert summary["metrics"]["task_success"]["successes"] == 1
    assert summary["metrics"]["task_success"]["n"] == 2
    assert summary["rules"]["answer-from-sum"]["successes"] == 1
    assert summary["metrics"]["refusal_accuracy"]["successes"] == 2
    assert summary["metrics"]["format_error_rate"]["successes"] == 1

    result = EvalResult(evalset.digest, model={"name": "scripted"}, settings={},
                        cases=[good, declined])
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))).cases == result.cases
