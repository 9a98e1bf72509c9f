"""Wilson intervals, metric aggregation over checked cases, and the result schema."""

from __future__ import annotations

import math

import pytest

from appliance.chat import ToolCall
from appliance.evaluation.checker import CheckOptions, ModelOutput, check_case
from appliance.evaluation.evalset import EvalCase
from appliance.evaluation.metrics import (EvalResult, ResultError, metric_keys, metric_lookup,
                                          summarize, wilson_interval)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics
# in Medicine 17:857-872, method 3 (score interval without continuity correction).
NEWCOMBE = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718)]


@pytest.mark.parametrize("successes, n, low, high", NEWCOMBE)
def test_wilson_published_values(successes, n, low, high):
    interval = wilson_interval(successes, n)
    assert interval[0] == pytest.approx(low, abs=5e-5)
    assert interval[1] == pytest.approx(high, abs=5e-5)


def test_wilson_closed_forms():
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    low, high = wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0)


def test_wilson_edges():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)
    # At p = 0.5 the interval is centred on 0.5 with half-width
    # z * sqrt(1/(4n) + z^2/(4n^2)) / (1 + z^2/n).
    z = 2.5758293035489
    low, high = wilson_interval(500, 1000, z=z)
    half = z * math.sqrt(0.25 / 1000 + z * z / (4 * 1000 ** 2)) / (1 + z * z / 1000)
    assert low == pytest.approx(0.5 - half)
    assert high == pytest.approx(0.5 + half)


# -- aggregation over real checker results -------------------------------------------------

QUESTION = [[{"role": "user", "content": "q"}]]
TOOLS = [{"name": "lookup_rate", "parameters": {"type": "object", "properties": {
             "award": {"type": "string"}}, "required": ["award"]}},
         {"name": "final_answer", "parameters": {"type": "object", "properties": {
             "answer": {"type": "string"}}, "required": ["answer"]}},
         {"name": "refuse", "parameters": {"type": "object", "properties": {
             "reason": {"type": "string"}}, "required": ["reason"]}}]
OPTIONS = CheckOptions(refusal_tools=frozenset({"refuse"}))
LOOKUP = ToolCall("lookup_rate", {"award": "Clerk L2"})
ANSWER = ToolCall("final_answer", {"answer": "42"})


def case(case_id, **fields) -> EvalCase:
    return EvalCase.from_dict({"id": case_id, "question": QUESTION, **fields})


LOOKUP_CASE = dict(ground_truth=[{"lookup_rate": {"award": ["Clerk L2"]}}], category="rate_lookup",
                   rules=["lookup-before-stating"])
MULTI_CASE = dict(expected_calls=[{"lookup_rate": {"award": ["Clerk L2"]}},
                                  {"final_answer": {"answer": ["$any"]}}], category="multi_step")
REFUSE_CASE = dict(expected_outcome="refuse", category="refusal")


def results():
    """Eight checked cases with known outcomes."""
    def run(c, output, **extra):
        return check_case(c, output, functions=TOOLS, options=OPTIONS, **extra)

    return [
        run(case("l1", **LOOKUP_CASE), [LOOKUP], prompt_tokens=100, completion_tokens=10,
            rule_verdicts={"lookup-before-stating": {"passed": True, "reason": ""}}),
        run(case("l2", **LOOKUP_CASE), [ToolCall("lookup_rate", {"award": "Clerk L9"})],
            prompt_tokens=100, completion_tokens=20,
            rule_verdicts={"lookup-before-stating": {"passed": False, "reason": "no"}}),
        run(case("l3", **LOOKUP_CASE), [ANSWER], prompt_tokens=90, completion_tokens=10,
            rule_verdicts={"lookup-before-stating": {"passed": None, "reason": "n/a"}}),
        run(case("l4", **LOOKUP_CASE), "not JSON", prompt_tokens=80, completion_tokens=40),
        run(case("m1", **MULTI_CASE), [LOOKUP, ANSWER], prompt_tokens=300, completion_tokens=30,
            rule_verdicts={"task": {"passed": True, "reason": ""}}),
        run(case("m2", **MULTI_CASE), [LOOKUP, ANSWER], prompt_tokens=300, completion_tokens=30,
            rule_verdicts={"task": {"passed": False, "reason": "wrong number"}}),
        run(case("r1", **REFUSE_CASE), [ToolCall("refuse", {"reason": "scope"})]),
        run(case("r2", **REFUSE_CASE), [LOOKUP]),
    ]


def test_summary_metrics():
    summary = summarize(results())
    metrics = summary["metrics"]
    assert summary["n_cases"] == 8

    def pair(name):
        return metrics[name]["successes"], metrics[name]["n"]

    # passed: l1, m1, m2 (calls match; the task verdict is separate), r1.
    assert pair("accuracy") == (4, 8)
    # Cases expecting calls: l1-l4, m1, m2. Names right: l1, l2, m1, m2.
    assert pair("tool_name_accuracy") == (4, 6)
    assert pair("exact_call_accuracy") == (3, 6)
    assert pair("argument_accuracy") == (3, 4)
    assert pair("refusal_accuracy") == (1, 2)
    assert pair("task_success") == (1, 2)
    assert pair("format_error_rate") == (1, 8)
    assert metrics["format_error_rate"]["higher_is_better"] is False
    low, high = wilson_interval(4, 8)
    assert metrics["accuracy"]["low"] == pytest.approx(low)
    assert metrics["accuracy"]["high"] == pytest.approx(high)


