"""Exact and near-duplicate detection, the number policy and the leakage guard."""

from __future__ import annotations

import json

import pytest
from datasketch import MinHash

from appliance.curation import dedup, pipeline
from appliance.errors import ReckonError
from appliance.packs import load_pack
from appliance.store import Store
from tests.curation_fixtures import TraceFactory, copy_pack, rate_task


def test_normalised_values_hash_equal():
    first = [{"role": "user", "content": "rate  for\nLevel 1"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_a", "type": "function",
                  "function": {"name": "f", "arguments": '{"b": 25.0, "a": "x  y"}'}}]}]
    second = [{"role": "user", "content": " rate for Level 1 "},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "call_zz", "type": "function",
                   "function": {"name": "f", "arguments": {"a": "x y", "b": 25}}}]}]
    assert dedup.example_hashes(first, [1]) == dedup.example_hashes(second, [1])


def test_different_values_hash_differently():
    base = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"b": 25}}}]}]
    other = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"b": 25.5}}}]}]
    assert dedup.example_hashes(base, [1]) != dedup.example_hashes(other, [1])


def test_system_prompt_ignored_by_exact_hash():
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with_system = [{"role": "system", "content": "old prompt"}] + conversation
    assert dedup.example_hashes(conversation, [1])[1] == dedup.example_hashes(with_system, [2])[2]


def test_tool_result_json_spelling_ignored():
    first = [{"role": "user", "content": "q"},
             {"role": "tool", "tool_call_id": "a", "name": "f", "content": '{"v": 25.0,"u":"h"}'},
             {"role": "assistant", "content": "25"}]
    second = [{"role": "user", "content": "q"},
              {"role": "tool", "tool_call_id": "b", "name": "f", "content": '{"u": "h", "v": 25}'},
              {"role": "assistant", "content": "25"}]
    assert dedup.example_hashes(first, [2]) == dedup.example_hashes(second, [2])


@pytest.mark.parametrize("text,expected", [
    ("What is 25.0 dollars?", "what is 25 dollars"),
    ("Pay of $1,000 and 25.50", "pay of 1000 and 25.5"),
    ("Level 3, please!", "level 3 please"),
])
def test_normalise_request(text, expected):
    assert dedup.normalise_request(text) == expected


def index_of(*requests, threshold=dedup.NEAR_DUPLICATE_THRESHOLD):
    index = dedup.RequestIndex(threshold)
    for number, request in enumerate(requests):
        index.add(f"task-{number}", dedup.normalise_request(request))
    return index


def test_trivial_rewording_is_near_duplicate():
    index = index_of("What is the base hourly rate for a Level 3 employee under the "
                     "Regional Retail Award?")
    reworded = "Hi, what's the base hourly rate for Level 3 employees under the Regional Retail Award? Thanks"
    match = index.find(dedup.normalise_request(reworded))
    assert match is not None
    assert match.key == "task-0"


def test_one_different_number_is_not_near_duplicate():
    # Policy: the numbers carry the task, so "Level 3" and "Level 4" are different tasks.
    index = index_of("What is the base hourly rate for a Level 3 employee under the "
                     "Regional Retail Award?")
    other_level = "What is the base hourly rate for a Level 4 employee under the Regional Retail Award?"
    assert index.find(dedup.normalise_request(other_level)) is None


def test_number_format_is_not_a_difference():
    index = index_of("I was underpaid $600.00 last month, what can I do?")
    assert index.find(dedup.normalise_request("I was underpaid $600 last month, what can I do?"))


def test_unrelated_request_is_not_duplicate():
    index = index_of("What is the base hourly rate for Level 3 under the Regional Retail Award?")
    assert index.find(dedup.normalise_request("Do casuals get paid annual leave?")) is None


def test_korean_requests_are_shingled():
    index = index_of("코스탈 호스피탈리티 어워드 레벨 1 시급은 얼마인가요?")
    assert index.find(dedup.normalise_request("코스탈 호스피탈리티 어워드 레벨 1 시급은 얼마인가요")) is not None
    assert index.find(dedup.normalise_request("코스탈 호스피탈리티 어워드 레벨 2 시급은 얼마인가요")) is None


def test_minhash_matches_datasketch_estimate():
    normalised = dedup.normalise_request("base hourly rate level 3 regional retail award")
    reference = MinHash(num_perm=dedup.NUM_PERM, seed=dedup.MINHASH_SEED,
                        hashfunc=dedup.shingle_hash)
    reference.update_batch([s.encode() for s in dedup.request_shingles(normalised)])
    assert dedup.request_minhash(normalised).jaccard(reference) == 1.0


def test_threshold_out_of_range_raises():
    with pytest.raises(Exception, match="threshold"):
        dedup.RequestIndex(0.0)


