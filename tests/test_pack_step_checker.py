"""The entitlements pack's step checker, used for step-level rejection sampling."""

from __future__ import annotations

from appliance.chat import ToolCall, assistant_message, tool_message
from appliance.packs import TraceView, load_pack

PACK = load_pack("entitlements")
RATE = {"award": "Regional Retail Award", "classification": "Level 2", "rate_type": "base_hourly",
        "effective_date": "2026-07-01"}


def view_after(task, name, arguments):
    ctx = PACK.make_context()
    result = PACK.tools[name].function(ctx, **arguments)
    messages = [{"role": "user", "content": task["request"]},
                assistant_message([ToolCall(name, arguments)]),
                tool_message("call_0_0", name, result)]
    view = TraceView(task, messages)
    return view, view.calls[-1]


def task_with(expected):
    return {"id": "t", "request": "question", "expected": expected}


def test_step_rate_lookup_expected_row_passes():
    task = task_with({"rate": dict(RATE, value=1)})
    view, record = view_after(task, "lookup_rate", {k: RATE[k] for k in ("award", "classification", "rate_type")})
    assert PACK.step_checker(view, record).passed is True


def test_step_rate_lookup_wrong_level_fails():
    task = task_with({"rate": dict(RATE, value=1)})
    view, record = view_after(task, "lookup_rate", {"award": RATE["award"], "classification": "Level 3",
                                                    "rate_type": "base_hourly"})
    verdict = PACK.step_checker(view, record)
    assert verdict.passed is False
    assert "classification" in verdict.reason


def test_step_refusal_category_checked():
    task = task_with({"refusal_category": "medical"})
    view, record = view_after(task, "refuse", {"reason": "x", "category": "tax"})
    verdict = PACK.step_checker(view, record)
    assert verdict.passed is False
    assert "'medical'" in verdict.reason


def test_step_without_expectation_not_applicable():
    view, record = view_after(task_with({}), "search_guidance", {"query": "meal break"})
    assert PACK.step_checker(view, record).passed is None


# -- teacher hints ---------------------------------------------------------------------------


def generated(category):
    return next(task for task in PACK.tasks(28, seed=3) if task["category"] == category)


def test_hint_names_the_expected_rate_arguments():
    task = generated("rate_lookup")
    rate = task["expected"]["rate"]
    hint = PACK.step_hint(task, "lookup_rate", 0)
    assert f'award "{rate["award"]}"' in hint
    assert f'rate_type "{rate["rate_type"]}"' in hint
    assert ("effective_date" in hint) == bool(rate["requested_date"])


def test_search_hint_finds_expected_passage():
    task = generated("guidance")
    hint = PACK.step_hint(task, "search_guidance", 0)
    query = hint.split('the query "')[1].split('"')[0]
    found = PACK.tools["search_guidance"].function(PACK.make_context(), query=query)
    assert set(task["expected"]["passage_ids"]) & {p["id"] for p in found["passages"]}


def test_hint_for_refusal_and_final_answers():
    refusal = generated("refusal")
    assert refusal["expected"]["refusal_category"] in PACK.step_hint(refusal, "refuse", 0)
    silent = generated("silent")
    assert "silent" in PACK.step_hint(silent, "final_answer", 1)
    rate = generated("rate_lookup")
    assert f"{rate['expected']['rate']['value']:g}" in PACK.step_hint(rate, "final_answer", 1)


def test_hint_none_without_expectation():
    escalation = generated("escalation")
    assert PACK.step_hint(escalation, "escalate_to_officer", 0) is None
    assert PACK.step_hint(task_with({}), "lookup_rate", 0) is None


def test_hint_warns_about_identifiers():
    task = generated("identifier")
    first = task["expected"]["calls"][0]
    assert "identifiers" in PACK.step_hint(task, first, 0)


def test_teacher_prompt_is_up_to_date():
    import importlib.util

    path = PACK.path / "prompts" / "build_teacher.py"
    spec = importlib.util.spec_from_file_location("entitlements_build_teacher", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.render_teacher_prompt().strip() == PACK.prompts["teacher"], (
        "prompts/teacher.md is stale; run .venv/bin/python "
        "tools/entitlements/prompts/build_teacher.py")


def test_teacher_prompt_notes_come_from_write_hint():
    notes = [line for line in PACK.prompts["teacher"].splitlines() if line.startswith("(Desk note:")]
    assert len(notes) >= 6
    assert all(note.endswith(".)") for note in notes)
