"""Trace verification: each failure kind stops at its stage with a reason."""

from __future__ import annotations

import copy

import pytest

from appliance.chat import ToolCall, assistant_message
from appliance.curation import pipeline, verify
from appliance.store import Store
from tests.curation_fixtures import TraceFactory, rate_task

REQUEST = "What is the base hourly rate for Level 1 under the Coastal Hospitality Award?"


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "reckon.db")


@pytest.fixture
def factory(store):
    return TraceFactory(store)


@pytest.fixture
def verifier(factory):
    return verify.Verifier(factory.pack)


def good_messages(factory):
    task = rate_task("t-good", REQUEST)
    return task, factory.conversation(REQUEST, factory.rate_calls(task["expected"]["rate"]))


def test_correct_trace_is_verified(factory, verifier):
    task, messages = good_messages(factory)
    verdict = verifier.verify(task, messages, "answer", [], [])
    assert verdict.verified
    assert verdict.stage == verify.COMPLETE
    assert verdict.reasons == []
    assert verdict.rules["lookup-before-stating"] is True
    assert verdict.rules["task"] is True


def _with_first_call(factory, name, arguments):
    task, messages = good_messages(factory)
    messages[2] = assistant_message([ToolCall(name, {})], None, 0)
    messages[2]["tool_calls"][0]["function"]["arguments"] = arguments
    return task, messages


FORMAT_CASES = [
    ("unknown tool", "lookup_salary", '{"award": "Coastal Hospitality Award"}', "unknown_tool"),
    ("arguments not JSON", "lookup_rate", '{"award": "Coastal', "invalid_arguments"),
    ("arguments a JSON list", "lookup_rate", '["Level 1"]', "invalid_arguments"),
    ("wrong type", "lookup_rate",
     '{"award": "Coastal Hospitality Award", "classification": 1, "rate_type": "base_hourly"}',
     "wrong_argument_type"),
    ("enum violation", "lookup_rate",
     '{"award": "Coastal Hospitality Award", "classification": "Level 9", "rate_type": "base_hourly"}',
     "invalid_arguments"),
    ("missing required", "lookup_rate", '{"award": "Coastal Hospitality Award"}',
     "invalid_arguments"),
]


