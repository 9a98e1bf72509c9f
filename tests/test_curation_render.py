"""Rendering, tokenisation and masking with the embedded base's real tokenizer."""

from __future__ import annotations

import copy
import json

import pytest

from appliance.curation import render
from appliance.formats import END, SpecialistRenderer
from appliance.models import load_tokenizer
from tests.curation_fixtures import entitlements

IGNORE = render.IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


@pytest.fixture(scope="module")
def tools():
    return entitlements().openai_tools()


@pytest.fixture
def renderer():
    return render.SpecialistExampleRenderer("compact")


def call_message(name, arguments, call_id="call_0_0"):
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}


def conversation(target, history=()):
    return [{"role": "system", "content": "Answer entitlement questions."},
            {"role": "user", "content": "What is the base rate for Level 1?"},
            *history, target]


def supervised_text(tokenizer, row):
    ids = [token for token, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
    return tokenizer.decode(ids)


def target_text(messages, tools, tool_style="compact"):
    """Return the characters the specialist format supervises for the last message."""
    rendered = SpecialistRenderer(tool_style=tool_style).render(messages, tools)
    start, end = rendered.supervised_spans[-1]
    return rendered.text[start:end]


def tokenize_one(messages, tokenizer, renderer, tools, max_length=1024):
    rows, report = render.tokenize_examples(
        [{"messages": messages, "tools": tools, "meta": {"trace_id": "t", "decision_index": 0}}],
        tokenizer, renderer, max_length)
    return rows, report


def test_embedded_base_uses_specialist_format(tokenizer):
    chosen = render.choose_renderer(tokenizer)
    assert isinstance(chosen, render.SpecialistExampleRenderer)
    assert chosen.name == SpecialistRenderer.name
    assert chosen.tool_style == "compact"


def test_labels_cover_only_target_and_end(tokenizer, renderer, tools):
    arguments = {"award": "Coastal Hospitality Award", "classification": "Level 1",
                 "rate_type": "base_hourly"}
    history = [call_message("lookup_rate", arguments, "call_0_0"),
               {"role": "tool", "tool_call_id": "call_0_0", "name": "lookup_rate",
                "content": '{"value": 25}'}]
    target = call_message("final_answer", {"answer": "It is 25 AUD per hour.", "citations": []},
                          "call_1_0")
    rows, report = tokenize_one(conversation(target, history), tokenizer, renderer, tools)
    row = rows[0]
    expected = target_text(render.prepare_messages(conversation(target, history), None), tools)
    assert expected.strip().startswith("<tool_call>")
    assert expected.endswith(END)
    assert supervised_text(tokenizer, row) == expected
    assert row["labels"][-1] == 106 or row["labels"][-2] == 106
    supervised = [i for i, label in enumerate(row["labels"]) if label != IGNORE]
    assert supervised == list(range(supervised[0], supervised[-1] + 1))
    assert row["input_ids"][supervised[-1]] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    # The earlier lookup (history) is context, not a target.
    assert "lookup_rate" not in supervised_text(tokenizer, row)
    assert report["supervised_tokens"] == len(supervised)


def test_string_and_object_arguments_identical(tokenizer, renderer, tools):
    as_object = {"classification": "Level 1", "award": "Coastal Hospitality Award",
                 "rate_type": "base_hourly", "effective_date": "2026-07-01"}
    as_string = json.dumps({"rate_type": "base_hourly", "award": "Coastal Hospitality Award",
                            "effective_date": "2026-07-01", "classification": "Level 1"},
                           indent=2)
    first = render.prepare_messages(conversation(call_message("lookup_rate", as_object)), "p")
    second = render.prepare_messages(conversation(call_message("lookup_rate", as_string)), "p")
    assert first == second
    text_a = renderer.render_example(first, tools).text
    text_b = renderer.render_example(second, tools).text
    assert text_a == text_b
    rows_a, _ = tokenize_one(first, tokenizer, renderer, tools)
    rows_b, _ = tokenize_one(second, tokenizer, renderer, tools)
    assert rows_a[0]["input_ids"] == rows_b[0]["input_ids"]
    assert rows_a[0]["labels"] == rows_b[0]["labels"]


def test_prepare_messages_replaces_system_prompt():
    prepared = render.prepare_messages(conversation({"role": "assistant", "content": "x"}), "NEW")
    assert prepared[0] == {"role": "system", "content": "NEW"}
    assert sum(1 for m in prepared if m["role"] == "system") == 1
    without = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render.prepare_messages(without, "NEW")[0] == {"role": "system", "content": "NEW"}
    assert render.prepare_messages(without, None) == without


def test_korean_and_emoji_arguments(tokenizer, renderer, tools):
    answer = "기본 시급은 25 AUD입니다 😀"
    target = call_message("final_answer", {"answer": answer, "citations": []})
    messages = render.prepare_messages(conversation(target), "p")
    rendered = renderer.render_example(messages, tools)
    assert answer in rendered.text
    assert "\\u" not in rendered.text
    rows, _ = tokenize_one(messages, tokenizer, renderer, tools)
    supervised = supervised_text(tokenizer, rows[0])
    assert answer in supervised
    assert supervised.endswith(END)
    assert tokenizer.decode(rows[0]["input_ids"], skip_special_tokens=False).endswith(
        rendered.text[-40:])
    line = json.dumps(messages, ensure_ascii=False)
    assert json.loads(line) == messages
    assert answer in line


def test_pad_equal_to_eos_keeps_end_label(tokenizer, renderer, tools):
    target = call_message("final_answer", {"answer": "25", "citations": []})
    messages = render.prepare_messages(conversation(target), "p")
    reference, _ = tokenize_one(messages, tokenizer, renderer, tools)
    for pad in (tokenizer.eos_token, "<end_of_turn>"):
        padded = copy.deepcopy(tokenizer)
        padded.pad_token = pad
        assert padded.pad_token_id == padded.convert_tokens_to_ids(pad)
        rows, _ = tokenize_one(messages, padded, renderer, tools)
        assert rows[0]["labels"] == reference[0]["labels"]
        end_positions = [i for i, token in enumerate(rows[0]["input_ids"]) if token == 106]
        assert rows[0]["labels"][end_positions[-1]] == 106


def test_truncation_drops_history_not_target(tokenizer, renderer, tools):
    history = []
    for step in range(12):
        arguments = {"award": "Coastal Hospitality Award", "classification": "Level 1",
                     "rate_type": "base_hourly"}
        history.append(call_message("lookup_rate", arguments, f"call_{step}_0"))
        history.append({"role": "tool", "tool_call_id": f"call_{step}_0", "name": "lookup_rate",
                        "content": json.dumps({"value": 25, "note": "filler " * 40})})
    target = call_message("final_answer", {"answer": "The rate is 25 AUD per hour.",
                                           "citations": []}, "call_final")
    messages = render.prepare_messages(conversation(target, history), "p")
    full_rows, _ = tokenize_one(messages, tokenizer, renderer, tools, max_length=100_000)
    full_length = len(full_rows[0]["input_ids"])
    # A cut at max_length tokens would land inside the target.
    max_length = full_length - 20
    rows, report = tokenize_one(messages, tokenizer, renderer, tools, max_length=max_length)
    row = rows[0]
    assert len(row["input_ids"]) <= max_length
    assert supervised_text(tokenizer, row) == supervised_text(tokenizer, full_rows[0])
    assert report["history_shortened"] == 1
    assert row["history_dropped"] >= 1
    kept = row["messages"]
    assert kept[0]["role"] == "system"
    assert kept[1]["role"] == "user"
    assert kept[-1] == target
    assert kept[-3:-1] == history[-2:]       # the results the target reacts to stay
    # Pairs stay whole: every tool result still follows its own call.
    for position, message in enumerate(kept):
        if message["role"] == "tool":
            assert kept[position - 1]["tool_calls"][0]["id"] == message["tool_call_id"]


def test_target_longer_than_max_is_dropped_not_cut(tokenizer, renderer, tools):
    target = call_message("final_answer", {"answer": "long answer " * 400, "citations": []})
    messages = render.prepare_messages(conversation(target), "p")
    rows, report = tokenize_one(messages, tokenizer, renderer, tools, max_length=256)
    assert rows == []
    assert report["could_not_fit"] == 1
    assert report["could_not_fit_keys"] == ["t#0"]


def test_fifty_thousand_character_tool_result(tokenizer, renderer, tools):
    huge = json.dumps({"passages": [{"id": "G-001-p1", "text": "x" * 50_000}]})
    assert len(huge) > 50_000
    search = call_message("search_guidance", {"query": "breaks"}, "call_0_0")
    result = {"role": "tool", "tool_call_id": "call_0_0", "name": "search_guidance",
              "content": huge}
    lookup = call_message("lookup_rate", {"award": "Coastal Hospitality Award",
                                          "classification": "Level 1",
                                          "rate_type": "base_hourly"}, "call_1_0")
    lookup_result = {"role": "tool", "tool_call_id": "call_1_0", "name": "lookup_rate",
                     "content": '{"value": 25}'}
    final = call_message("final_answer", {"answer": "25", "citations": []}, "call_2_0")

    # Right before the target, the huge result cannot be dropped, so the example is left out.
    reacting = render.prepare_messages(conversation(lookup, [search, result]), "p")
    rows, report = tokenize_one(reacting, tokenizer, renderer, tools, max_length=1024)
    assert rows == []
    assert report["could_not_fit"] == 1

    # As older history it is dropped and the example fits.
    later = render.prepare_messages(conversation(final, [search, result, lookup, lookup_result]), "p")
    rows, report = tokenize_one(later, tokenizer, renderer, tools, max_length=1024)
    assert len(rows) == 1
    assert rows[0]["history_dropped"] == 1
    assert huge not in json.dumps(rows[0]["messages"])
    assert len(rows[0]["input_ids"]) <= 1024


def test_assistant_first_conversation_renders(tokenizer, renderer, tools):
    messages = [{"role": "assistant", "content": "Welcome to the desk."},
                {"role": "user", "content": "What is the rate?"},
                call_message("lookup_rate", {"award": "Coastal Hospitality Award",
                                             "classification": "Level 1",
                                             "rate_type": "base_hourly"})]
    prepared = render.prepare_messages(messages, "p")
    rows, _ = tokenize_one(prepared, tokenizer, renderer, tools)
    text = supervised_text(tokenizer, rows[0])
    assert "Welcome" not in text
    assert text == target_text(prepared, tools)


def test_masking_error_on_span_without_tokens(tokenizer):
    from appliance.formats import Rendered

    rendered = Rendered("<start_of_turn>user\nhi<end_of_turn>\n", [(5, 5)])
    with pytest.raises(render.MaskingError, match="no token"):
        render.tokenize_rendered(rendered, tokenizer, END)


def test_max_length_too_small_raises(tokenizer, renderer, tools):
    with pytest.raises(Exception, match="too small"):
        render.tokenize_examples([], tokenizer, renderer, 4)


def test_formats_renderer_accepted(tokenizer, tools):
    messages = render.prepare_messages(conversation({"role": "assistant", "content": "Hi."}), "p")
    rows, _ = tokenize_one(messages, tokenizer, SpecialistRenderer(tool_style="compact"), tools)
    assert supervised_text(tokenizer, rows[0]).strip() == "Hi." + END
    assert supervised_text(tokenizer, rows[0]) == target_text(messages, tools)


TOOL_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<start_of_turn>system\nTools: {{ tools | tojson }}<end_of_turn>\n"
    "{% endif %}{% for m in messages %}{% if m.role == 'assistant' %}<start_of_turn>model\n"
    "{% if m.content %}{{ m.content }}{% endif %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<end_of_turn>\n"
    "{% elif m.role == 'tool' %}<start_of_turn>tool\n{{ m.content }}<end_of_turn>\n"
    "{% else %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def templated(tokenizer):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = TOOL_TEMPLATE
    return copied


def test_tool_chat_template_is_used(templated, tools):
    chosen = render.choose_renderer(templated)
    assert isinstance(chosen, render.ChatTemplateRenderer)
    assert chosen.end_of_turn == "<end_of_turn>"
    assert chosen.name.startswith("chat-template-")


def test_chat_template_masking(templated, tools):
    chosen = render.choose_renderer(templated)
    answer = "시급은 25 AUD 😀"
    as_string = json.dumps({"citations": [], "answer": answer})
    as_object = {"answer": answer, "citations": []}
    rows = []
    for arguments in (as_string, as_object):
        messages = render.prepare_messages(conversation(call_message("final_answer", arguments)), "p")
        # This template lists the full JSON Schemas, so it needs a longer limit.
        found, _ = tokenize_one(messages, templated, chosen, tools, max_length=8192)
        rows.append(found[0])
    assert rows[0] == rows[1]
    text = supervised_text(templated, rows[0])
    assert text.startswith("<tool_call>")
    assert answer in text
    assert text.endswith("<end_of_turn>")
    assert templated.bos_token_id not in [t for t, l in zip(rows[0]["input_ids"], rows[0]["labels"])
                                          if l != IGNORE]
    assert rows[0]["input_ids"].count(templated.bos_token_id) == 1
