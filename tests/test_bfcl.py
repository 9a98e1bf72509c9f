"""BFCL import, and the checker against BFCL's rules on the public BFCL data.

Outputs are built from each case's possible answers: the first allowed value of every
argument must pass, and systematic perturbations must get the verdict BFCL's AST checker
rules define for them (see appliance/evaluation/checker.py for the rules).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.chat import ToolCall
from appliance.evaluation.bfcl import (CATEGORIES, bfcl_evalset, category_file, default_bfcl_dir,
                                       import_bfcl, load_bfcl_category, openai_tools)
from appliance.evaluation.checker import (OPTIONAL, TYPE_MAPPING, CheckOptions, check_case,
                                          standardize_string)
from appliance.evaluation.evalset import EvalCase, load_frozen

REPO_ROOT = Path(__file__).resolve().parent.parent
BFCL_DIR = default_bfcl_dir(REPO_ROOT)

needs_bfcl = pytest.mark.skipif(not (BFCL_DIR / "possible_answer").is_dir(),
                                reason=f"BFCL reference data not found at {BFCL_DIR}")


# -- building outputs from possible answers ------------------------------------------------


def _concrete(values: list):
    return next(value for value in values if value != OPTIONAL)


def _materialize(value, schema: dict):
    """Turn a possible value into what a model would output (dict answers hold value lists)."""
    kind = schema.get("type")
    if kind == "dict" and isinstance(value, dict):
        return {key: _materialize(_concrete(values), {}) for key, values in value.items()
                if values and values[0] != OPTIONAL}
    if kind == "array" and (schema.get("items") or {}).get("type") == "dict" and isinstance(value, list):
        return [_materialize(item, {"type": "dict"}) for item in value]
    return value


def expected_entries(case: EvalCase):
    functions = {doc["name"]: doc for doc in case.function}
    for entry in case.ground_truth:
        ((name, arguments),) = entry.items()
        yield name, arguments, functions[name]["parameters"]


def first_value_calls(case: EvalCase, include_optional: bool = False) -> list[ToolCall]:
    """The first allowed value of every argument; "" first means omit, unless required."""
    calls = []
    for name, arguments, parameters in expected_entries(case):
        required = set(parameters.get("required", []))
        values = {}
        for argument, possible in arguments.items():
            if possible[0] == OPTIONAL and argument not in required and not include_optional:
                continue
            if all(value == OPTIONAL for value in possible):
                continue
            values[argument] = _materialize(_concrete(possible), parameters["properties"][argument])
        calls.append(ToolCall(name, values))
    return calls


def is_variable(possible: list, schema: dict) -> bool:
    concrete = [value for value in possible if value != OPTIONAL]
    return bool(concrete) and type(concrete[0]) is not TYPE_MAPPING[schema["type"]]


def perturbations(case: EvalCase):
    """Yield (label, calls, expected_pass, expected_failure) for one single-call BFCL case."""
    base = first_value_calls(case)
    yield "first values", base, True, None
    yield "all optional values", first_value_calls(case, include_optional=True), True, None
    ((name, arguments, parameters),) = list(expected_entries(case))
    call = base[0]
    properties = parameters["properties"]

    yield "wrong name", [ToolCall(name + "_v2", dict(call.arguments))], False, "wrong_tool"
    yield "unknown argument", [ToolCall(name, {**call.arguments, "zz_unknown": 1})], False, \
        "unexpected_argument"
    yield "duplicated call", [call, call], False, "wrong_tool"
    yield "no call", [], False, "wrong_refusal"

    other = [doc["name"] for doc in case.function if doc["name"] != name]
    if other:
        yield "other function", [ToolCall(other[0], dict(call.arguments))], False, "wrong_tool"

    for argument in parameters.get("required", []):
        if argument in call.arguments:
            dropped = {key: value for key, value in call.arguments.items() if key != argument}
            yield f"drop {argument}", [ToolCall(name, dropped)], False, "missing_required"

    for argument, value in call.arguments.items():
        schema = properties[argument]
        possible = arguments[argument]
        kind = schema["type"]

        def changed(new_value):
            return [ToolCall(name, {**call.arguments, argument: new_value})]

        if is_variable(possible, schema):
            continue

        if kind == "string":
            yield f"{argument}: int for string", changed(12345), False, "type_error"
            allowed = {standardize_string(item) for item in possible if isinstance(item, str)}
            wrong = value + " zzq"
            if standardize_string(wrong) not in allowed:
                yield f"{argument}: changed string", changed(wrong), False, "value_error"
            if value.isascii():
                restyled = "".join(char.swapcase() for char in value).replace(" ", " _ ") + " ./-*^"
                assert standardize_string(restyled) == standardize_string(value)
                yield f"{argument}: case/space/punctuation", changed(restyled), True, None
        elif kind == "integer":
            yield f"{argument}: float for int", changed(float(value)), False, "type_error"
            yield f"{argument}: string for int", changed(str(value)), False, "type_error"
            if value + 1 not in possible:
                yield f"{argument}: other int", changed(value + 1), False, "value_error"
        elif kind == "float":
            if isinstance(value, float) and value.is_integer():
                yield f"{argument}: int for float", changed(int(value)), True, None
            elif isinstance(value, float) and float(int(value)) not in possible:
                yield f"{argument}: truncated int for float", changed(int(value)), False, "value_error"
            yield f"{argument}: string for float", changed(str(value)), False, "type_error"
        elif kind == "boolean":
            yield f"{argument}: int for bool", changed(1 if value else 0), False, "type_error"
            if (not value) not in possible:
                yield f"{argument}: flipped bool", changed(not value), False, "value_error"
        elif kind in ("array", "tuple") and isinstance(value, list):
            item_kind = (schema.get("items") or {}).get("type")
            if item_kind == "dict":
                continue
            alternatives = [[standardize_string(x) if isinstance(x, str) else x for x in item]
                            for item in possible if isinstance(item, list)]
            reordered = list(reversed(value))
            normalized = [standardize_string(x) if isinstance(x, str) else x for x in reordered]
            if len(value) >= 2 and normalized not in alternatives:
                yield f"{argument}: reordered list", changed(reordered), False, "value_error"
            if value and all(isinstance(item, str) and item.isascii() for item in value):
                upper = [item.upper() + " " for item in value]
                yield f"{argument}: list items restyled", changed(upper), True, None
            yield f"{argument}: string for list", changed("x"), False, "type_error"


def bfcl_cases(category: str) -> list[EvalCase]:
    return bfcl_evalset(BFCL_DIR, category).cases


# -- import --------------------------------------------------------------------------------


@needs_bfcl
@pytest.mark.parametrize("category, count", [("simple_python", 400), ("multiple", 200),
                                             ("irrelevance", 240)])
def test_bfcl_import_counts(category, count):
    evalset = bfcl_evalset(BFCL_DIR, category)
    assert len(evalset.cases) == count
    assert evalset.digest.startswith("sha256:")
    assert {case.category for case in evalset.cases} == {category}


@needs_bfcl
def test_bfcl_import_freezes(tmp_path, workspace):
    output = tmp_path / "simple.jsonl"
    frozen = import_bfcl(BFCL_DIR, "simple_python", workspace, limit=25, output=output)
    assert frozen.name == "bfcl-simple-python-25"
    assert len(frozen.cases) == 25
    assert frozen.manifest["metadata"]["license"] == "Apache-2.0"
    assert frozen.manifest["metadata"]["source_commit"]
    assert load_frozen(workspace, "bfcl-simple-python-25").digest == frozen.digest
    assert len(output.read_text().splitlines()) == 25


@needs_bfcl
def test_bfcl_irrelevance_outcome():
    case = bfcl_cases("irrelevance")[0]
    assert case.expected_outcome == "refuse"
    assert case.ground_truth is None


def test_bfcl_missing_dir_is_clear(tmp_path):
    with pytest.raises(Exception, match="no BFCL_v\\*_simple_python.json"):
        category_file(tmp_path, "simple_python")


def test_bfcl_unknown_category(tmp_path):
    with pytest.raises(Exception, match="unsupported BFCL category"):
        category_file(tmp_path, "parallel_multiple")


def test_bfcl_missing_answer_reported(tmp_path):
    (tmp_path / "possible_answer").mkdir()
    line = {"id": "simple_python_0", "question": [[{"role": "user", "content": "q"}]],
            "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]}
    (tmp_path / "BFCL_v4_simple_python.json").write_text(json.dumps(line) + "\n")
    (tmp_path / "possible_answer" / "BFCL_v4_simple_python.json").write_text("")
    with pytest.raises(Exception, match="no possible answer for 'simple_python_0'"):
        load_bfcl_category(tmp_path, "simple_python")


def test_default_dir_is_next_to_repo():
    assert default_bfcl_dir("/x/main") == Path("/x/shared/reference/bfcl")


# -- the checker on BFCL data --------------------------------------------------------------


@needs_bfcl
@pytest.mark.parametrize("category", ["simple_python", "multiple"])
def test_bfcl_perturbation_verdicts(category):
    checked = 0
    mismatches = []
    for case in bfcl_cases(category):
        for label, calls, expected_pass, expected_failure in perturbations(case):
            result = check_case(case, calls)
            checked += 1
            if result.passed != expected_pass or result.failure != expected_failure:
                mismatches.append(f"{case.id} [{label}]: expected {expected_failure or 'pass'}, "
                                  f"got {result.failure or 'pass'} ({result.message})")
    assert not mismatches, "\n".join(mismatches[:20])
    assert checked > 10 * len(bfcl_cases(category))


@needs_bfcl
def test_bfcl_first_values_all_pass():
    failures = [case.id for category in ("simple_python", "multiple")
                for case in bfcl_cases(category)
                if not check_case(case, first_value_calls(case)).passed]
    assert failures == []


@needs_bfcl
def test_bfcl_required_optional_conflict():
    # simple_python_200 marks a required argument optional in its answer; BFCL still
    # requires it, because the function doc lists it as required.
    case = next(case for case in bfcl_cases("simple_python") if case.id == "simple_python_200")
    call = first_value_calls(case)[0]
    assert "fuel_efficiency" in call.arguments
    dropped = {key: value for key, value in call.arguments.items() if key != "fuel_efficiency"}
    result = check_case(case, [ToolCall(call.name, dropped)])
    assert result.failure == "missing_required"


@needs_bfcl
def test_bfcl_irrelevance_verdicts():
    for case in bfcl_cases("irrelevance"):
        assert check_case(case, []).passed, case.id
        assert check_case(case, "could not parse").passed, case.id
        doc = case.function[0]
        called = check_case(case, [ToolCall(doc["name"], {})])
        assert called.failure == "missed_refusal", case.id


@needs_bfcl
def test_bfcl_dotted_names():
    dotted = [case for case in bfcl_cases("simple_python") if "." in case.function[0]["name"]]
    assert dotted
    options = CheckOptions(underscore_names=True)
    for case in dotted:
        call = first_value_calls(case)[0]
        renamed = [ToolCall(call.name.replace(".", "_"), call.arguments)]
        assert check_case(case, renamed, options=options).passed, case.id
        assert check_case(case, renamed).failure == "wrong_tool", case.id
        assert check_case(case, [call], options=options).failure == "wrong_tool", case.id


@needs_bfcl
def test_bfcl_openai_tools_conversion():
    case = bfcl_cases("simple_python")[1]
    tools = openai_tools(case.function, underscore_names=True)
    function = tools[0]["function"]
    assert function["name"] == "math_factorial"
    assert function["parameters"]["type"] == "object"
    assert function["parameters"]["properties"]["number"]["type"] == "integer"


def test_openai_tools_type_mapping():
    docs = [{"name": "a.b", "parameters": {"type": "dict", "properties": {
        "x": {"type": "float"}, "y": {"type": "tuple", "items": {"type": "float"}},
        "z": {"type": "any", "optional": True}}}}]
    parameters = openai_tools(docs)[0]["function"]["parameters"]
    assert parameters["properties"]["x"]["type"] == "number"
    assert parameters["properties"]["y"] == {"type": "array", "items": {"type": "number"}}
    assert parameters["properties"]["z"] == {"type": "string"}
    assert openai_tools(docs)[0]["function"]["name"] == "a.b"


def test_categories_listed():
    assert CATEGORIES == ("simple_python", "multiple", "irrelevance")


@needs_bfcl
def test_bfcl_parallel_from_pairs():
    # Pairs of simple cases with different functions make parallel cases: any order of
    # the two correct calls passes, and one bad call fails the case.
    cases = bfcl_cases("simple_python")
    checked = 0
    for first, second in zip(cases[0::2], cases[1::2]):
        if first.function[0]["name"] == second.function[0]["name"]:
            continue
        pair = EvalCase.from_dict({
            "id": f"{first.id}+{second.id}", "question": first.question,
            "function": first.function + second.function,
            "ground_truth": first.ground_truth + second.ground_truth})
        calls = first_value_calls(first) + first_value_calls(second)
        assert check_case(pair, calls).passed, pair.id
        assert check_case(pair, list(reversed(calls))).passed, pair.id
        broken = ToolCall(calls[1].name, {**calls[1].arguments, "zz_unknown": 1})
        result = check_case(pair, [broken, calls[0]])
        assert result.failure == "unexpected_argument", pair.id
        assert check_case(pair, calls[:1]).failure == "wrong_tool", pair.id
        checked += 1
    assert checked > 150