@pytest.mark.parametrize("case,name,arguments,code", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_format_failures(factory, verifier, case, name, arguments, code):
    task, messages = _with_first_call(factory, name, arguments)
    verdict = verifier.verify(task, messages, "answer", [], [])
    assert not verdict.verified
    assert verdict.stage == "format"
    assert code in [reason.code for reason in verdict.reasons]
    assert all(reason.stage == "format" for reason in verdict.reasons)
    assert verdict.reasons[0].step == 0


@pytest.mark.parametrize("kind", sorted(verify.FORMAT_ERROR_KINDS))
def test_recorded_format_errors_reject(factory, verifier, kind):
    task, messages = good_messages(factory)
    errors = [{"step": 0, "kind": kind, "message": "recorded by the harness"}]
    verdict = verifier.verify(task, messages, "answer", errors, [])
    assert verdict.stage == "format"
    assert [reason.code for reason in verdict.reasons] == [kind]


def test_step_errors_list_rejects(factory, verifier):
    task, messages = good_messages(factory)
    steps = [{"index": 0, "errors": [{"kind": "unparseable_output", "message": "no call"}]}]
    verdict = verifier.verify(task, messages, "answer", [], steps)
    assert verdict.stage == "format"
    assert verdict.reasons[0].code == "unparseable_output"


def test_empty_action_and_no_request(factory, verifier):
    task, messages = good_messages(factory)
    empty = copy.deepcopy(messages)
    empty[2] = {"role": "assistant", "content": "  "}
    verdict = verifier.verify(task, empty, "answer", [], [])
    assert "empty_action" in [reason.code for reason in verdict.reasons]

    no_user = [message for message in messages if message["role"] != "user"]
    verdict = verifier.verify(task, no_user, "answer", [], [])
    assert "no_user_request" in [reason.code for reason in verdict.reasons]


def test_malformed_messages_rejected(verifier):
    verdict = verifier.verify({"id": "t"}, "not a list", "answer")
    assert verdict.stage == "format"
    assert verdict.reasons[0].code == "malformed_messages"
    verdict = verifier.verify({"id": "t"}, [{"role": "narrator", "content": "x"}], "answer")
    assert "malformed_messages" in [reason.code for reason in verdict.reasons]


def test_tool_error_result_fails_execution(factory, verifier):
    task = rate_task("t-err", REQUEST)
    calls = factory.rate_calls(task["expected"]["rate"])
    calls[0][1]["effective_date"] = "1999-01-01"     # before the earliest rate: ToolError
    messages = factory.conversation(REQUEST, calls)
    assert '"error"' in messages[3]["content"]
    verdict = verifier.verify(task, messages, "answer", [], [])
    assert verdict.stage == "execution"
    assert verdict.reasons[0].code == "tool_error"
    assert "lookup_rate returned an error" in verdict.reasons[0].message


def test_missing_tool_result_fails_execution(factory, verifier):
    task, messages = good_messages(factory)
    del messages[3]
    verdict = verifier.verify(task, messages, "answer", [], [])
    assert verdict.stage == "execution"
    assert verdict.reasons[0].code == "missing_tool_result"


@pytest.mark.parametrize("kind", ["timeout", "tool_error", "runtime_error"])
def test_recorded_execution_errors_reject(factory, verifier, kind):
    task, messages = good_messages(factory)
    verdict = verifier.verify(task, messages, "answer",
                              [{"step": 0, "kind": kind, "message": "m"}], [])
    assert verdict.stage == "execution"
    assert kind in [reason.code for reason in verdict.reasons]


@pytest.mark.parametrize("outcome", ["step_limit", "token_limit", "context_overflow"])
def test_unfinished_runs_fail_execution(factory, verifier, outcome):
    task, messages = good_messages(factory)
    verdict = verifier.verify(task, messages, outcome,
                              [{"step": 1, "kind": outcome, "message": "limit"}], [])
    assert verdict.stage == "execution"
    codes = [reason.code for reason in verdict.reasons]
    assert "run_incomplete" in codes
    assert outcome in codes


def test_unsupported_figure_fails_policy(factory, verifier):
    task = rate_task("t-policy", REQUEST)
    calls = factory.rate_calls(task["expected"]["rate"], answer="The base hourly rate is 99.99.")
    messages = factory.conversation(REQUEST, calls)
    verdict = verifier.verify(task, messages, "answer", [], [])
    assert verdict.stage == "policy"
    by_code = {reason.code: reason.message for reason in verdict.reasons}
    assert "lookup-before-stating" in by_code["rule_failed"]
    assert "task_failed" in by_code
    assert verdict.rules["lookup-before-stating"] is False


def test_wrong_terminal_fails_task_checker(factory, verifier):
    task = rate_task("t-refused", REQUEST)
    messages = factory.conversation(REQUEST, [("refuse", {"reason": "no", "category": "other"})])
    verdict = verifier.verify(task, messages, "refuse", [], [])
    assert verdict.stage == "policy"
    assert "task_failed" in [reason.code for reason in verdict.reasons]


def test_stored_verdicts_are_not_trusted(store, factory, verifier):
    task = rate_task("t-stale", REQUEST)
    calls = factory.rate_calls(task["expected"]["rate"], answer="The rate is 12.34 an hour.")
    messages = factory.conversation(REQUEST, calls)
    passing = {rule.id: {"passed": True, "reason": "stale"} for rule in factory.pack.rules}
    passing["task"] = {"passed": True, "reason": "stale"}
    trace_id = factory.insert(task, messages, rule_verdicts=passing)

    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.funnel["verified"] == 0
    assert plan.verification["stored_verdicts_disagree"] == 1
    stored = verify.latest_verdict(store, trace_id)
    assert stored["verified"] is False
    assert stored["stage"] == "policy"
    assert stored["pack_digest"] == factory.pack.digest


def test_rejected_traces_keep_reasons(store, factory):
    good_task = rate_task("t-ok", REQUEST)
    good = factory.correct_trace(good_task)
    bad_task = rate_task("t-bad", REQUEST.replace("Level 1", "Level 2"),
                         classification="Level 2")
    _, messages = _with_first_call(factory, "lookup_salary", "{}")
    bad = factory.insert(bad_task, messages)

    pipeline.plan(store, pipeline.CurationConfig())
    assert store.count("traces") == 2
    assert store.count("trace_verdicts") == 2
    assert verify.latest_verdict(store, good)["verified"] is True
    rejected = verify.latest_verdict(store, bad)
    assert rejected["verified"] is False
    assert rejected["reasons"][0]["code"] == "unknown_tool"
    assert "lookup_salary" in rejected["reasons"][0]["message"]



def test_harness_traces_verify(store):
    """Traces recorded by the real harness loop (scripted outputs) verify as expected."""
    from appliance.harness import AgentLoop, Limits, create_run, trace_row
    from appliance.runtimes.base import Sampling
    from tests.curation_fixtures import entitlements
    from tests.support.scripted import ScriptedRuntime, call

    pack = entitlements()
    task = rate_task("t-harness", REQUEST)
    rate = task["expected"]["rate"]
    good = [call("lookup_rate", award=rate["award"], classification=rate["classification"],
                 rate_type=rate["rate_type"]),
            call("final_answer", answer=f"The base hourly rate is {rate['value']:g} AUD.",
                 citations=[])]
    unparseable_first = ["I think the rate is about 20."] + good
    outcomes = {}
    for name, outputs in (("good", good), ("unparseable", unparseable_first)):
        runtime = ScriptedRuntime(outputs)
        run = create_run(store, pack, runtime, tasks=[task], samples=1, concurrency=1,
                         sampling=Sampling(), limits=Limits(max_steps=4), prompt="full")
        record = AgentLoop(pack, runtime, Sampling(), Limits(max_steps=4)).run_task(task)
        row = trace_row(run, record, pack.openai_tools())
        store.insert("traces", row)
        outcomes[name] = row["id"]

    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.funnel["traces_in"] == 2
    assert verify.latest_verdict(store, outcomes["good"])["verified"] is True
    rejected = verify.latest_verdict(store, outcomes["unparseable"])
    assert rejected["stage"] == "format"
    assert rejected["reasons"][0]["code"] == "unparseable_output"
