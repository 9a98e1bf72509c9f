"""The shipped entitlements pack's held-out eval set through the loader and the checker."""

from __future__ import annotations

import pytest

from appliance.chat import ToolCall
from appliance.evaluation.checker import ANY_VALUE, OPTIONAL, CheckOptions, check_case
from appliance.evaluation.evalset import freeze_evalset, load_evalset
from appliance.packs import PACKS_ROOT

PACK_DIR = PACKS_ROOT / "entitlements"
pytestmark = pytest.mark.skipif(not (PACK_DIR / "pack.yaml").is_file(),
                                reason=f"entitlements pack not found at {PACK_DIR}")

# A value of the declared type for "$any" possible values.
ANY_BY_TYPE = {"string": "some text", "array": [], "integer": 1, "number": 1.5,
               "boolean": True, "object": {}}


@pytest.fixture(scope="module")
def pack():
    from appliance.packs import load_pack

    return load_pack(PACK_DIR)


def expected_calls(case, pack) -> list[ToolCall]:
    """The first allowed value of every argument of every expected call."""
    calls = []
    for entry in case.expected_calls or case.ground_truth or []:
        ((name, arguments),) = entry.items()
        parameters = pack.tools[name].parameters
        required = set(parameters.get("required", []))
        values = {}
        for argument, possible in arguments.items():
            if possible[0] == OPTIONAL and argument not in required:
                continue
            value = next(item for item in possible if item != OPTIONAL)
            if value == ANY_VALUE:
                value = ANY_BY_TYPE[parameters["properties"][argument]["type"]]
            values[argument] = value
        calls.append(ToolCall(name, values))
    return calls


def options(pack) -> CheckOptions:
    assert {"refuse", "escalate_to_officer"} <= set(pack.terminal_tools)
    return CheckOptions(refusal_tools=frozenset({"refuse"}),
                        escalation_tools=frozenset({"escalate_to_officer"}))


def test_pack_evalset_loads_and_freezes(pack, workspace):
    evalset = load_evalset(pack.evalset_path)
    assert len(evalset.cases) > 100
    assert {case.expected_outcome for case in evalset.cases} >= {"answer", "refuse", "escalate"}
    frozen = freeze_evalset(pack.evalset_path, workspace)
    assert frozen.digest == evalset.digest


def test_pack_expected_calls_pass(pack):
    evalset = load_evalset(pack.evalset_path)
    failures = []
    for case in evalset.cases:
        result = check_case(case, expected_calls(case, pack), functions=pack.tools,
                            options=options(pack))
        if not result.passed:
            failures.append(f"{case.id}: {result.failure}: {result.message}")
    assert failures == []


def test_pack_wrong_outcomes_fail(pack):
    evalset = load_evalset(pack.evalset_path)
    refuse = ToolCall("refuse", {"reason": "out of scope"})
    answered = [case for case in evalset.cases if case.expected_outcome == "answer"]
    declined = [case for case in evalset.cases if case.expected_outcome in ("refuse", "escalate")]
    assert answered
    assert declined
    for case in answered:
        result = check_case(case, [refuse], functions=pack.tools, options=options(pack))
        assert result.failure == "wrong_refusal", case.id
    for case in declined:
        calls = [call for call in expected_calls(case, pack)
                 if call.name not in ("refuse", "escalate_to_officer")]
        calls.append(ToolCall("final_answer", {"answer": "Here it is.", "citations": []}))
        result = check_case(case, calls, functions=pack.tools, options=options(pack))
        assert result.failure == "missed_refusal", case.id
