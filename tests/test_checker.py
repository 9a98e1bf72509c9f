"""The BFCL-style checker on hand-made outputs: one test group per rule."""

from __future__ import annotations

import pytest

from appliance.chat import ToolCall
from appliance.evaluation.checker import (CaseResult, CheckerError, CheckOptions, ModelOutput,
                                          check_argument, check_call, check_case,
                                          standardize_string)
from appliance.evaluation.evalset import EvalCase
from appliance.formats import ParsedOutput

QUESTION = [[{"role": "user", "content": "q"}]]

AREA = {
    "name": "triangle.area",
    "description": "Area of a triangle.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "dict", "properties": {"precise": {"type": "boolean"}}},
            "points": {"type": "array", "items": {"type": "dict"}},
            "exact": {"type": "boolean"},
        },
        "required": ["base", "height"],
    },
}
AREA_ANSWER = {"triangle.area": {
    "base": [10], "height": [5.0], "unit": ["cm", "centimetres", ""],
    "tags": [["Right Angle", "small"], ""], "options": [{"precise": [True]}, ""],
    "points": [[{"x": [1], "y": [2, ""]}], ""], "exact": [False, ""],
}}


def area_case(**extra) -> EvalCase:
    data = {"id": "area", "question": QUESTION, "function": [AREA], "ground_truth": [AREA_ANSWER]}
    data.update(extra)
    return EvalCase.from_dict(data)


def call(**arguments) -> ToolCall:
    return ToolCall("triangle.area", arguments)


def check(arguments: dict, name: str = "triangle.area", **options) -> CaseResult:
    return check_case(area_case(), [ToolCall(name, arguments)], options=CheckOptions(**options))


# -- names ---------------------------------------------------------------------------------


def test_name_exact_passes():
    result = check({"base": 10, "height": 5.0})
    assert result.passed
    assert result.failure is None
    assert result.tool_names_correct is True
    assert result.calls_correct is True


def test_name_wrong_is_wrong_tool():
    result = check({"base": 10, "height": 5.0}, name="triangle.perimeter")
    assert not result.passed
    assert result.failure == "wrong_tool"
    assert result.tool_names_correct is False
    assert result.calls_correct is False


def test_name_dots_need_underscore_option():
    underscored = check({"base": 10, "height": 5.0}, name="triangle_area")
    assert underscored.failure == "wrong_tool"
    converted = check({"base": 10, "height": 5.0}, name="triangle_area", underscore_names=True)
    assert converted.passed
    dotted = check({"base": 10, "height": 5.0}, underscore_names=True)
    assert dotted.failure == "wrong_tool"


# -- required and unexpected arguments -----------------------------------------------------


def test_required_missing():
    result = check({"base": 10})
    assert result.failure == "missing_required"
    assert "height" in result.message


def test_optional_omitted_passes():
    assert check({"base": 10, "height": 5.0}).passed


def test_unmarked_answer_argument_missing():
    case = EvalCase.from_dict({"id": "c", "question": QUESTION, "function": [AREA],
                               "ground_truth": [{"triangle.area": {"base": [10], "height": [5.0],
                                                                  "unit": ["cm"]}}]})
    result = check_case(case, [call(base=10, height=5.0)])
    assert result.failure == "missing_required"
    assert "unit" in result.message


def test_unknown_argument_is_unexpected():
    result = check({"base": 10, "height": 5.0, "colour": "red"})
    assert result.failure == "unexpected_argument"
    assert "colour" in result.message


def test_argument_outside_answer_is_unexpected():
    case = EvalCase.from_dict({"id": "c", "question": QUESTION, "function": [AREA],
                               "ground_truth": [{"triangle.area": {"base": [10], "height": [5.0]}}]})
    result = check_case(case, [call(base=10, height=5.0, unit="cm")])
    assert result.failure == "unexpected_argument"


def test_failure_order_follows_bfcl():
    # A missing required argument is reported before an unexpected one.
    result = check({"height": 5.0, "colour": "red"})
    assert result.failure == "missing_required"
    categories = {item.name: item.failure for item in result.calls[0].arguments}
    assert categories == {"base": "missing_required", "height": None,
                          "colour": "unexpected_argument"}


# -- types ---------------------------------------------------------------------------------


def test_int_accepted_for_float():
    assert check({"base": 10, "height": 5}).passed


def test_float_rejected_for_int():
    result = check({"base": 10.0, "height": 5.0})
    assert result.failure == "type_error"


def test_bool_rejected_for_int():
    assert check({"base": True, "height": 5.0}).failure == "type_error"


