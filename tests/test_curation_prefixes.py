"""Step-verified prefixes: the decisions of a trace before the step rejection sampling gave up on."""

from __future__ import annotations

import pytest

from appliance.curation import pipeline, verify
from tests.curation_fixtures import TraceFactory, rate_task

REJECTED_AT = [{"step": 1, "kind": "step_rejected",
                "message": "all 4 candidates rejected; last: task: the answer does not state the "
                           "looked-up value"}]


@pytest.fixture
def store(workspace):
    return workspace.store()


def stopped_trace(factory, task, *, rate_type=None, rejected_at=1):
    """Insert a trace whose lookup passed and whose final_answer call every candidate got wrong."""
    rate = task["expected"]["rate"]
    arguments = {"award": rate["award"], "classification": rate["classification"],
                 "rate_type": rate_type or rate["rate_type"]}
    messages = factory.conversation(task["request"], [
        ("lookup_rate", arguments),
        ("final_answer", {"answer": "The guidance is silent on it.", "citations": []})])
    errors = [dict(REJECTED_AT[0], step=rejected_at)]
    return factory.insert(task, messages, outcome="step_rejected", errors=errors)


def test_prefix_of_a_stopped_trace_becomes_examples(store):
    factory = TraceFactory(store)
    trace_id = stopped_trace(factory, rate_task("t-1", "What is the base rate for Level 1?"))

    without = pipeline.plan(store, pipeline.CurationConfig())
    assert without.examples == []

    result = pipeline.plan(store, pipeline.CurationConfig(verified_prefixes=True))
    assert result.funnel["verified"] == 0
    assert result.funnel["verified_prefixes"] == 1
    assert [(e.trace_id, e.decision_index, e.tool, e.variant) for e in result.examples] == \
        [(trace_id, 2, "lookup_rate", verify.PREFIX)]
    stored = verify.latest_verdict(store, trace_id, verify.PREFIX)
    assert stored["verified"] is True


def test_prefix_with_a_wrong_call_is_rejected(store):
    factory = TraceFactory(store)
    trace_id = stopped_trace(factory, rate_task("t-2", "What is the base rate for Level 1?"),
                             rate_type="sunday_penalty")
    result = pipeline.plan(store, pipeline.CurationConfig(verified_prefixes=True))
    assert result.examples == []
    assert result.funnel["verified_prefixes"] == 0
    stored = verify.latest_verdict(store, trace_id, verify.PREFIX)
    assert stored["verified"] is False
    assert stored["reasons"][0]["code"] == "step_failed"
    assert "rate_type" in stored["reasons"][0]["message"]


def test_whole_verified_trace_wins_over_a_prefix(store):
    factory = TraceFactory(store)
    task = rate_task("t-3", "What is the base rate for Level 1?")
    stopped_trace(factory, task)
    whole = factory.correct_trace(task, sample_index=1)
    result = pipeline.plan(store, pipeline.CurationConfig(verified_prefixes=True))
    assert {e.trace_id for e in result.examples} == {whole}
    assert {e.variant for e in result.examples} == {verify.ORIGINAL}


def test_rejection_at_the_first_step_leaves_no_prefix(store):
    factory = TraceFactory(store)
    stopped_trace(factory, rate_task("t-4", "What is the base rate for Level 1?"), rejected_at=0)
    result = pipeline.plan(store, pipeline.CurationConfig(verified_prefixes=True))
    assert result.examples == []


def test_step_verified_prefix_cuts_before_the_rejected_step():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "{}"},
                {"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "{}"}]
    assert verify.step_verified_prefix(messages, REJECTED_AT) == messages[:4]
    assert verify.step_verified_prefix(messages, []) is None
    assert verify.step_verified_prefix(messages, [{"kind": "step_rejected", "step": 5}]) is None
    assert verify.step_verified_prefix(messages, [{"kind": "step_rejected", "step": "1"}]) is None
