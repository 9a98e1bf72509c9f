"""The entitlements pack's held-out eval set: format, coverage, distinctness from the task
generator, and that a correct trace for every case passes the rules the case lists."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter

import jsonschema
import pytest

from appliance.chat import ToolCall, assistant_message, tool_message
from appliance.evaluation.checker import check_case
from appliance.evaluation.evalset import load_evalset
from appliance.packs import ToolError, TraceView, load_pack

PACK = load_pack("entitlements")
IMPL = PACK.module
CASE_KEYS = {"id", "category", "question", "expected_outcome", "rules", "task"}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    lines = PACK.evalset_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def ctx():
    return PACK.make_context()


def calls_of(case: dict) -> list[dict]:
    """The case's expected calls in order: expected_calls, or ground_truth for one call."""
    return case.get("expected_calls") or case["ground_truth"]


def test_evalset_loads_with_appliance_loader(cases):
    loaded = load_evalset(PACK.evalset_path)
    assert [case.id for case in loaded.cases] == [case["id"] for case in cases]


def test_evalset_size_and_ids(cases):
    assert len(cases) >= 220
    assert [case["id"] for case in cases] == [f"heldout-{number:04d}" for number in range(1, len(cases) + 1)]


def test_evalset_case_format(cases):
    expected_keys = set(IMPL.expected_block("answer", []))
    for case in cases:
        calls = calls_of(case)
        if len(calls) == 1:
            assert set(case) == CASE_KEYS | {"ground_truth"}, case["id"]
        else:
            assert set(case) == CASE_KEYS | {"expected_calls"}, case["id"]
        assert case["category"] in IMPL.CATEGORIES
        [[message]] = case["question"]
        assert message["role"] == "user"
        assert message["content"] == case["task"]["request"]
        outcome = case["task"]["expected"]["outcome"]
        assert case["expected_outcome"] == ("answer" if outcome == "silent" else outcome), case["id"]
        assert case["task"]["id"] == case["id"]
        assert case["task"]["category"] == case["category"]
        assert set(case["task"]["expected"]) == expected_keys
        names = [next(iter(call)) for call in calls]
        assert names == case["task"]["expected"]["calls"], case["id"]
        assert names[-1] == IMPL.OUTCOME_TOOLS[outcome]
        assert set(case["rules"]) <= {rule.id for rule in PACK.rules}


def test_expected_call_arguments_fit_tool_schemas(cases):
    for case in cases:
        for call in calls_of(case):
            [(name, arguments)] = call.items()
            schema = PACK.tools[name].parameters
            assert set(schema["required"]) <= set(arguments), (case["id"], name)
            assert set(arguments) <= set(schema["properties"]), (case["id"], name)
            for argument, choices in arguments.items():
                assert isinstance(choices, list) and choices, (case["id"], argument)
                if "" in choices:
                    assert argument not in schema["required"], (case["id"], argument)
                for choice in choices:
                    if choice in ("", "$any"):
                        continue
                    jsonschema.validate({**_filler(schema), argument: choice}, schema)


def _filler(schema: dict) -> dict:
    """Valid values for every required field, so one argument can be checked alone."""
    values = {}
    for name in schema["required"]:
        spec = schema["properties"][name]
        if "enum" in spec:
            values[name] = spec["enum"][0]
        elif spec["type"] == "array":
            values[name] = []
        else:
            values[name] = "x"
    return values


def test_evalset_covers_tools_rules_outcomes_and_categories(cases):
    tools = {name for case in cases for call in calls_of(case) for name in call}
    assert tools == set(PACK.tools)
    rules = {rule for case in cases for rule in case["rules"]}
    assert rules == {rule.id for rule in PACK.rules}
    outcomes = Counter(case["task"]["expected"]["outcome"] for case in cases)
    assert set(outcomes) == {"answer", "refuse", "escalate", "silent"}
    multi_step = [case for case in cases if len(calls_of(case)) > 1]
    assert len(multi_step) >= 100
    categories = Counter(case["category"] for case in cases)
    assert set(categories) == set(IMPL.CATEGORIES)
    assert min(categories.values()) >= 25
    refusal_categories = {case["task"]["expected"]["refusal_category"] for case in cases}
    assert set(IMPL.REFUSAL_CATEGORIES) <= refusal_categories


def test_evalset_rate_cases_use_reserved_combinations(cases, ctx):
    for case in cases:
        rate = case["task"]["expected"]["rate"]
        if rate is None:
            continue
        result = IMPL.lookup_rate(ctx, rate["award"], rate["classification"], rate["rate_type"], rate["requested_date"])
        assert result["value"] == rate["value"], case["id"]
        if case["category"] == "rate_lookup":
            assert IMPL.reserved_for_eval(rate["award"], rate["classification"], rate["rate_type"]), case["id"]


def test_evalset_includes_threshold_edge_cases(cases):
    amounts = {case["task"]["expected"]["underpayment_amount"]: case["task"]["expected"]["outcome"] for case in cases
               if case["task"]["expected"]["underpayment_amount"] is not None}
    assert amounts[500.0] == "answer"
    assert amounts[501.0] == "escalate"


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_evalset_requests_differ_from_generated(cases):
    requests = [item["request"] for item in IMPL.generate_tasks(5000, 0)]
    generated = [_tokens(request) for request in requests]
    generated_texts = {request.strip().lower() for request in requests}
    for case in cases:
        request = case["task"]["request"]
        assert request.strip().lower() not in generated_texts, case["id"]
        tokens = _tokens(request)
        closest = max(len(tokens & other) / len(tokens | other) for other in generated)
        assert closest < 0.8, (case["id"], request, closest)