def test_string_rejected_for_int():
    assert check({"base": "10", "height": 5.0}).failure == "type_error"


def test_string_rejected_for_boolean():
    assert check({"base": 10, "height": 5.0, "exact": "false"}).failure == "type_error"


def test_array_item_type_checked():
    case = EvalCase.from_dict({"id": "t", "question": QUESTION, "function": [AREA],
                               "ground_truth": [{"triangle.area": {
                                   "base": [10], "height": [5.0], "tags": [["a", "b"]]}}]})
    result = check_case(case, [call(base=10, height=5.0, tags=["a", 3])])
    assert result.failure == "type_error"


def test_array_item_type_skipped_for_optional():
    # BFCL skips the item type check when "" (optional) is among the possible values, so
    # the wrong item type surfaces as a value error.
    result = check({"base": 10, "height": 5.0, "tags": ["right angle", 3]})
    assert result.failure == "value_error"


def test_variable_type_compared_raw():
    # The answer's type (str) differs from the doc's (integer): BFCL reads it as a variable.
    case = EvalCase.from_dict({"id": "v", "question": QUESTION, "function": [AREA],
                               "ground_truth": [{"triangle.area": {"base": ["n"], "height": [5.0]}}]})
    assert check_case(case, [call(base="n", height=5.0)]).passed
    # Variables are compared without string normalisation.
    assert check_case(case, [call(base="N", height=5.0)]).failure == "value_error"
    assert check_case(case, [call(base=3, height=5.0)]).failure == "value_error"


def test_json_schema_types():
    schema_doc = {"name": "rate", "parameters": {"type": "object", "properties": {
        "amount": {"type": "number"}, "code": {"type": ["string", "null"]},
        "free": {}}, "required": ["amount"]}}
    answer = {"rate": {"amount": [2.5, 3], "code": ["EUR", None, ""], "free": ["$any", ""]}}
    case = EvalCase.from_dict({"id": "j", "question": QUESTION, "function": [schema_doc],
                               "ground_truth": [answer]})
    assert check_case(case, [ToolCall("rate", {"amount": 3})]).passed
    assert check_case(case, [ToolCall("rate", {"amount": 3, "code": None})]).passed
    assert check_case(case, [ToolCall("rate", {"amount": 2.5, "code": "eur"})]).passed
    assert check_case(case, [ToolCall("rate", {"amount": "3"})]).failure == "type_error"
    assert check_case(case, [ToolCall("rate", {"amount": 3, "code": 7})]).failure == "type_error"
    assert check_case(case, [ToolCall("rate", {"amount": 3, "free": [1, {"a": 2}]})]).passed


# -- values --------------------------------------------------------------------------------


def test_standardize_string_rules():
    assert standardize_string("New York, N.Y.") == "newyorkny"
    assert standardize_string("a-b_c*d^e/f") == "abcdef"
    assert standardize_string("It's") == 'it"s'
    assert standardize_string("Tab\there") == "tab\there"


@pytest.mark.parametrize("unit", ["cm", "CM", " c m ", "c.m", "c-m", "c_m", "c*m", "c^m", "c/m",
                                  "Centi-Metres"])
def test_string_normalised_match(unit):
    assert check({"base": 10, "height": 5.0, "unit": unit}).passed


@pytest.mark.parametrize("unit", ["mm", "c:m", "c\tm", "cms"])
def test_string_value_mismatch(unit):
    assert check({"base": 10, "height": 5.0, "unit": unit}).failure == "value_error"


def test_number_value_mismatch():
    assert check({"base": 11, "height": 5.0}).failure == "value_error"
    assert check({"base": 10, "height": 5.5}).failure == "value_error"


def test_list_in_order_with_normalised_items():
    assert check({"base": 10, "height": 5.0, "tags": ["right angle", "SMALL"]}).passed
    assert check({"base": 10, "height": 5.0, "tags": ["small", "right angle"]}).failure == "value_error"
    assert check({"base": 10, "height": 5.0, "tags": ["right angle"]}).failure == "value_error"


def test_empty_list_matches_optional_marker():
    # BFCL compares [] against the optional marker "" as an empty list and accepts it.
    assert check({"base": 10, "height": 5.0, "tags": []}).passed


def test_dict_values_per_key():
    assert check({"base": 10, "height": 5.0, "options": {"precise": True}}).passed
    assert check({"base": 10, "height": 5.0, "options": {"precise": False}}).failure == "value_error"
    assert check({"base": 10, "height": 5.0, "options": {"fast": True}}).failure == "value_error"
    assert check({"base": 10, "height": 5.0, "options": {}}).failure == "value_error"


