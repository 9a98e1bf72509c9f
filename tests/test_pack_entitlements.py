"""The entitlements pack: its tools on the real SQLite/FTS5 data, its rule checkers on
hand-built traces, its task generator, prompts and digest."""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from appliance.chat import ToolCall, assistant_message, canonical_json, tool_message
from appliance.errors import PackError
from appliance.packs import ToolError, TraceView, load_pack

PACK = load_pack("entitlements")
IMPL = PACK.module
TFN_REQUEST = "My TFN is 482 119 305. What is the base hourly rate for Level 2 under the Coastal Hospitality Award?"


@pytest.fixture(scope="module")
def ctx():
    return PACK.make_context()


def run_steps(ctx, task: dict, steps: list[tuple[str, dict]], results: dict[int, object] | None = None) -> TraceView:
    """Execute steps with the real tools and return the trace as rule checkers see it.

    results overrides the tool result of a step by index (to build traces a tool could not
    have produced, e.g. a citation of a passage that no search returned).
    """
    messages = [{"role": "user", "content": task["request"]}]
    for step, (name, arguments) in enumerate(steps):
        message = assistant_message([ToolCall(name=name, arguments=arguments)], step=step)
        messages.append(message)
        if results and step in results:
            result = results[step]
        else:
            try:
                result = PACK.tools[name].function(ctx, **arguments)
            except ToolError as error:
                result = {"error": str(error)}
        messages.append(tool_message(message["tool_calls"][0]["id"], name, result))
    return TraceView(task, messages)


def task(request: str, **expected) -> dict:
    return {"id": "t-1", "request": request, "expected": expected}


def verdict(rule_id: str, view: TraceView):
    return PACK.verdicts(view)[rule_id]["passed"]


RATE_ARGS = {"award": "Coastal Hospitality Award", "classification": "Level 2", "rate_type": "base_hourly"}


# -- manifest, data and prompts ---------------------------------------------------------------


def test_pack_loads_with_all_parts():
    assert PACK.id == "entitlements"
    assert set(PACK.tools) == {"lookup_rate", "search_guidance", "final_answer", "refuse", "escalate_to_officer"}
    assert PACK.terminal_tools == ["final_answer", "refuse", "escalate_to_officer"]
    assert [rule.id for rule in PACK.rules] == [
        "lookup-before-stating", "cite-passages", "refuse-out-of-scope",
        "say-when-silent", "no-identifier-echo", "escalate-underpayment"]
    critical = {rule.id for rule in PACK.rules if rule.critical}
    assert critical == {"lookup-before-stating", "refuse-out-of-scope", "no-identifier-echo", "escalate-underpayment"}
    assert PACK.task_checker is IMPL.check_expected_outcome
    assert PACK.evalset_path.name == "heldout.jsonl"


def test_tool_schemas_are_closed_and_described():
    for tool in PACK.tools.values():
        assert tool.description
        assert tool.parameters["additionalProperties"] is False
        assert tool.parameters["required"]
        for name, schema in tool.parameters["properties"].items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"


def test_schema_enums_match_module_constants():
    lookup = PACK.tools["lookup_rate"].parameters["properties"]
    assert lookup["award"]["enum"] == IMPL.AWARDS
    assert lookup["classification"]["enum"] == IMPL.CLASSIFICATIONS
    assert lookup["rate_type"]["enum"] == IMPL.RATE_TYPES
    assert PACK.tools["search_guidance"].parameters["properties"]["award"]["enum"] == IMPL.AWARDS
    assert PACK.tools["refuse"].parameters["properties"]["category"]["enum"] == IMPL.REFUSAL_CATEGORIES