def test_summary_rules_categories_failures_tokens():
    summary = summarize(results())
    rule = summary["rules"]["lookup-before-stating"]
    assert (rule["successes"], rule["n"]) == (1, 2)
    assert "task" not in summary["rules"]
    categories = summary["categories"]
    assert (categories["rate_lookup"]["successes"], categories["rate_lookup"]["n"]) == (1, 4)
    assert (categories["refusal"]["successes"], categories["refusal"]["n"]) == (1, 2)
    failures = summary["failures"]
    assert failures["value_error"] == 1
    assert failures["wrong_refusal"] == 0
    assert failures["missed_refusal"] == 1
    assert failures["unparseable_output"] == 1
    assert failures["wrong_tool"] == 1
    tokens = summary["tokens"]
    assert tokens["n"] == 6
    assert tokens["total"] == 110 + 120 + 100 + 120 + 330 + 330
    assert tokens["mean"] == pytest.approx(1110 / 6)
    assert tokens["prompt_total"] == 970


def test_summary_empty():
    summary = summarize([])
    assert summary["metrics"]["accuracy"]["n"] == 0
    assert summary["metrics"]["accuracy"]["value"] is None
    assert summary["metrics"]["accuracy"]["low"] is None
    assert summary["tokens"]["mean"] is None


def test_summary_accepts_dicts():
    records = [result.to_dict() for result in results()]
    assert summarize(records) == summarize(results())


def test_metric_lookup_and_keys():
    summary = summarize(results())
    assert metric_lookup(summary, "accuracy")["n"] == 8
    assert metric_lookup(summary, "rule:lookup-before-stating")["n"] == 2
    assert metric_lookup(summary, "category:refusal")["n"] == 2
    assert metric_lookup(summary, "rule:absent") is None
    keys = metric_keys([summary])
    assert keys[0] == "accuracy"
    assert "category:multi_step" in keys
    assert keys[-1] == "rule:lookup-before-stating"


def test_result_round_trip():
    result = EvalResult(evalset_digest="sha256:" + "a" * 64, model={"name": "gemma"},
                        settings={"temperature": 0}, cases=results(), id="eval-1",
                        evalset_name="heldout", created_at=1.0)
    data = result.to_dict()
    assert data["schema"] == "reckon-eval-result/1"
    copy = EvalResult.from_dict(data)
    assert copy.cases == result.cases
    assert copy.summary() == result.summary()


@pytest.mark.parametrize("data, message", [
    ([], "must be an object"),
    ({"cases": []}, "evalset.digest is missing"),
    ({"evalset": {"digest": "sha256:x"}}, "cases is missing"),
    ({"evalset": {"digest": "sha256:x"}, "cases": [{"passed": True}]}, "cases\\[0\\] needs case_id"),
    ({"evalset": {"digest": "sha256:x"},
      "cases": [{"case_id": "a", "passed": True, "evalset_digest": "sha256:y"}]},
     "ran on eval set sha256:y"),
])
def test_result_schema_errors(data, message):
    with pytest.raises(ResultError, match=message):
        EvalResult.from_dict(data)


def test_step_limit_counted():
    c = case("s", **MULTI_CASE)
    result = check_case(c, ModelOutput(calls=[LOOKUP, LOOKUP], outcome="step_limit"),
                        functions=TOOLS, options=OPTIONS)
    summary = summarize([result])
    assert summary["failures"]["step_limit"] == 1
    assert summary["metrics"]["task_success"]["successes"] == 0


def test_task_only_multi_step_case():
    task = {"id": "t1", "request": "What is the rate?", "expected": {"rate": 42.1}}
    c = case("t", category="multi_step", task=task)
    assert c.multi_step
    passed = check_case(c, [LOOKUP, ANSWER], functions=TOOLS, options=OPTIONS,
                        rule_verdicts={"task": {"passed": True, "reason": ""}})
    failed = check_case(c, [LOOKUP, ANSWER], functions=TOOLS, options=OPTIONS,
                        rule_verdicts={"task": {"passed": False, "reason": "wrong rate"}})
    refused = check_case(c, [ToolCall("refuse", {"reason": "no"})], functions=TOOLS,
                         options=OPTIONS)
    assert refused.failure == "wrong_refusal"
    summary = summarize([passed, failed, refused])
    assert summary["metrics"]["task_success"]["successes"] == 1
    assert summary["metrics"]["task_success"]["n"] == 3
    assert summary["metrics"]["tool_name_accuracy"]["n"] == 0
