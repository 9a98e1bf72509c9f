"""Human review: accept, reject and edit, and how curation honours them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.curation import pipeline, review, verify
from appliance.errors import NotFoundError, ReckonError
from tests.curation_fixtures import TraceFactory, rate_task

REQUEST = "What is the base hourly rate for Level 2 under the Regional Retail Award?"


@pytest.fixture
def store(workspace):
    return workspace.store()


@pytest.fixture
def factory(store):
    return TraceFactory(store)


def wrong_level_trace(factory):
    """A trace that looked up Level 3 for a Level 2 question: fails the task checker."""
    task = rate_task("t-edit", REQUEST, award="Regional Retail Award", classification="Level 2")
    wrong = factory.pack.module.expected_rate("Regional Retail Award", "Level 3", "base_hourly", None)
    calls = factory.rate_calls(wrong)
    return task, factory.insert(task, factory.conversation(REQUEST, calls))


def included(store) -> set[str]:
    plan = pipeline.plan(store, pipeline.CurationConfig())
    return {example.trace_id for example in plan.examples}


def test_edit_arguments_keeps_original_and_reverifies(store, factory, monkeypatch):
    monkeypatch.setenv("USER", "analyst-a")
    task, trace_id = wrong_level_trace(factory)
    original_messages = store.get("traces", trace_id)["messages"]
    assert verify.Verifier(factory.pack).verify(task, original_messages, "answer").verified is False

    fixed = {"award": "Regional Retail Award", "classification": "Level 2",
             "rate_type": "base_hourly"}
    row = review.edit(store, trace_id, step=0, arguments=fixed, pack=factory.pack)
    assert row["operator"] == "analyst-a"
    assert row["original"]["message"] == original_messages[2]
    assert json.loads(row["edit"]["message"]["tool_calls"][0]["function"]["arguments"]) == fixed
    # The tool ran again, so the result matches the new arguments.
    new_result = json.loads(row["edit"]["messages"][3]["content"])
    assert new_result["classification"] == "Level 2"
    # The trace row is untouched apart from its review status.
    trace = store.get("traces", trace_id)
    assert trace["messages"] == original_messages
    assert trace["review_status"] == "edited"
    # The final answer still states the Level 3 figure, so the edit alone fails policy.
    assert row["report"]["verified"] is False
    assert verify.latest_verdict(store, trace_id, row["id"])["stage"] == "policy"

    rate = task["expected"]["rate"]
    second = review.edit(store, trace_id, answer=f"The base hourly rate is {rate['value']:g} AUD.",
                         pack=factory.pack, operator="analyst-b")
    assert second["report"]["verified"] is True
    assert second["operator"] == "analyst-b"
    assert second["original"]["message"] == row["edit"]["messages"][4]
    assert included(store) == {trace_id}
    history = review.history(store, trace_id)
    assert [entry["action"] for entry in history] == ["edit", "edit"]


def test_edited_examples_use_edited_messages(store, factory):
    task, trace_id = wrong_level_trace(factory)
    fixed = {"award": "Regional Retail Award", "classification": "Level 2",
             "rate_type": "base_hourly"}
    review.edit(store, trace_id, step=0, arguments=fixed, pack=factory.pack)
    edit = review.edit(store, trace_id, answer=f"It is {task['expected']['rate']['value']:g} AUD.",
                       pack=factory.pack)
    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert {example.variant for example in plan.examples} == {edit["id"]}


def test_reject_always_excludes(store, factory):
    good = factory.correct_trace(rate_task("t-good", REQUEST, award="Regional Retail Award",
                                           classification="Level 2"))
    assert included(store) == {good}
    review.reject(store, good, note="tone")
    assert included(store) == set()
    assert store.get("traces", good)["review_status"] == "rejected"
    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.verification["review_rejected"] == 1


def test_accept_overrides_only_with_flag(store, factory):
    _, trace_id = wrong_level_trace(factory)
    review.accept(store, trace_id)
    assert included(store) == set()
    review.accept(store, trace_id, override=True, note="checked by hand")
    assert included(store) == {trace_id}
    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.verification["review_override_included"] == 1
    review.reject(store, trace_id)
    assert included(store) == set()


def test_edit_errors(store, factory):
    _, trace_id = wrong_level_trace(factory)
    with pytest.raises(NotFoundError, match="not found"):
        review.accept(store, "tr-missing")
    with pytest.raises(ReckonError, match="out of range"):
        review.edit(store, trace_id, step=9, arguments={}, pack=factory.pack)
    with pytest.raises(ReckonError, match="either"):
        review.edit(store, trace_id, pack=factory.pack)
    with pytest.raises(ReckonError, match="call index"):
        review.edit(store, trace_id, step=0, call_index=3, arguments={}, pack=factory.pack)
    assert review.history(store, trace_id) == []


def test_review_cli(workspace, store, factory):
    task, trace_id = wrong_level_trace(factory)
    runner = CliRunner()
    fixed = json.dumps({"award": "Regional Retail Award", "classification": "Level 2",
                        "rate_type": "base_hourly"})
    result = runner.invoke(cli, ["--home", str(workspace.root), "--json", "review", "edit",
                                 trace_id, "--step", "0", "--arguments", fixed,
                                 "--operator", "cli-user"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["operator"] == "cli-user"
    assert row["action"] == "edit"

    result = runner.invoke(cli, ["--home", str(workspace.root), "review", "accept", trace_id,
                                 "--override"])
    assert result.exit_code == 0, result.output
    assert "accept" in result.output

    result = runner.invoke(cli, ["--home", str(workspace.root), "review", "edit", trace_id,
                                 "--step", "0", "--arguments", "{not json"])
    assert result.exit_code != 0
    assert "not valid JSON" in str(result.exception) + result.output

    result = runner.invoke(cli, ["--home", str(workspace.root), "--json", "review", "history",
                                 trace_id])
    assert [entry["action"] for entry in json.loads(result.output)] == ["edit", "accept"]


def test_override_of_bad_arguments_is_reported(workspace, store, factory):
    from appliance.models import load_tokenizer

    task = rate_task("t-bad-args", REQUEST, award="Regional Retail Award", classification="Level 2")
    messages = factory.conversation(REQUEST, factory.rate_calls(task["expected"]["rate"]))
    messages[2]["tool_calls"][0]["function"]["arguments"] = '{"award": "Regional'
    trace_id = factory.insert(task, messages)
    review.accept(store, trace_id, override=True)
    plan = pipeline.plan(store, pipeline.CurationConfig())
    assert plan.verification["review_override_included"] == 1
    # Both decisions carry the broken call (as target or in history), so nothing renders,
    # and no empty dataset is written.
    with pytest.raises(ReckonError, match="no example could be rendered.*not valid JSON"):
        pipeline.curate(store, workspace, pipeline.CurationConfig(validation_fraction=0.0),
                        tokenizer=load_tokenizer("embedded"))
    assert not list((workspace.artifacts / "datasets").glob("*"))