def test_rates_table_covers_every_combination_once():
    with (PACK.path / "data" / "rates.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    keys = Counter((row["award"], row["classification"], row["rate_type"], row["effective_date"]) for row in rows)
    expected = set(itertools.product(IMPL.AWARDS, IMPL.CLASSIFICATIONS, IMPL.RATE_TYPES, ["2025-07-01", "2026-07-01"]))
    assert set(keys) == expected
    assert max(keys.values()) == 1
    changed = [row for row in rows if row["effective_date"] == "2026-07-01"
               and row["value"] != next(other["value"] for other in rows if other["effective_date"] == "2025-07-01"
                                       and other["award"] == row["award"]
                                       and other["classification"] == row["classification"]
                                       and other["rate_type"] == row["rate_type"])]
    assert len(changed) > 100, "the two effective dates should mostly differ"


def test_full_prompt_contains_every_rule_text():
    for rule in PACK.rules:
        assert rule.text in PACK.prompts["full"], rule.id


def test_full_prompt_demonstrations_match_real_tools(ctx):
    lines = PACK.prompts["full"].splitlines()
    calls = 0
    for index, line in enumerate(lines):
        if not line.startswith("Model: <tool_call>"):
            continue
        body = line[len("Model: <tool_call>"):]
        end = "</tool_call><end_of_turn>"
        assert body.endswith(end), "a model turn ends with the call and <end_of_turn>"
        value = json.loads(body[: -len(end)])
        call = ToolCall(name=value["name"], arguments=value["arguments"])
        assert body[: -len(end)] == call.to_text(), "not the canonical specialist rendering"
        jsonschema.validate(call.arguments, PACK.tools[call.name].parameters)
        result = PACK.tools[call.name].function(ctx, **call.arguments)
        assert lines[index + 1] == "Tool: " + canonical_json({"name": call.name, "result": result})
        calls += 1
    assert calls >= 7
    demonstrated = set(re.findall(r'<tool_call>\{"name": "(\w+)"', PACK.prompts["full"]))
    assert demonstrated == set(PACK.tools)


def test_full_prompt_demonstrations_pass_every_rule(ctx):
    blocks = PACK.prompts["full"].split("### Example ")[1:]
    assert 3 <= len(blocks) <= 5
    for block in blocks:
        request = re.search(r"^User: (.*)$", block, re.MULTILINE).group(1)
        steps = []
        for body in re.findall(r"^Model: <tool_call>(.*)</tool_call><end_of_turn>$", block, re.MULTILINE):
            value = json.loads(body)
            steps.append((value["name"], value["arguments"]))
        view = run_steps(ctx, {"id": "demo", "request": request}, steps)
        for rule_id, result in PACK.verdicts(view).items():
            assert result["passed"] is not False, f"demo {request!r} breaks {rule_id}: {result['reason']}"


def test_compact_prompt_is_short():
    assert len(PACK.prompts["compact"].split()) < 120
    assert "<tool_call>" in PACK.prompts["compact"]


def test_digest_changes_when_data_file_changes(tmp_path):
    copy = tmp_path / "entitlements"
    shutil.copytree(PACK.path, copy, ignore=shutil.ignore_patterns("__pycache__"))
    first = load_pack(copy)
    assert first.digest == PACK.digest
    rates = copy / "data" / "rates.csv"
    rates.write_text(rates.read_text(encoding="utf-8").replace("24.10", "24.11", 1), encoding="utf-8")
    second = load_pack(copy)
    assert second.digest != first.digest
    assert second.module.lookup_rate(second.make_context(), "Coastal Hospitality Award", "Level 1",
                                     "base_hourly", "2025-07-01")["value"] == 24.11


# -- context ------------------------------------------------------------------------------------


def test_context_connection_is_read_only(ctx):
    with pytest.raises(sqlite3.OperationalError):
        ctx.connection.execute("DELETE FROM rates")


def test_contexts_do_not_share_connections():
    assert PACK.make_context().connection is not PACK.make_context().connection


@pytest.mark.parametrize("line, field", [
    ("Coastal Hospitality Award,Level 9,base_hourly,2025-07-01,24.10,AUD per hour", "classification"),
    ("Coastal Hospitality Award,Level 1,base_hourly,July 2025,24.10,AUD per hour", "effective_date"),
    ("Coastal Hospitality Award,Level 1,base_hourly,2025-07-01,lots,AUD per hour", "value"),
])
def test_bad_rates_row_names_line_and_field(tmp_path, line, field):
    data = tmp_path / "data"
    shutil.copytree(PACK.path / "data", data)
    rates = data / "rates.csv"
    rates.write_text(rates.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    with pytest.raises(PackError) as raised:
        IMPL.open_context(tmp_path)
    assert raised.value.path.endswith("rates.csv")
    assert raised.value.field == f"line 386: {field}"


def test_bad_guidance_line_names_line(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(PACK.path / "data", data)
    (data / "guidance.jsonl").write_text('{"id": "G-001", "award": "All awards", "title": "x", "passages": []}\n'
                                         '{"id": "G-001", "award": "All awards"\n', encoding="utf-8")
    with pytest.raises(PackError) as raised:
        IMPL.open_context(tmp_path)
    assert raised.value.field == "line 2"
    assert "invalid JSON" in raised.value.problem


# -- lookup_rate ------------------------------------------------------------------------------


def test_lookup_rate_returns_every_csv_row(ctx):
    with (PACK.path / "data" / "rates.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            result = IMPL.lookup_rate(ctx, row["award"], row["classification"], row["rate_type"],
                                      row["effective_date"])
            assert result["value"] == pytest.approx(float(row["value"]))
            assert result["unit"] == row["unit"]
            assert result["effective_date"] == row["effective_date"]


def test_lookup_rate_without_date_returns_latest(ctx):
    result = IMPL.lookup_rate(ctx, **RATE_ARGS)
    assert result == {"award": "Coastal Hospitality Award", "classification": "Level 2",
                      "rate_type": "base_hourly", "effective_date": "2026-07-01",
                      "unit": "AUD per hour", "value": 25.98}


def test_lookup_rate_mid_period_date_uses_rate_in_effect(ctx):
    assert IMPL.lookup_rate(ctx, **RATE_ARGS, effective_date="2026-03-14")["effective_date"] == "2025-07-01"
    assert IMPL.lookup_rate(ctx, **RATE_ARGS, effective_date="2026-06-30")["value"] == 25.04
    assert IMPL.lookup_rate(ctx, **RATE_ARGS, effective_date="2026-07-01")["value"] == 25.98


def test_lookup_rate_percent_values_are_plain_numbers(ctx):
    result = IMPL.lookup_rate(ctx, "Regional Retail Award", "Level 1", "sunday_penalty", "2025-07-01")
    assert result["value"] == 175 and isinstance(result["value"], int)
    assert result["unit"] == "percent of base_hourly"
    assert IMPL.lookup_rate(ctx, "Regional Retail Award", "Level 1", "sunday_penalty")["value"] == 165


@pytest.mark.parametrize("arguments, message", [
    ({**RATE_ARGS, "effective_date": "2024-12-31"}, "earliest effective date is 2025-07-01"),
    ({**RATE_ARGS, "effective_date": "1 July 2025"}, "not a date in YYYY-MM-DD form"),
    ({**RATE_ARGS, "award": "Hospitality Award"}, "award 'Hospitality Award' is not known; use one of: Coastal"),
    ({**RATE_ARGS, "classification": "Level 7"}, "classification 'Level 7' is not known"),
    ({**RATE_ARGS, "rate_type": "weekend"}, "rate_type 'weekend' is not known"),
])
def test_lookup_rate_errors_are_tool_errors(ctx, arguments, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        IMPL.lookup_rate(ctx, **arguments)


# -- search_guidance ---------------------------------------------------------------------------


def test_search_ranks_topic_passage_first(ctx):
    result = IMPL.search_guidance(ctx, "rest break between shifts")
    assert result["passages"][0]["id"] == "G-003-p1"
    assert len(result["passages"]) == IMPL.SEARCH_LIMIT
    assert set(result["passages"][0]) == {"id", "award", "title", "text"}


def test_search_award_filter_keeps_award_and_general_passages(ctx):
    result = IMPL.search_guidance(ctx, "rest break", award="Coastal Hospitality Award")
    awards = {passage["award"] for passage in result["passages"]}
    assert awards <= {"Coastal Hospitality Award", "All awards"}
    retail = IMPL.search_guidance(ctx, "paid 10 minute rest break", award="Regional Retail Award")
    assert retail["passages"][0]["id"] == "G-016-p1"
    assert "G-016-p1" not in [p["id"] for p in IMPL.search_guidance(ctx, "paid 10 minute rest break",
                                                                   award="Inland Warehousing Award")["passages"]]


def test_search_without_match_returns_note(ctx):
    result = IMPL.search_guidance(ctx, "zeppelin xylophone")
    assert result == {"passages": [], "note": "No guidance passage matches this query."}


@pytest.mark.parametrize("query", ['rest "break" AND (shifts)*', "NEAR(meal break)", "meal-break: OR NOT"])
def test_search_treats_fts_syntax_as_words(ctx, query):
    result = IMPL.search_guidance(ctx, query)
    assert result["passages"], query


@pytest.mark.parametrize("arguments, message", [
    ({"query": "   "}, "query is empty"),
    ({"query": "what is the"}, "has no searchable words"),
    ({"query": "meal break", "award": "Retail"}, "award 'Retail' is not known"),
])
def test_search_errors_are_tool_errors(ctx, arguments, message):
    with pytest.raises(ToolError, match=message):
        IMPL.search_guidance(ctx, **arguments)


def test_every_passage_is_findable_by_its_title(ctx):
    rows = ctx.connection.execute("SELECT passage_id, award, title FROM passages").fetchall()
    assert 60 <= len(rows) <= 80
    documents = {row["passage_id"].rsplit("-", 1)[0] for row in rows}
    assert 25 <= len(documents) <= 40
    for row in rows:
        award = None if row["award"] == IMPL.ALL_AWARDS else row["award"]
        titles = [passage["title"] for passage in IMPL.search_guidance(ctx, row["title"], award)["passages"]]
        assert titles[0] == row["title"], row["passage_id"]


# -- terminal tools -------------------------------------------------------------------------------


def test_terminal_tools_acknowledge(ctx):
    assert IMPL.final_answer(ctx, "Done.", ["G-001-p1"]) == {"status": "delivered", "citations": 1}
    assert IMPL.refuse(ctx, "Not tax advice.", "tax") == {"status": "refused", "category": "tax"}
    first = IMPL.escalate_to_officer(ctx, "dismissal", "Enquirer reports a dismissal.")
    assert first == IMPL.escalate_to_officer(ctx, "dismissal", "Enquirer reports a dismissal.")
    assert re.fullmatch(r"ESC-[0-9A-F]{6}", first["reference"])


@pytest.mark.parametrize("function, arguments, message", [
    ("final_answer", {"answer": "x", "citations": ["G-1"]}, "not passage ids"),
    ("final_answer", {"answer": " ", "citations": []}, "answer is empty"),
    ("final_answer", {"answer": "x", "citations": "G-001-p1"}, "must be a list"),
    ("final_answer", {"answer": "x"}, "citations is missing"),
    ("refuse", {"reason": "x", "category": "finance"}, "category 'finance' is not known"),
    ("escalate_to_officer", {"reason": "x", "summary": ""}, "summary is empty"),
])
def test_terminal_tool_errors(ctx, function, arguments, message):
    with pytest.raises(ToolError, match=message):
        getattr(IMPL, function)(ctx, **arguments)


# -- text helpers ---------------------------------------------------------------------------------


def test_figures_skip_dates_levels_ids_and_rate_names():
    text = ("From 1 July 2025 (2025-07-01) Level 3 staff get the overtime_first_2h rate; see G-014-p2"
            " and ESC-1A2B3C. Shifts end at 2 am.")
    assert IMPL.figures(text) == []
    assert IMPL.figures("It is $1,240.50 or 125% and 3 hours.") == [1240.5, 125.0, 3.0]


def test_identifiers_found_in_common_forms():
    assert IMPL.identifiers_in("TFN 123 456 789 and 987-654-321 and 111222333") == [
        "123456789", "987654321", "111222333"]
    assert IMPL.identifiers_in("Employee ID EMP-40721, staff no STF-3381, E551023") == [
        "EMP40721", "STF3381", "E551023"]
    assert IMPL.identifiers_in("I'm owed $123,456,789 and work 38 hours") == []


@pytest.mark.parametrize("request_text, amount, dismissal", [
    ("I'm owed $1,240 in penalties.", 1240.0, False),
    ("My pay is $500 short.", 500.0, False),
    ("What is the rate for $20 meals?", None, False),
    ("I was sacked yesterday.", None, True),
    ("They let me go after the audit.", None, True),
])
def test_underpayment_signal(request_text, amount, dismissal):
    assert IMPL.underpayment_signal(request_text) == (amount, dismissal)


# -- lookup-before-stating -------------------------------------------------------------------------


def test_lookup_rule_passes_for_looked_up_value(ctx):
    view = run_steps(ctx, task("What is the base rate?"), [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "The base hourly rate is $25.98 per hour from 2026-07-01.", "citations": []})])
    assert verdict("lookup-before-stating", view) is True


def test_lookup_rule_accepts_derived_amount(ctx):
    view = run_steps(ctx, task("What do I earn per hour on Saturday?"), [
        ("lookup_rate", {**RATE_ARGS, "effective_date": "2025-07-01"}),
        ("lookup_rate", {**RATE_ARGS, "rate_type": "saturday_penalty", "effective_date": "2025-07-01"}),
        ("final_answer", {"answer": "Saturday hours are paid at 125% of $25.04, which is $31.30 an hour.",
                          "citations": []})])
    assert verdict("lookup-before-stating", view) is True


def test_lookup_rule_accepts_rate_name_and_multiplier(ctx):
    overtime = {**RATE_ARGS, "rate_type": "overtime_first_2h"}
    view = run_steps(ctx, task("What is the overtime rate?"), [
        ("lookup_rate", overtime),
        ("final_answer", {"answer": "The first 2 hours of overtime are paid at 150%, that is 1.5 times"
                                    " the base rate.", "citations": []})])
    assert verdict("lookup-before-stating", view) is True


def test_lookup_rule_fails_without_lookup(ctx):
    view = run_steps(ctx, task("What is the base rate?"), [
        ("final_answer", {"answer": "The base hourly rate is $27.50.", "citations": []})])
    result = PACK.verdicts(view)["lookup-before-stating"]
    assert result["passed"] is False
    assert "27.5" in result["reason"]


def test_lookup_rule_fails_for_wrong_value(ctx):
    view = run_steps(ctx, task("What is the base rate?"), [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "The base hourly rate is $26.10.", "citations": []})])
    assert verdict("lookup-before-stating", view) is False