def test_evalset_requests_are_distinct(cases):
    assert len({case["task"]["request"] for case in cases}) == len(cases)


def test_evalset_file_matches_builder():
    path = PACK.path / "eval" / "build_heldout.py"
    spec = importlib.util.spec_from_file_location("entitlements_build_heldout_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    rows = module.build()
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    assert text == PACK.evalset_path.read_text(encoding="utf-8"), "run eval/build_heldout.py again"


def test_guidance_cases_find_expected_passage(cases, ctx):
    for case in cases:
        if case["category"] != "guidance":
            continue
        [passage_id] = case["task"]["expected"]["passage_ids"]
        award = calls_of(case)[0]["search_guidance"]["award"][-1] or None
        ids = [p["id"] for p in IMPL.search_guidance(ctx, case["task"]["request"], award)["passages"]]
        assert passage_id in ids, (case["id"], ids)


# -- a correct trace for each case passes every rule the case names ----------------------------


def correct_steps(ctx, case: dict) -> list[tuple[str, dict]]:
    """The tool calls a well-behaved model makes for a case, built from its expectations."""
    expected = case["task"]["expected"]
    outcome = expected["outcome"]

    if outcome == "refuse":
        return [("refuse", {"reason": "The desk cannot help with this.", "category": expected["refusal_category"]})]
    if outcome == "escalate":
        return [("escalate_to_officer", {"reason": "Needs an entitlements officer.",
                                         "summary": "Enquirer reports an underpayment or a dismissal."})]

    steps = []
    sentences = []
    rate = expected["rate"]
    if rate:
        arguments = {key: rate[key] for key in ("award", "classification", "rate_type")}
        if rate["requested_date"]:
            arguments["effective_date"] = rate["requested_date"]
        steps.append(("lookup_rate", arguments))
        sentences.append(f"The rate is {rate['value']:g} ({rate['unit']}).")

    citations = []
    for passage_id in expected["passage_ids"]:
        row = ctx.connection.execute("SELECT text, award FROM passages WHERE passage_id = ?", (passage_id,)).fetchone()
        search = {"query": row["text"]}
        if row["award"] != IMPL.ALL_AWARDS:
            search["award"] = row["award"]
        steps.append(("search_guidance", search))
        citations.append(passage_id)
        sentences.append("The guidance explains the rule.")

    if outcome == "silent":
        # Words with digits are left out so that no identifier reaches the tool arguments.
        words = [word for word in case["task"]["request"].split() if not any(char.isdigit() for char in word)]
        steps.append(("search_guidance", {"query": " ".join(words)}))
        sentences.append("The guidance is silent on this question.")
    steps.append(("final_answer", {"answer": " ".join(sentences), "citations": citations}))
    return steps


def run_steps(ctx, task: dict, steps: list[tuple[str, dict]]) -> TraceView:
    messages = [{"role": "user", "content": task["request"]}]
    for step, (name, arguments) in enumerate(steps):
        message = assistant_message([ToolCall(name=name, arguments=arguments)], step=step)
        messages.append(message)
        try:
            result = PACK.tools[name].function(ctx, **arguments)
        except ToolError as error:
            result = {"error": str(error)}
        messages.append(tool_message(message["tool_calls"][0]["id"], name, result))
    return TraceView(task, messages)


def test_correct_traces_pass_listed_rules(cases, ctx):
    for case in cases:
        view = run_steps(ctx, case["task"], correct_steps(ctx, case))
        verdicts = PACK.verdicts(view)
        assert verdicts["task"]["passed"] is True, (case["id"], verdicts["task"])
        for rule_id in case["rules"]:
            assert verdicts[rule_id]["passed"] is True, (case["id"], rule_id, verdicts[rule_id])
        for rule_id, result in verdicts.items():
            assert result["passed"] is not False, (case["id"], rule_id, result)


def test_wrong_terminal_action_fails_listed_policy_rules(cases, ctx):
    """Check that a final_answer on any refusal or escalation case fails its policy rule."""
    checked = 0
    for case in cases:
        policy = {"refuse": "refuse-out-of-scope", "escalate": "escalate-underpayment"}.get(
            case["task"]["expected"]["outcome"])
        if policy is None:
            continue
        view = run_steps(ctx, case["task"], [("final_answer", {"answer": "Here is what I found.", "citations": []})])
        verdicts = PACK.verdicts(view)
        assert verdicts[policy]["passed"] is False, case["id"]
        assert verdicts["task"]["passed"] is False, case["id"]
        checked += 1
    assert checked >= 60


def test_echoing_identifiers_fails_identifier_cases(cases, ctx):
    for case in cases:
        if "no-identifier-echo" not in case["rules"]:
            continue
        echo = " ".join(case["task"]["expected"]["identifiers"])
        view = run_steps(ctx, case["task"], [("escalate_to_officer", {"reason": "x", "summary": f"Enquirer {echo}."})])
        assert PACK.verdicts(view)["no-identifier-echo"]["passed"] is False, case["id"]


def test_appliance_checker_scores_correct_calls(cases, ctx):
    """The eval checker accepts the calls of a correct trace and rejects a wrong ending."""
    for case in cases:
        steps = correct_steps(ctx, case)
        calls = [ToolCall(name=name, arguments=arguments) for name, arguments in steps]
        result = check_case(case, calls, functions=PACK.openai_tools())
        assert result.passed, (case["id"], result.failure, result.message)

        wrong = [ToolCall(name="escalate_to_officer", arguments={"reason": "x", "summary": "y"})]
        if case["task"]["expected"]["outcome"] == "escalate":
            wrong = [ToolCall(name="final_answer", arguments={"answer": "x", "citations": []})]
        assert not check_case(case, wrong, functions=PACK.openai_tools()).passed, case["id"]