def test_list_of_dicts():
    assert check({"base": 10, "height": 5.0, "points": [{"x": 1}]}).passed
    assert check({"base": 10, "height": 5.0, "points": [{"x": 1, "y": 2}]}).passed
    assert check({"base": 10, "height": 5.0, "points": [{"x": 2}]}).failure == "value_error"
    assert check({"base": 10, "height": 5.0,
                  "points": [{"x": 1}, {"x": 1}]}).failure == "value_error"


def test_boolean_value():
    assert check({"base": 10, "height": 5.0, "exact": False}).passed
    assert check({"base": 10, "height": 5.0, "exact": True}).failure == "value_error"


def test_any_marker_accepts_value_of_right_type():
    doc = {"name": "final_answer", "parameters": {"type": "object", "properties": {
        "text": {"type": "string"}, "count": {"type": "integer"}}, "required": ["text"]}}
    case = EvalCase.from_dict({"id": "a", "question": QUESTION, "function": [doc],
                               "ground_truth": [{"final_answer": {"text": ["$any"],
                                                                  "count": ["$any", ""]}}]})
    assert check_case(case, [ToolCall("final_answer", {"text": "anything at all"})]).passed
    assert check_case(case, [ToolCall("final_answer", {"text": "x", "count": 4})]).passed
    assert check_case(case, [ToolCall("final_answer", {"text": 4})]).failure == "type_error"
    assert check_case(case, [ToolCall("final_answer", {"text": "x", "count": "4"})]).failure == "type_error"


def test_argument_details_complete():
    result = check({"base": 11, "height": "5", "unit": "cm"})
    details = {item.name: (item.passed, item.failure) for item in result.calls[0].arguments}
    assert details == {"base": (False, "value_error"), "height": (False, "type_error"),
                       "unit": (True, None)}
    assert result.failure == "value_error"


def test_check_argument_directly():
    verdict = check_argument("x", 3, {"type": "float"}, [3.0])
    assert verdict.passed
    verdict = check_argument("x", 3.5, {"type": "integer"}, [3])
    assert verdict.failure == "type_error"


# -- parallel calls and counts -------------------------------------------------------------

SUM = {"name": "add", "parameters": {"type": "dict", "properties": {
    "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}


def parallel_case() -> EvalCase:
    return EvalCase.from_dict({"id": "p", "question": QUESTION, "function": [SUM, AREA],
                               "ground_truth": [{"add": {"a": [1], "b": [2]}},
                                                {"add": {"a": [3], "b": [4]}},
                                                {"triangle.area": {"base": [10], "height": [5.0]}}]})


def test_parallel_order_free():
    calls = [call(base=10, height=5.0), ToolCall("add", {"a": 3, "b": 4}),
             ToolCall("add", {"a": 1, "b": 2})]
    result = check_case(parallel_case(), calls)
    assert result.passed
    assert sorted(item.index for item in result.calls) == [0, 1, 2]


def test_parallel_missing_call():
    calls = [ToolCall("add", {"a": 3, "b": 4}), ToolCall("add", {"a": 1, "b": 2})]
    result = check_case(parallel_case(), calls)
    assert not result.passed
    assert result.failure == "wrong_tool"
    assert result.tool_names_correct is False


def test_parallel_extra_call():
    calls = [call(base=10, height=5.0), ToolCall("add", {"a": 3, "b": 4}),
             ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 1, "b": 2})]
    result = check_case(parallel_case(), calls)
    assert result.failure == "wrong_tool"


def test_parallel_wrong_argument_reports_value_error():
    calls = [call(base=10, height=5.0), ToolCall("add", {"a": 3, "b": 4}),
             ToolCall("add", {"a": 1, "b": 9})]
    result = check_case(parallel_case(), calls)
    assert result.failure == "value_error"
    assert result.tool_names_correct is True
    assert result.calls_correct is False


def test_parallel_greedy_like_bfcl():
    # Expected 0 accepts model call 0 or 1; expected 1 accepts only model call 0. Greedy
    # matching gives call 0 to expected 0 and then fails, as BFCL does.
    case = EvalCase.from_dict({"id": "g", "question": QUESTION, "function": [SUM],
                               "ground_truth": [{"add": {"a": [1, 2], "b": [2]}},
                                                {"add": {"a": [1], "b": [2]}}]})
    result = check_case(case, [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 2, "b": 2})])
    assert not result.passed
    swapped = check_case(case, [ToolCall("add", {"a": 2, "b": 2}), ToolCall("add", {"a": 1, "b": 2})])
    assert swapped.passed


