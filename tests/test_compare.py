"""Comparison of eval results, the cut-over gate, and the terminal/JSON/Markdown/HTML reports."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from appliance.chat import ToolCall
from appliance.evaluation.checker import check_case
from appliance.evaluation.compare import (ComparisonError, compare, escape_markdown, format_metric,
                                          render, render_html, render_json, render_markdown,
                                          render_terminal)
from appliance.evaluation.evalset import parse_evalset
from appliance.evaluation.metrics import EvalResult

FUNCTION = [{"name": "add", "parameters": {"type": "dict", "properties": {
    "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}]
QUESTION = [[{"role": "user", "content": "q"}]]


def evalset_text(n_answer: int = 10, n_refuse: int = 4) -> str:
    lines = []
    for index in range(n_answer):
        lines.append({"id": f"add-{index}", "question": QUESTION, "function": FUNCTION,
                      "ground_truth": [{"add": {"a": [index], "b": [1]}}], "category": "math",
                      "rules": ["r-precise"]})
    for index in range(n_refuse):
        lines.append({"id": f"off-{index}", "question": QUESTION, "function": FUNCTION,
                      "category": "irrelevance"})
    return "".join(json.dumps(line) + "\n" for line in lines)


EVALSET = parse_evalset(evalset_text())


def run(correct_answers: set[int], refusals: set[int], model: str, tokens: int = 100,
        evalset=EVALSET, rule_ok: bool = True) -> EvalResult:
    """Check a fake configuration: which add-cases it gets right and which off-cases it refuses."""
    cases = []
    for case in evalset.cases:
        index = int(case.id.split("-")[1])
        if case.id.startswith("add"):
            b = 1 if index in correct_answers else 2
            output = [ToolCall("add", {"a": index, "b": b})]
            verdicts = {"r-precise": {"passed": rule_ok and index in correct_answers, "reason": ""}}
        else:
            output = [] if index in refusals else [ToolCall("add", {"a": 1, "b": 1})]
            verdicts = {}
        cases.append(check_case(case, output, rule_verdicts=verdicts, prompt_tokens=tokens,
                                completion_tokens=10))
    return EvalResult(evalset_digest=evalset.digest, model={"name": model},
                      settings={"temperature": 0}, cases=cases, id=f"eval-{model}")


TEACHER = run(set(range(10)), {0, 1, 2, 3}, "teacher", tokens=1000)
GOOD = run(set(range(10)), {0, 1, 2}, "good", tokens=200)
BAD = run(set(range(7)), {0, 1, 2, 3}, "bad", tokens=150)


def row(comparison, key):
    section = ("rules" if key.startswith("rule:") else
               "categories" if key.startswith("category:") else "metrics")
    return next(item for item in comparison[section] if item["key"] == key)


def test_compare_table_values():
    comparison = compare(TEACHER, BAD)
    accuracy = row(comparison, "accuracy")
    assert [value["successes"] for value in accuracy["values"]] == [14, 11]
    assert accuracy["changes"][0] is None
    assert accuracy["changes"][1] == pytest.approx((11 / 14 - 1) * 100)
    assert [config["label"] for config in comparison["configs"]] == ["A", "B"]
    assert row(comparison, "category:math")["values"][1]["successes"] == 7
    assert row(comparison, "rule:r-precise")["values"][1]["successes"] == 7
    assert comparison["evalset_digest"] == EVALSET.digest


def test_compare_changed_cases():
    comparison = compare(TEACHER, BAD, GOOD)
    bad, good = comparison["changed_cases"]
    assert bad["label"] == "B"
    assert bad["pass_to_fail"] == ["add-7", "add-8", "add-9"]
    assert bad["fail_to_pass"] == []
    assert good["pass_to_fail"] == ["off-3"]
    reverse = compare(BAD, TEACHER)["changed_cases"][0]
    assert reverse["fail_to_pass"] == ["add-7", "add-8", "add-9"]


def test_compare_tokens():
    comparison = compare(TEACHER, GOOD, BAD)
    tokens = {item["label"]: item for item in comparison["tokens"]}
    assert tokens["A"]["mean"] == 1010
    assert tokens["B"]["mean"] == 210
    assert tokens["C"]["total"] == 160 * 14


def test_gate_within_tolerance():
    # GOOD is 1 case of 14 (7.1 points) worse overall and 25 points worse on refusals.
    comparison = compare(TEACHER, GOOD, critical={"accuracy": 8.0, "exact_call_accuracy": 0.0})
    candidate = comparison["gate"]["candidates"][0]
    assert candidate["passed"], candidate
    strict = compare(TEACHER, GOOD, critical=["accuracy", "refusal_accuracy"], tolerance=5.0)
    checks = {check["metric"]: check for check in strict["gate"]["candidates"][0]["checks"]}
    assert not checks["accuracy"]["passed"]
    assert not checks["refusal_accuracy"]["passed"]
    assert checks["refusal_accuracy"]["change_points"] == pytest.approx(-25.0)
    assert not strict["gate"]["candidates"][0]["passed"]


def test_gate_default_is_accuracy():
    comparison = compare(TEACHER, TEACHER)
    gate = comparison["gate"]
    assert gate["critical"] == {"accuracy": 2.0}
    assert gate["candidates"][0]["passed"]


def test_gate_exact_tolerance_boundary():
    # 3 of 10 on the math category is exactly 30 points worse.
    at_limit = compare(TEACHER, BAD, critical={"category:math": 30.0})
    assert at_limit["gate"]["candidates"][0]["passed"]
    below = compare(TEACHER, BAD, critical={"category:math": 29.9})
    assert not below["gate"]["candidates"][0]["passed"]


def test_gate_lower_is_better_metric():
    comparison = compare(TEACHER, GOOD, critical={"format_error_rate": 0.0})
    assert comparison["gate"]["candidates"][0]["passed"]


def test_gate_better_candidate_passes():
    comparison = compare(BAD, TEACHER, critical=["accuracy", "rule:r-precise"], tolerance=0)
    assert comparison["gate"]["candidates"][0]["passed"]


def test_gate_unknown_metric_fails():
    comparison = compare(TEACHER, GOOD, critical=["rule:no-such-rule"])
    check = comparison["gate"]["candidates"][0]["checks"][0]
    assert not check["passed"]
    assert "no such metric" in check["reason"]


def test_gate_per_candidate():
    comparison = compare(TEACHER, GOOD, BAD, critical={"category:math": 5.0})
    verdicts = {item["label"]: item["passed"] for item in comparison["gate"]["candidates"]}
    assert verdicts == {"B": True, "C": False}


def test_gate_negative_tolerance_rejected():
    with pytest.raises(ComparisonError, match=">= 0"):
        compare(TEACHER, GOOD, tolerance=-1)


def test_compare_refuses_different_evalsets():
    other = parse_evalset(evalset_text(n_answer=9))
    with pytest.raises(ComparisonError, match="different eval sets"):
        compare(TEACHER, run(set(range(9)), set(), "x", evalset=other))


def test_compare_accepts_dicts():
    from_dicts = compare(TEACHER.to_dict(), json.loads(json.dumps(BAD.to_dict())))
    assert from_dicts == compare(TEACHER, BAD)


def test_format_metric():
    assert format_metric(None) == "-"
    assert format_metric({"n": 0}) == "-"
    text = format_metric({"n": 10, "value": 0.5, "low": 0.2366, "high": 0.7634})
    assert text == "50.0% [23.7-76.3] n=10"


# -- renderers -----------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script> | *bold* [x](y)"


def hostile_comparison():
    teacher = run(set(range(10)), {0, 1, 2, 3}, HOSTILE)
    teacher.cases[0].case_id = HOSTILE
    candidate = run(set(range(9)), {0, 1, 2, 3}, "cand")
    candidate.cases[0].case_id = HOSTILE
    candidate.cases[0].passed = False
    return compare(teacher, candidate, critical=["accuracy", f"rule:{HOSTILE}"])


def test_render_json_round_trips():
    comparison = compare(TEACHER, BAD)
    assert json.loads(render_json(comparison)) == json.loads(json.dumps(comparison))


def test_render_markdown():
    text = render_markdown(compare(TEACHER, BAD, critical=["accuracy"]))
    assert "## Metrics" in text
    assert "| accuracy |" in text
    assert "100.0% \\[" in text
    assert "Cut-over gate: B FAILS against A." in text
    assert "add-7, add-8, add-9" in text


def test_render_markdown_escapes():
    text = render_markdown(hostile_comparison())
    assert "<script>" not in text
    assert "\\<script\\>" in text
    assert "\\| \\*bold\\* \\[x\\]\\(y\\)" in text
    for line in text.splitlines():
        if line.startswith("| "):
            # Every pipe inside a cell is escaped, so each row has the header's column count.
            unescaped = line.replace("\\|", "")
            assert unescaped.count("|") >= 3


def test_escape_markdown_newlines():
    assert escape_markdown("a\nb|c") == "a b\\|c"


def test_render_html_escapes():
    text = render_html(hostile_comparison())
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.startswith("<!DOCTYPE html>")
    assert "<h2>Cut-over gate</h2>" in text


def test_render_by_format():
    comparison = compare(TEACHER, BAD)
    assert render(comparison, "md") == render_markdown(comparison)
    assert render(comparison, "html") == render_html(comparison)
    assert render(comparison, "json") == render_json(comparison)
    with pytest.raises(ComparisonError, match="unknown report format 'pdf'"):
        render(comparison, "pdf")


def test_render_terminal():
    buffer = io.StringIO()
    render_terminal(hostile_comparison(), console=Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "Metrics" in text
    assert "exact_call_accuracy" in text
    assert "format_error_rate (lower is better)" in text
    assert "[x](y)" in text
    assert "Cut-over gate: B FAILS against A." in text
