"""Decision split, rejection sampling, train/validation split by task and balancing."""

from __future__ import annotations

import pytest

from appliance.curation import balance, pipeline
from appliance.curation.select import Candidate, select
from appliance.curation.split import (TEXT_ACTION, action_tool, decision_indices,
                                      example_messages, split_of)
from appliance.errors import ReckonError
from appliance.store import Store
from tests.curation_fixtures import TraceFactory, rate_task, scriptable_tasks


def test_one_example_per_decision():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
                                                      "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "a", "name": "f", "content": "{}"},
                {"role": "assistant", "content": "final answer"}]
    assert decision_indices(messages) == [2, 4]
    assert example_messages(messages, 4) == messages
    assert example_messages(messages, 2)[-1] == messages[2]
    assert action_tool(messages[2]) == "f"
    assert action_tool(messages[4]) == TEXT_ACTION


def test_conversation_starting_with_assistant():
    messages = [{"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": "What is the rate?"},
                {"role": "assistant", "content": "It is 25."}]
    # The greeting comes before any request, so it is history, not a target.
    assert decision_indices(messages) == [2]
    with pytest.raises(ValueError, match="not an assistant"):
        example_messages(messages, 1)


def test_assistant_first_trace_through_plan(tmp_path):
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    task = rate_task("t-greet", "What is the base hourly rate for Level 1 under the Coastal "
                                "Hospitality Award?")
    messages = factory.conversation(task["request"], factory.rate_calls(task["expected"]["rate"]))
    messages.insert(1, {"role": "assistant", "content": "Welcome to the entitlements desk."})
    factory.insert(task, messages)
    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.funnel["verified"] == 1
    assert plan.verification["assistant_turns_before_request"] == 1
    assert sorted(example.decision_index for example in plan.examples) == [3, 5]


def test_split_of_is_deterministic_and_fractional():
    ids = [f"task-{number}" for number in range(2000)]
    first = [split_of(task_id, 0.2) for task_id in ids]
    assert first == [split_of(task_id, 0.2) for task_id in ids]
    share = first.count("validation") / len(ids)
    assert 0.15 < share < 0.25
    assert [split_of(task_id, 0.2, seed="other") for task_id in ids] != first
    with pytest.raises(ValueError):
        split_of("t", 1.0)


def test_split_never_puts_a_task_in_both(tmp_path):
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    for task in scriptable_tasks(60, seed=5):
        factory.correct_trace(task, sample_index=0)
        factory.correct_trace(task, sample_index=1)
    plan = pipeline.plan(store, pipeline.CurationConfig(validation_fraction=0.3, per_task=2))
    sides: dict[str, set[str]] = {}
    for example in plan.examples:
        sides.setdefault(example.task_id, set()).add(example.split)
    assert all(len(side) == 1 for side in sides.values())
    assert {"train", "validation"} == set().union(*sides.values())


def candidate(trace_id, actions, characters, *signature):
    return Candidate(trace_id, actions, characters, tuple(s.encode() for s in signature))


def test_select_prefers_shortest_then_diverse():
    candidates = [
        candidate("long", 3, 300, "look", "search", "answer-a"),
        candidate("short", 2, 120, "look", "answer-a"),
        candidate("same-as-short", 2, 130, "look", "answer-a"),
        candidate("reworded", 2, 125, "look", "answer-b"),
        candidate("different-args", 2, 140, "look-other", "answer-c"),
    ]
    picked = select(candidates, per_task=2)
    assert [c.trace_id for c in picked] == ["short", "different-args"]
    assert [c.trace_id for c in select(candidates, per_task=1)] == ["short"]
    assert "same-as-short" not in [c.trace_id for c in select(candidates, per_task=5)]
    assert select([], 2) == []