# -- pipeline level ------------------------------------------------------------------------------

LEAKED = "What is the Saturday penalty rate for Level 2 under the Regional Retail Award?"


def eval_case(case_id, request):
    return {"id": case_id, "question": [[{"role": "user", "content": request}]],
            "task": {"id": case_id, "request": request}}


@pytest.fixture
def leak_store(tmp_path):
    """A store with one task that rewords an eval case, and a pack copy holding that case."""
    pack_path = copy_pack(tmp_path / "pack", [
        eval_case("heldout-1", LEAKED),
        eval_case("heldout-2", "Is a meal break paid under the Inland Warehousing Award?")])
    pack = load_pack(pack_path)
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store, pack)
    reworded = "Hi there, what's the Saturday penalty rate for a Level 2 worker under the Regional Retail Award?"
    factory.correct_trace(rate_task("t-leak", reworded, award="Regional Retail Award",
                                    classification="Level 2", rate_type="saturday_penalty"))
    factory.correct_trace(rate_task("t-other-level", LEAKED.replace("Level 2", "Level 5"),
                                    award="Regional Retail Award", classification="Level 5",
                                    rate_type="saturday_penalty"))
    factory.correct_trace(rate_task("t-clean", "What is the base hourly rate for Level 1 under "
                                               "the Coastal Hospitality Award?"))
    return store, pack_path


def test_reworded_eval_case_is_caught(leak_store):
    store, pack_path = leak_store
    plan = pipeline.plan(store, pipeline.CurationConfig(pack=str(pack_path)))
    assert plan.leakage["tasks_dropped"] == 1
    assert plan.leakage["eval_cases_matched"] == 1
    assert plan.leakage["examples_dropped"] == 2
    assert plan.funnel["leakage_dropped"] == 2
    kept_tasks = {example.task_id for example in plan.examples}
    assert kept_tasks == {"t-other-level", "t-clean"}
    guard = next(f for f in plan.filters if f["filter"] == "leakage_guard")
    assert guard["in"] - guard["out"] == 2


def test_near_duplicate_tasks_dropped_in_pipeline(tmp_path):
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    request = "What is the base hourly rate for Level 1 under the Coastal Hospitality Award?"
    factory.correct_trace(rate_task("t-a", request))
    factory.correct_trace(rate_task("t-b", "Hello, " + request.lower() + " Thanks."))
    factory.correct_trace(rate_task("t-c", request.replace("Level 1", "Level 2"),
                                    classification="Level 2"))
    plan = pipeline.plan(store, pipeline.CurationConfig())
    near = next(f for f in plan.filters if f["filter"] == "near_duplicate_requests")
    assert near["tasks_dropped"] == 1
    assert {example.task_id for example in plan.examples} == {"t-a", "t-c"}


def test_exact_duplicate_examples_dropped(tmp_path):
    # Two verified samples of one task share their first decision (the same lookup) and
    # differ in the answer's phrasing: the shared decision is kept once.
    store = Store(tmp_path / "reckon.db")
    factory = TraceFactory(store)
    task = rate_task("t-1", "What is the base hourly rate for Level 1 under the Coastal "
                            "Hospitality Award?")
    rate = task["expected"]["rate"]
    first = factory.rate_calls(rate)
    second = factory.rate_calls(rate, answer=f"Level 1 earns {rate['value']:g} AUD per hour.")
    factory.insert(task, factory.conversation(task["request"], first), sample_index=0)
    factory.insert(task, factory.conversation(task["request"], second, system="other prompt"),
                   sample_index=1)
    plan = pipeline.plan(store, pipeline.CurationConfig(per_task=2))
    assert plan.funnel["selected"] == 2
    assert plan.funnel["split"] == 4
    exact = next(f for f in plan.filters if f["filter"] == "exact_duplicate_examples")
    assert exact["in"] == 4
    assert exact["out"] == 3
    assert sorted(e.decision_index for e in plan.examples) == [2, 4, 4]


def test_eval_requests_fallback_and_errors(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"id": "a", "question": [[{"role": "user", "content": "Q one"}]]})
                    + "\n\n" + json.dumps(eval_case("b", "Q two")) + "\n", encoding="utf-8")
    assert dedup.eval_requests(path) == [("a", "Q one"), ("b", "Q two")]

    path.write_text('{"id": "a", "question": []}\n', encoding="utf-8")
    with pytest.raises(ReckonError, match="line 1.*leakage guard needs the request"):
        dedup.eval_requests(path)
    path.write_text('{"id": "a"\n', encoding="utf-8")
    with pytest.raises(ReckonError, match="line 1: invalid JSON"):
        dedup.eval_requests(path)
    with pytest.raises(ReckonError, match="cannot read"):
        dedup.eval_requests(tmp_path / "missing.jsonl")