def test_multiple_picks_described_function():
    case = EvalCase.from_dict({"id": "m", "question": QUESTION, "function": [SUM, AREA],
                               "ground_truth": [{"add": {"a": [1], "b": [2]}}]})
    assert check_case(case, [ToolCall("add", {"a": 1, "b": 2})]).passed
    assert check_case(case, [call(base=10, height=5.0)]).failure == "wrong_tool"


# -- outcomes ------------------------------------------------------------------------------

IRRELEVANT = {"id": "i", "question": QUESTION, "function": [SUM], "category": "irrelevance"}


def test_irrelevance_passes_without_call():
    case = EvalCase.from_dict(IRRELEVANT)
    assert case.expected_outcome == "refuse"
    result = check_case(case, [])
    assert result.passed
    assert result.tool_names_correct is None


def test_irrelevance_unparseable_is_no_call():
    result = check_case(EvalCase.from_dict(IRRELEVANT), "tool call is not valid JSON")
    assert result.passed
    assert result.format_error


def test_irrelevance_call_is_missed_refusal():
    result = check_case(EvalCase.from_dict(IRRELEVANT), [ToolCall("add", {"a": 1, "b": 2})])
    assert result.failure == "missed_refusal"


def test_answer_without_call_is_wrong_refusal():
    result = check_case(area_case(), [])
    assert result.failure == "wrong_refusal"
    assert result.tool_names_correct is False


def test_unparseable_output():
    result = check_case(area_case(), ParsedOutput(error="tool call is not valid JSON"))
    assert result.failure == "unparseable_output"
    assert result.format_error
    assert result.observed_outcome == "unparseable"


def test_parsed_output_accepted():
    parsed = ParsedOutput(tool_calls=[call(base=10, height=5.0)], content="Sure.")
    assert check_case(area_case(), parsed).passed