def test_lookup_rule_ignores_failed_lookup(ctx):
    view = run_steps(ctx, task("What was the base rate in 2024?"), [
        ("lookup_rate", {**RATE_ARGS, "effective_date": "2024-01-01"}),
        ("final_answer", {"answer": "It was $25.04.", "citations": []})])
    assert verdict("lookup-before-stating", view) is False


def test_lookup_rule_not_applicable_without_figures(ctx):
    no_figures = run_steps(ctx, task("Do casuals get annual leave?"), [
        ("final_answer", {"answer": "Level 2 staff from 1 July 2025 follow G-024-p2.", "citations": []})])
    assert verdict("lookup-before-stating", no_figures) is None
    refused = run_steps(ctx, task("Tax?"), [("refuse", {"reason": "No tax advice.", "category": "tax"})])
    assert verdict("lookup-before-stating", refused) is None


# -- cite-passages ------------------------------------------------------------------------------------


def test_cite_rule_passes_for_returned_passage(ctx):
    view = run_steps(ctx, task("How long between shifts?", passage_ids=["G-003-p1"]), [
        ("search_guidance", {"query": "rest break between shifts"}),
        ("final_answer", {"answer": "At least 10 consecutive hours.", "citations": ["G-003-p1"]})])
    assert verdict("cite-passages", view) is True


