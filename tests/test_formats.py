"""The specialist prompt format: rendering, supervised spans and tool-call parsing."""

from __future__ import annotations

import pytest

from appliance.chat import ToolCall, assistant_message, tool_message
from appliance.formats import SpecialistRenderer, parse_text_tool_calls

TOOLS = [{"type": "function", "function": {"name": "lookup_rate", "description": "Rate.",
          "parameters": {"type": "object", "properties": {"award": {"type": "string"},
                                                          "date": {"type": "string"}},
                         "required": ["award"]}}}]


def conversation(arguments):
    return [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Rate?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "lookup_rate", "arguments": arguments}}]},
        tool_message("c0", "lookup_rate", {"value": 25.5}),
    ]


def test_string_and_object_arguments_render_identically():
    renderer = SpecialistRenderer()
    as_string = renderer.render(conversation('{"date": "2026-07-01", "award": "Café Award"}'), TOOLS)
    as_object = renderer.render(conversation({"award": "Café Award", "date": "2026-07-01"}), TOOLS)
    assert as_string.text == as_object.text
    assert "Café Award" in as_string.text
    assert "\\u" not in as_string.text


def test_spans_cover_action_and_end_marker():
    renderer = SpecialistRenderer()
    rendered = renderer.render(conversation({"award": "A"}), TOOLS)
    assert len(rendered.supervised_spans) == 1
    start, end = rendered.supervised_spans[0]
    target = rendered.text[start:end]
    assert target == ' <tool_call>{"name": "lookup_rate", "arguments": {"award": "A"}}</tool_call><end_of_turn>'
    assert rendered.text[:start].endswith("\nModel:")


def test_generation_prompt_ends_at_newline():
    prompt = SpecialistRenderer().render_prompt(conversation({"award": "A"}), TOOLS)
    assert prompt.endswith("\nModel:")
    assert not prompt.endswith(" ")


@pytest.mark.parametrize("style, expected", [
    ("full", '"name": "lookup_rate"'),
    ("compact", "lookup_rate(award, date?)"),
])
def test_tool_listing_styles(style, expected):
    text = SpecialistRenderer(tool_style=style).render_prompt(conversation({"award": "A"}), TOOLS)
    assert expected in text


def test_tool_listing_none_omits_tools():
    text = SpecialistRenderer(tool_style="none").render_prompt(conversation({"award": "A"}), TOOLS)
    assert "# Tools" not in text


def test_render_parse_round_trip_unicode():
    call = ToolCall("final_answer", {"answer": "합계는 25달러입니다 🎉", "citations": ["G-1-p2"]})
    message = assistant_message([call])
    text = SpecialistRenderer().render_action(message)
    parsed = parse_text_tool_calls(text + "<end_of_turn>")
    assert parsed.error is None
    assert parsed.tool_calls[0].name == "final_answer"
    assert parsed.tool_calls[0].arguments == call.arguments


@pytest.mark.parametrize("text, names", [
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call>', ["a"]),
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>', ["a", "b"]),
    ('<tool_call>{"name": "a", "arguments": {}}', ["a"]),
    ('```json\n{"name": "a", "arguments": {"q": "x"}}\n```', ["a"]),
    ('{"name": "a", "parameters": {"q": "}"}} trailing words', ["a"]),
    ('{"name": "a", "arguments": "{\\"q\\": 1}"}', ["a"]),
])
def test_parse_accepted_forms(text, names):
    parsed = parse_text_tool_calls(text)
    assert parsed.error is None
    assert [call.name for call in parsed.tool_calls] == names


def test_parse_plain_text_is_content():
    parsed = parse_text_tool_calls("The rate is [0] and [/x] dollars.")
    assert parsed.tool_calls == []
    assert parsed.content == "The rate is [0] and [/x] dollars."
    assert parsed.error is None


def test_render_rejects_unknown_role():
    with pytest.raises(ValueError, match="role 'robot'"):
        SpecialistRenderer().render([{"role": "robot", "content": "x"}], [])