def test_rejection_sampling_in_plan(tmp_path):
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    task = rate_task("t-k", "What is the base hourly rate for Level 1 under the Coastal "
                            "Hospitality Award?")
    rate = task["expected"]["rate"]
    wrong = factory.rate_calls(rate, answer="It is 11.11 per hour.")
    extra_lookup = ("lookup_rate", {"award": rate["award"], "classification": "Level 1",
                                    "rate_type": "casual_loading"})
    detour = [extra_lookup] + factory.rate_calls(rate)
    factory.insert(task, factory.conversation(task["request"], wrong), sample_index=0)
    longer = factory.insert(task, factory.conversation(task["request"], detour), sample_index=1)
    shortest = factory.insert(task, factory.conversation(task["request"], factory.rate_calls(rate)),
                              sample_index=2)
    plan = pipeline.plan(store, pipeline.CurationConfig(per_task=1))
    assert plan.funnel["verified"] == 2
    assert {example.trace_id for example in plan.examples} == {shortest}
    plan = pipeline.plan(store, pipeline.CurationConfig(per_task=2))
    assert {example.trace_id for example in plan.examples} == {shortest, longer}


# -- balance -----------------------------------------------------------------------------------


def items(spec):
    built = []
    for number, (tool, outcome, rules) in enumerate(spec):
        built.append(balance.Item(f"ex-{number}", balance.categories_of(tool, outcome, rules)))
    return built


def test_parse_limit_errors():
    assert balance.parse_limit("outcome=escalate:50").category == "outcome=escalate"
    assert balance.parse_limit("rule=a:b:3").value == "a:b"
    for bad, message in [("outcome=escalate", "DIMENSION=VALUE:COUNT"),
                         ("colour=red:3", "dimension"), ("tool=x:many", "whole number"),
                         ("tool=x:0", "at least 1")]:
        with pytest.raises(ReckonError, match=message):
            balance.parse_limit(bad)


def test_cap_keeps_at_most_count():
    pool = items([("lookup_rate", "answer", ())] * 50 + [("refuse", "refuse", ())] * 5)
    kept, report = balance.balance(pool, [], [balance.parse_limit("tool=lookup_rate:20")])
    counts = balance.count_categories(kept)
    assert counts["tool"] == {"lookup_rate": 20, "refuse": 5}
    assert report.dropped == 30
    assert report.caps[0]["before"] == 50
    assert report.caps[0]["after"] == 20


def test_floor_oversamples_with_repeat_count():
    pool = items([("lookup_rate", "answer", ())] * 40 +
                 [("escalate_to_officer", "escalate", ("escalate-underpayment",))] * 3)
    kept, report = balance.balance(pool, [balance.parse_limit("outcome=escalate:10")], [])
    escalations = [item for item in kept if "outcome=escalate" in item.categories]
    assert [item.repeat for item in escalations] == [4, 4, 4]
    assert report.after["outcome"]["escalate"] == 12
    assert report.floors[0]["met"] is True
    assert report.before["rule"] == {"escalate-underpayment": 3}


def test_floor_respects_cap_and_max_repeat():
    pool = items([("escalate_to_officer", "escalate", ())] * 2)
    kept, report = balance.balance(pool, [balance.parse_limit("outcome=escalate:100")],
                                   [balance.parse_limit("tool=escalate_to_officer:6")],
                                   max_repeat=10)
    assert sum(item.repeat for item in kept) == 6
    assert report.floors[0]["met"] is False
    assert "cap" in report.floors[0]["why"]


def test_floor_without_examples_is_reported():
    _, report = balance.balance(items([("lookup_rate", "answer", ())]),
                                [balance.parse_limit("outcome=silent:5")], [])
    assert report.floors[0]["met"] is False
    assert report.floors[0]["why"] == "no example in this category"


def test_balance_applies_to_train_only(tmp_path):
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    for task in scriptable_tasks(40, seed=7):
        factory.correct_trace(task)
    config = pipeline.CurationConfig(floors=["outcome=escalate:30"], caps=["tool=lookup_rate:5"],
                                     validation_fraction=0.2)
    plan = pipeline.plan(store, config)
    train = [e for e in plan.examples if e.split == "train"]
    validation = [e for e in plan.examples if e.split == "validation"]
    assert sum(1 for e in train if e.tool == "lookup_rate") <= 5
    assert all(e.repeat == 1 for e in validation)
    escalations = [e for e in train if e.outcome == "escalate"]
    assert escalations and all(e.repeat > 1 for e in escalations)
    assert plan.balance["after"]["outcome"]["escalate"] == sum(e.repeat for e in escalations)
    assert "validation" in plan.balance