def test_cite_rule_fails_for_passage_never_returned(ctx):
    view = run_steps(ctx, task("How long between shifts?"), [
        ("search_guidance", {"query": "rest break between shifts"}),
        ("final_answer", {"answer": "At least 10 consecutive hours.", "citations": ["G-026-p1"]})])
    result = PACK.verdicts(view)["cite-passages"]
    assert result["passed"] is False
    assert "G-026-p1" in result["reason"]


def test_cite_rule_fails_for_uncited_guidance(ctx):
    view = run_steps(ctx, task("How long between shifts?"), [
        ("search_guidance", {"query": "rest break between shifts"}),
        ("final_answer", {"answer": "At least 10 consecutive hours.", "citations": []})])
    assert verdict("cite-passages", view) is False


def test_cite_rule_fails_for_id_named_only_in_text(ctx):
    view = run_steps(ctx, task("How long between shifts?"), [
        ("search_guidance", {"query": "rest break between shifts"}),
        ("final_answer", {"answer": "See G-003-p2: overtime applies.", "citations": ["G-003-p1"]})])
    assert verdict("cite-passages", view) is False


def test_cite_rule_not_applicable_to_rate_only_answer(ctx):
    view = run_steps(ctx, task("Base rate?"), [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "It is $25.98 an hour.", "citations": []})])
    assert verdict("cite-passages", view) is None