PACK_TOOLS = [
    {"type": "function", "function": {"name": "lookup_rate", "parameters": {
        "type": "object", "properties": {"award": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["award"]}}},
    {"type": "function", "function": {"name": "final_answer", "parameters": {
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
    {"type": "function", "function": {"name": "refuse", "parameters": {
        "type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]}}},
    {"type": "function", "function": {"name": "escalate_to_officer", "parameters": {
        "type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}}},
]
PACK_OPTIONS = CheckOptions(refusal_tools=frozenset({"refuse"}),
                            escalation_tools=frozenset({"escalate_to_officer"}))


def pack_case(outcome: str, **extra) -> EvalCase:
    data = {"id": f"{outcome}-case", "question": QUESTION, "expected_outcome": outcome,
            "category": outcome}
    data.update(extra)
    return EvalCase.from_dict(data)


def run_pack(case: EvalCase, calls: list[ToolCall], **output) -> CaseResult:
    return check_case(case, ModelOutput(calls=calls, **output), functions=PACK_TOOLS,
                      options=PACK_OPTIONS)


REFUSE = ToolCall("refuse", {"reason": "out of scope"})
ESCALATE = ToolCall("escalate_to_officer", {"summary": "needs review"})
LOOKUP = ToolCall("lookup_rate", {"award": "Clerk L2"})
ANSWER = ToolCall("final_answer", {"answer": "42.10"})


@pytest.mark.parametrize("expected, calls, failure", [
    ("refuse", [REFUSE], None),
    ("refuse", [], None),
    ("refuse", [ESCALATE], "wrong_refusal"),
    ("refuse", [LOOKUP, ANSWER], "missed_refusal"),
    ("escalate", [LOOKUP, ESCALATE], None),
    ("escalate", [REFUSE], "wrong_refusal"),
    ("escalate", [], "wrong_refusal"),
    ("escalate", [ANSWER], "missed_refusal"),
    ("silent", [], None),
    ("silent", [REFUSE], "wrong_refusal"),
    ("silent", [ANSWER], "missed_refusal"),
])
def test_pack_outcomes(expected, calls, failure):
    result = run_pack(pack_case(expected), calls)
    assert result.failure == failure
    assert result.passed is (failure is None)


def test_pack_answer_refused_is_wrong_refusal():
    case = pack_case("answer", expected_calls=[{"lookup_rate": {"award": ["Clerk L2"]}},
                                               {"final_answer": {"answer": ["$any"]}}])
    assert run_pack(case, [REFUSE]).failure == "wrong_refusal"


def test_runner_outcome_takes_precedence():
    result = run_pack(pack_case("silent"), [], outcome="refuse")
    assert result.failure == "wrong_refusal"


def test_step_limit():
    case = pack_case("answer", expected_calls=[{"lookup_rate": {"award": ["Clerk L2"]}},
                                               {"final_answer": {"answer": ["$any"]}}])
    result = run_pack(case, [LOOKUP, LOOKUP, LOOKUP], outcome="step_limit")
    assert result.failure == "step_limit"
    assert result.tool_names_correct is False


def test_silent_unparseable_fails():
    result = run_pack(pack_case("silent"), [], error="tool call is not valid JSON")
    assert result.failure == "unparseable_output"


def test_refusal_call_without_options():
    case = pack_case("refuse", expected_calls=[{"refuse": {"reason": ["$any"]}}])
    result = check_case(case, [REFUSE], functions=PACK_TOOLS)
    assert result.passed
    assert result.observed_outcome == "answer"
    assert check_case(case, [LOOKUP], functions=PACK_TOOLS).failure == "missed_refusal"


def test_refuse_with_expected_refusal_call():
    case = pack_case("refuse", expected_calls=[{"refuse": {"reason": ["$any"]}}])
    assert run_pack(case, [REFUSE]).passed
    assert run_pack(case, [ToolCall("refuse", {})]).failure == "missing_required"
    assert run_pack(case, []).failure == "wrong_tool"


# -- multi-step ----------------------------------------------------------------------------

STEPS = [{"lookup_rate": {"award": ["Clerk L2"], "year": [2026, ""]}},
         {"final_answer": {"answer": ["$any"]}}]


def test_multi_step_sequence_passes():
    result = run_pack(pack_case("answer", category="multi_step", expected_calls=STEPS),
                      [LOOKUP, ANSWER])
    assert result.passed
    assert result.multi_step
    assert [item.index for item in result.calls] == [0, 1]


def test_multi_step_order_matters():
    result = run_pack(pack_case("answer", expected_calls=STEPS), [ANSWER, LOOKUP])
    assert result.failure == "wrong_tool"
    assert result.tool_names_correct is False


def test_multi_step_stopped_early():
    result = run_pack(pack_case("answer", expected_calls=STEPS),
                      [ToolCall("lookup_rate", {"award": "Clerk L2", "year": 2026})])
    assert result.failure == "wrong_tool"
    assert "stopped after 1" in result.message


def test_multi_step_extra_call():
    result = run_pack(pack_case("answer", expected_calls=STEPS), [LOOKUP, LOOKUP, ANSWER])
    assert not result.passed
    assert result.failure == "wrong_tool"


def test_multi_step_argument_error():
    bad = ToolCall("lookup_rate", {"award": "Clerk L3"})
    result = run_pack(pack_case("answer", expected_calls=STEPS), [bad, ANSWER])
    assert result.failure == "value_error"
    assert result.tool_names_correct is True
    assert result.calls_correct is False


def test_multi_step_parse_error_after_calls():
    result = run_pack(pack_case("answer", expected_calls=STEPS), [LOOKUP],
                      error="tool call JSON has no string field 'name'")
    assert result.failure == "unparseable_output"


# -- inputs and records --------------------------------------------------------------------


def test_missing_function_doc_raises():
    case = pack_case("answer", expected_calls=[{"unknown_tool": {"x": [1]}}])
    with pytest.raises(CheckerError, match="unknown_tool"):
        run_pack(case, [])


def test_case_dict_accepted():
    data = {"id": "d", "question": QUESTION, "function": [SUM],
            "ground_truth": [{"add": {"a": [1], "b": [2]}}]}
    assert check_case(data, [ToolCall("add", {"a": 1, "b": 2})]).passed


def test_bad_output_type_raises():
    with pytest.raises(TypeError):
        check_case(area_case(), [{"name": "add"}])


def test_case_result_round_trip():
    result = check_case(area_case(rules=["r1"]), [call(base=10, height="x")],
                        rule_verdicts={"r1": {"passed": True, "reason": ""}},
                        prompt_tokens=100, completion_tokens=20)
    copy = CaseResult.from_dict(result.to_dict())
    assert copy == result
    assert copy.total_tokens == 120
    assert copy.rules == ["r1"]


def test_check_call_direct():
    verdict = check_call(AREA, call(base=10, height=5.0), AREA_ANSWER)
    assert verdict.passed
    assert verdict.expected == "triangle.area"
