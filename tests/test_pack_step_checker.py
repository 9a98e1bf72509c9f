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