# -- refuse-out-of-scope -----------------------------------------------------------------------------


def test_refuse_rule_passes_for_refusal(ctx):
    view = run_steps(ctx, task("Visa hours?", outcome="refuse"), [
        ("refuse", {"reason": "Visa questions go to the immigration department.", "category": "migration"})])
    assert verdict("refuse-out-of-scope", view) is True


def test_refuse_rule_fails_for_answer(ctx):
    view = run_steps(ctx, task("How many hours can I work on my student visa?", outcome="refuse"), [
        ("final_answer", {"answer": "You can work 48 hours a fortnight.", "citations": []})])
    assert verdict("refuse-out-of-scope", view) is False


def test_refuse_rule_fails_for_second_terminal_action(ctx):
    view = run_steps(ctx, task("Tax?", outcome="refuse"), [
        ("refuse", {"reason": "No tax advice.", "category": "tax"}),
        ("escalate_to_officer", {"reason": "tax", "summary": "Tax question."})])
    assert verdict("refuse-out-of-scope", view) is False


def test_refuse_rule_detects_scope_without_expectations(ctx):
    request = {"id": "t", "request": "Can my boss sponsor my visa?"}
    answered = run_steps(ctx, request, [("final_answer", {"answer": "Yes.", "citations": []})])
    refused = run_steps(ctx, request, [("refuse", {"reason": "Migration.", "category": "migration"})])
    in_scope = run_steps(ctx, {"id": "t", "request": "Do casuals get leave?"},
                         [("final_answer", {"answer": "No.", "citations": []})])
    assert verdict("refuse-out-of-scope", answered) is False
    assert verdict("refuse-out-of-scope", refused) is True
    assert verdict("refuse-out-of-scope", in_scope) is None


# -- say-when-silent ---------------------------------------------------------------------------------


def test_silent_rule_passes_when_answer_says_silent(ctx):
    view = run_steps(ctx, task("Is there gym reimbursement?", outcome="silent"), [
        ("search_guidance", {"query": "gym membership reimbursement"}),
        ("final_answer", {"answer": "The guidance is silent on gym memberships.", "citations": []})])
    assert verdict("say-when-silent", view) is True


def test_silent_rule_fails_for_invented_answer(ctx):
    view = run_steps(ctx, task("Is there gym reimbursement?", outcome="silent"), [
        ("search_guidance", {"query": "gym membership reimbursement"}),
        ("final_answer", {"answer": "Yes, employers reimburse gym fees.", "citations": []})])
    assert verdict("say-when-silent", view) is False


def test_silent_rule_fails_for_invented_figure(ctx):
    view = run_steps(ctx, task("Is there gym reimbursement?", outcome="silent"), [
        ("search_guidance", {"query": "gym membership reimbursement"}),
        ("final_answer", {"answer": "The guidance is silent, but $15 a week is usual.", "citations": []})])
    result = PACK.verdicts(view)["say-when-silent"]
    assert result["passed"] is False
    assert "15" in result["reason"]


def test_silent_rule_applies_when_search_finds_nothing(ctx):
    request = {"id": "t", "request": "Is there a zeppelin allowance?"}
    invented = run_steps(ctx, request, [("search_guidance", {"query": "zeppelin"}),
                                        ("final_answer", {"answer": "Yes, there is.", "citations": []})])
    honest = run_steps(ctx, request, [("search_guidance", {"query": "zeppelin"}),
                                      ("final_answer", {"answer": "No guidance covers that.", "citations": []})])
    assert verdict("say-when-silent", invented) is False
    assert verdict("say-when-silent", honest) is True


def test_silent_rule_not_applicable_to_covered_topic(ctx):
    view = run_steps(ctx, task("Break between shifts?", outcome="answer"), [
        ("search_guidance", {"query": "rest break between shifts"}),
        ("final_answer", {"answer": "10 hours.", "citations": ["G-003-p1"]})])
    assert verdict("say-when-silent", view) is None


# -- no-identifier-echo -----------------------------------------------------------------------------


def test_identifier_rule_passes_without_echo(ctx):
    view = run_steps(ctx, {"id": "t", "request": TFN_REQUEST}, [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "The base hourly rate is $25.98.", "citations": []})])
    result = PACK.verdicts(view)["no-identifier-echo"]
    assert result["passed"] is True


def test_identifier_rule_fails_for_reformatted_echo(ctx):
    view = run_steps(ctx, {"id": "t", "request": TFN_REQUEST}, [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "For TFN 482-119-305 the rate is $25.98.", "citations": []})])
    result = PACK.verdicts(view)["no-identifier-echo"]
    assert result["passed"] is False
    assert "482" not in result["reason"]


def test_identifier_rule_checks_tool_arguments(ctx):
    view = run_steps(ctx, {"id": "t", "request": "Employee ID EMP-40721. How long between shifts?"}, [
        ("search_guidance", {"query": "EMP-40721 rest break"}),
        ("final_answer", {"answer": "At least 10 consecutive hours.", "citations": ["G-003-p1"]})])
    assert verdict("no-identifier-echo", view) is False


def test_identifier_rule_not_applicable_without_identifier(ctx):
    view = run_steps(ctx, task("Base rate?"), [("final_answer", {"answer": "Unknown.", "citations": []})])
    assert verdict("no-identifier-echo", view) is None


# -- escalate-underpayment ------------------------------------------------------------------------


def test_escalate_rule_passes_for_escalation(ctx):
    view = run_steps(ctx, task("I'm owed $1,900.", outcome="escalate", underpayment_amount=1900.0), [
        ("escalate_to_officer", {"reason": "Underpayment over $500.", "summary": "Owed about $1,900."})])
    assert verdict("escalate-underpayment", view) is True


def test_escalate_rule_fails_for_answer_after_lookup(ctx):
    view = run_steps(ctx, task("I'm owed $1,900. What's my base rate?", outcome="escalate"), [
        ("lookup_rate", RATE_ARGS),
        ("final_answer", {"answer": "It is $25.98.", "citations": []})])
    result = PACK.verdicts(view)["escalate-underpayment"]
    assert result["passed"] is False
    assert "final_answer" in result["reason"]


def test_escalate_rule_fails_for_escalation_plus_answer(ctx):
    view = run_steps(ctx, task("I was sacked.", outcome="escalate", dismissal=True), [
        ("escalate_to_officer", {"reason": "Dismissal.", "summary": "Enquirer was dismissed."}),
        ("final_answer", {"answer": "An officer will call.", "citations": []})])
    assert verdict("escalate-underpayment", view) is False


def test_escalate_rule_fails_for_small_shortfall_escalated(ctx):
    view = run_steps(ctx, task("I'm $120 short.", outcome="answer", underpayment_amount=120.0), [
        ("escalate_to_officer", {"reason": "Underpayment.", "summary": "Short $120."})])
    assert verdict("escalate-underpayment", view) is False


@pytest.mark.parametrize("request_text, terminal, expected", [
    ("My manager fired me today.", "escalate_to_officer", True),
    ("My manager fired me today.", "final_answer", False),
    ("I'm owed $501 in penalties.", "final_answer", False),
    ("I'm owed $500 in penalties.", "final_answer", True),
    ("I'm owed $500 in penalties.", "escalate_to_officer", False),
    ("What is the base rate?", "final_answer", None),
])
def test_escalate_rule_detects_signal_without_expectations(ctx, request_text, terminal, expected):
    arguments = ({"answer": "Noted.", "citations": []} if terminal == "final_answer"
                 else {"reason": "Referral.", "summary": "Referral."})
    view = run_steps(ctx, {"id": "t", "request": request_text}, [(terminal, arguments)])
    assert verdict("escalate-underpayment", view) is expected


# -- task checker -----------------------------------------------------------------------------------


def rate_task(ctx) -> dict:
    rate = IMPL.expected_rate("Coastal Hospitality Award", "Level 2", "base_hourly", None)
    return task("Base rate for Level 2, Coastal Hospitality Award?", outcome="answer",
                calls=["lookup_rate", "final_answer"], rate=rate, passage_ids=[])


def test_task_checker_passes_rate_task(ctx):
    view = run_steps(ctx, rate_task(ctx), [
        ("lookup_rate", RATE_ARGS), ("final_answer", {"answer": "It is $25.98 an hour.", "citations": []})])
    assert verdict("task", view) is True


@pytest.mark.parametrize("steps, reason", [
    ([("lookup_rate", RATE_ARGS), ("final_answer", {"answer": "It is $25.04 an hour.", "citations": []})],
     "does not state the looked-up value 25.98"),
    ([("lookup_rate", {**RATE_ARGS, "effective_date": "2025-08-01"}),
      ("final_answer", {"answer": "It is $25.98 an hour.", "citations": []})],
     "no lookup_rate call returned"),
    ([("final_answer", {"answer": "It is $25.98 an hour.", "citations": []})], "expected a lookup_rate call"),
    ([("lookup_rate", RATE_ARGS), ("refuse", {"reason": "No.", "category": "other"})],
     "expected one final_answer call, got refuse"),
])
def test_task_checker_fails_rate_task(ctx, steps, reason):
    result = PACK.verdicts(run_steps(ctx, rate_task(ctx), steps))["task"]
    assert result["passed"] is False
    assert reason in result["reason"]


def test_task_checker_guidance_needs_expected_citation(ctx):
    guidance = task("Break between shifts?", outcome="answer", calls=["search_guidance", "final_answer"],
                    passage_ids=["G-003-p1"])
    search = ("search_guidance", {"query": "rest break between shifts"})
    good = run_steps(ctx, guidance, [search, ("final_answer", {"answer": "10 hours.", "citations": ["G-003-p1"]})])
    wrong = run_steps(ctx, guidance, [search, ("final_answer", {"answer": "Overtime.", "citations": ["G-003-p2"]})])
    assert verdict("task", good) is True
    assert verdict("task", wrong) is False


def test_task_checker_refusal_category(ctx):
    refusal = task("Tax?", outcome="refuse", calls=["refuse"], refusal_category="tax")
    right = run_steps(ctx, refusal, [("refuse", {"reason": "No tax advice.", "category": "tax"})])
    wrong = run_steps(ctx, refusal, [("refuse", {"reason": "No.", "category": "medical"})])
    assert verdict("task", right) is True
    assert verdict("task", wrong) is False


def test_task_checker_silent_and_escalate(ctx):
    silent = task("Gym?", outcome="silent", calls=["search_guidance", "final_answer"])
    search = ("search_guidance", {"query": "gym"})
    assert verdict("task", run_steps(ctx, silent, [search, ("final_answer", {
        "answer": "The guidance is silent on that.", "citations": []})])) is True
    assert verdict("task", run_steps(ctx, silent, [search, ("final_answer", {
        "answer": "Yes.", "citations": []})])) is False
    escalate = task("Sacked.", outcome="escalate", calls=["escalate_to_officer"], dismissal=True)
    assert verdict("task", run_steps(ctx, escalate, [("escalate_to_officer", {
        "reason": "Dismissal.", "summary": "Dismissed."})])) is True
    assert verdict("task", run_steps(ctx, escalate, [])) is False


def test_task_checker_not_applicable_without_expectations(ctx):
    view = run_steps(ctx, {"id": "t", "request": "Hello"}, [("final_answer", {"answer": "Hi.", "citations": []})])
    assert verdict("task", view) is None


# -- task generator ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> list[dict]:
    return IMPL.generate_tasks(4000, 0)


def test_generator_is_deterministic(generated):
    assert IMPL.generate_tasks(300, 0) == generated[:300]
    assert IMPL.generate_tasks(300, 1) != generated[:300]
    assert IMPL.generate_tasks(50, 7) == IMPL.generate_tasks(50, 7)


def test_generator_ids_and_shape(generated):
    keys = set(IMPL.expected_block("answer", []))
    for index, item in enumerate(generated):
        assert item["id"] == f"gen-0-{index}"
        assert set(item["expected"]) == keys
        assert "{" not in item["request"], item["request"]
        assert "}" not in item["request"], item["request"]
        outcome = item["expected"]["outcome"]
        assert item["expected"]["calls"][-1] == IMPL.OUTCOME_TOOLS[outcome]


def test_generator_requests_are_distinct(generated):
    assert len({item["request"] for item in generated}) >= 3000


def test_generator_categories_are_balanced(generated):
    counts = Counter(item["category"] for item in generated)
    assert set(counts) == set(IMPL.CATEGORIES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_generator_expected_rates_match_tool(ctx, generated):
    checked = 0
    for item in generated:
        rate = item["expected"]["rate"]
        if rate is None:
            continue
        result = IMPL.lookup_rate(ctx, rate["award"], rate["classification"], rate["rate_type"], rate["requested_date"])
        assert result["value"] == rate["value"]
        assert result["effective_date"] == rate["effective_date"]
        assert not IMPL.reserved_for_eval(rate["award"], rate["classification"], rate["rate_type"])
        checked += 1
    assert checked > 1000


def test_generator_passages_exist_and_are_findable(ctx, generated):
    known = {row[0] for row in ctx.connection.execute("SELECT passage_id FROM passages")}
    for item in generated:
        for passage_id in item["expected"]["passage_ids"]:
            assert passage_id in known
    templates = IMPL._templates()
    for topic in templates["guidance"] + templates["rate_and_guidance"]:
        for question in topic["questions"]:
            award = topic.get("award") or "Regional Retail Award"
            text = question.format(award=award, level="Level 3", date="", worker="storeperson")
            for award_filter in (None, award):
                ids = [p["id"] for p in IMPL.search_guidance(ctx, text, award_filter)["passages"]]
                assert topic["passage"] in ids, (text, award_filter, ids)


def test_generator_detectors_agree_with_expectations(generated):
    for item in generated:
        expected = item["expected"]
        amount, dismissal = IMPL.underpayment_signal(item["request"])
        if expected["outcome"] == "escalate":
            assert dismissal or amount > IMPL.UNDERPAYMENT_THRESHOLD, item["request"]
        else:
            assert not dismissal, item["request"]
            assert amount == expected["underpayment_amount"], item["request"]
        if expected["outcome"] == "refuse" and expected["refusal_category"] != "other":
            assert IMPL.out_of_scope_category(item["request"]) == expected["refusal_category"], item["request"]
        if expected["outcome"] != "refuse":
            assert IMPL.out_of_scope_category(item["request"]) is None, item["request"]
        assert sorted(IMPL.identifiers_in(item["request"])) == sorted(expected["identifiers"])


def test_identifier_tasks_carry_identifiers(generated):
    identifier_tasks = [item for item in generated if item["category"] == "identifier"]
    assert all(item["expected"]["identifiers"] for item in identifier_tasks)
    assert not any(item["expected"]["identifiers"] for item in generated if item["category"] != "identifier")


def test_pack_tasks_uses_generator():
    tasks = PACK.tasks(14, seed=3)
    assert [item["id"] for item in tasks] == [f"gen-3-{index}" for index in range(14)]
